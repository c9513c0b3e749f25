"""TLlib-style image classifier: backbone -> global pooling -> optional bottleneck -> linear head.

``Classifier(backbone, num_classes)`` wraps any backbone that returns a feature map ``[N, C, H, W]`` and
says its ``C`` in ``backbone.out_features`` (all of :mod:`tllib_tune.models`). Unlike TLlib, whose
``forward`` returns ``(predictions, features)`` in training, ``forward`` always returns the logits, in
train and eval alike; :meth:`Classifier.features` gives the features before the head.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional

from torch import Tensor, nn

from .convbn import LinearBN

__all__ = ["Classifier"]


class Classifier(nn.Module):
    """Backbone, ``pool`` (AdaptiveAvgPool2d + Flatten), ``bottleneck``, ``head``.

    Args:
        backbone: module returning ``[N, C, H, W]``; needs ``out_features`` (C) unless ``pool_layer``
            and ``head`` are both given.
        num_classes: outputs of the linear head.
        bottleneck_dim: None (default): no bottleneck (Identity); an int d: a LinearBN block (Linear
            without bias + BatchNorm1d, switchable like any ConvBN) to d features, then ReLU.
        finetune: True: the backbone learns at 0.1 x the base learning rate in :meth:`get_parameters`.
        head: replaces the default ``nn.Linear(features, num_classes)``.
        pool_layer: replaces the default global average pooling + flatten.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        bottleneck_dim: Optional[int] = None,
        finetune: bool = True,
        head: Optional[nn.Module] = None,
        pool_layer: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if bottleneck_dim is not None and (not isinstance(bottleneck_dim, int) or bottleneck_dim < 1):
            raise ValueError(f"bottleneck_dim must be None or a positive int, got {bottleneck_dim!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.finetune = finetune
        self.pool = (
            pool_layer if pool_layer is not None else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        )
        in_features = getattr(backbone, "out_features", None)
        if bottleneck_dim is None:
            self.bottleneck: nn.Module = nn.Identity()
            features = in_features
        else:
            if in_features is None:
                raise ValueError(f"{type(backbone).__name__} has no out_features; the bottleneck needs it")
            # conv/act naming convention of tllib_tune.models: a ReLU applied straight to a block's output.
            self.bottleneck = nn.Sequential(
                OrderedDict([("conv", LinearBN(in_features, bottleneck_dim)), ("act", nn.ReLU(inplace=True))])
            )
            self.bottleneck.conv_act_pairs = (("conv", "act"),)
            features = bottleneck_dim
        if head is None:
            if features is None:
                raise ValueError(
                    f"{type(backbone).__name__} has no out_features attribute: give the backbone one, or "
                    "pass head= (and bottleneck_dim=None)"
                )
            head = nn.Linear(features, num_classes)
        self.head = head
        self._features_dim = features

    @property
    def features_dim(self) -> Optional[int]:
        """Size of the features the head receives."""
        return self._features_dim

    def features(self, x: Tensor) -> Tensor:
        """Pooled (and bottlenecked) features ``[N, features_dim]``."""
        return self.bottleneck(self.pool(self.backbone(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, num_classes]`` (in train and eval mode alike)."""
        return self.head(self.features(x))

    def get_parameters(self, base_lr: float = 1.0) -> List[Dict[str, Any]]:
        """Parameter groups: the backbone at 0.1 x ``base_lr`` if ``finetune``, the rest at ``base_lr``.

        Groups without parameters are left out, so the result can go straight to ``torch.optim.SGD``.
        """
        groups = [
            {"params": list(self.backbone.parameters()), "lr": 0.1 * base_lr if self.finetune else base_lr},
            {"params": list(self.pool.parameters()) + list(self.bottleneck.parameters()), "lr": base_lr},
            {"params": list(self.head.parameters()), "lr": base_lr},
        ]
        return [g for g in groups if g["params"]]
