"""The backbone contract every model of :mod:`tllib_tune.models` keeps, in one base class.

A backbone is what :class:`~tllib_tune.modules.classifier.Classifier` wraps (TLlib's shape):

* ``forward(images)`` returns the last feature map ``[N, out_features, H, W]``, before any pooling;
* ``out_features`` is its channel count ``C``;
* ``copy_head()`` returns a trainable copy of the pretrained classifier, which maps the globally
  average-pooled features ``[N, out_features]`` to the ImageNet logits; the backbone keeps that
  classifier (so checkpoints load and export whole) but frozen and unused by ``forward``;
* ``arch`` is the name :func:`~tllib_tune.models.get_model` built it under (None when built directly).
"""

from __future__ import annotations

import copy
from typing import Optional

from torch import nn

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """Base class of the zoo's backbones: ``out_features``, ``copy_head()``, ``arch`` (see the module doc).

    Subclasses set ``self._out_features`` and keep their classifier with :meth:`keep_classifier`, or
    override :meth:`get_classifier` when it is built another way.
    """

    #: Registry name, set by the builder that made the model; used to find torchvision's weights.
    arch: Optional[str] = None
    _out_features: int = 0

    @property
    def out_features(self) -> int:
        """Channels of the feature map ``forward`` returns."""
        return self._out_features

    def keep_classifier(self, classifier: nn.Module, name: str = "fc") -> None:
        """Register ``classifier`` as attribute ``name``, frozen: ``forward`` never uses it, and frozen
        parameters stay out of DDP's unused-parameter check and of weight decay."""
        classifier.requires_grad_(False)
        setattr(self, name, classifier)
        self._classifier_name = name

    def get_classifier(self) -> nn.Module:
        """The pretrained classifier itself (not a copy), from pooled features to logits."""
        name = getattr(self, "_classifier_name", None)
        if name is None:
            raise NotImplementedError(f"{type(self).__name__} keeps no classifier (see keep_classifier)")
        return getattr(self, name)

    def copy_head(self) -> nn.Module:
        """A trainable copy of the classifier (pretrained when the weights were)."""
        head = copy.deepcopy(self.get_classifier())
        head.requires_grad_(True)
        return head
