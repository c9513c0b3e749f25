"""Model zoo: ImageNet backbones built from ConvBN blocks, and a registry of their builders.

Every builder has the form ``resnet50(pretrained=False, mode="train", progress=True, **kwargs)`` (made so
by ``@register_model``, :mod:`tllib_tune.models.registry`) and returns a :class:`Backbone`, whose
``forward`` gives the last feature map ``[N, out_features, H, W]`` and whose ``copy_head()`` returns the
ImageNet classifier. ``pretrained`` is False, True (torchvision's default ImageNet weights, downloaded
once and cached by torch.hub), a torchvision weights name such as "IMAGENET1K_V1", a local checkpoint
path (torchvision, timm or tllib_tune format, detected) or a state dict. See
:mod:`tllib_tune.models.weights`.

``get_model("torchvision/<name>")`` and ``get_model("timm/<name>")`` build those libraries' models as
backbones with the same contract, their Conv -> BatchNorm pairs converted to ConvBN blocks
(:mod:`tllib_tune.models.from_torchvision`, :mod:`tllib_tune.models.from_timm`); ``list_models("timm/*")``
lists them.

Naming convention for Conv+BN+ReLU (tools such as the In-Place ABN converter rely on it):

* A ConvBN whose output goes straight into a ReLU is an attribute ``conv<K>`` and the ReLU is its own
  ``nn.ReLU`` module ``act<K>`` on the same parent (``K`` any suffix: ``1``, ``_a``); no ReLU module is
  shared between positions.
* A ReLU applied after a residual add is also a separate module, but the add comes between it and the
  ConvBN before it. Every module that holds such pairs lists the direct ones in its class attribute
  ``conv_act_pairs``; a pair not listed there (ResNet ``conv3``/``act3``) must not be fused.

ResNet family:
  stem       ``conv1`` -> ``act1`` -> ``maxpool``                     pairs: (conv1, act1)
  Bottleneck ``conv1``/``act1``, ``conv2``/``act2``, ``conv3``, + ``downsample``, ``act3``
                                                                       pairs: (conv1, act1), (conv2, act2)
  BasicBlock ``conv1``/``act1``, ``conv2``, + ``downsample``, ``act2``  pairs: (conv1, act1)
RegNet family:
  stem       ``conv1`` -> ``act1``                                     pairs: (conv1, act1)
  block      ``conv_a``/``act_a``, ``conv_b``/``act_b``, [``se``], ``conv_c``, + ``downsample``, ``act_out``
                                                                       pairs: (conv_a, act_a), (conv_b, act_b)
``downsample`` is a ConvBN or None. Stages are ``layer1`` ... ``layer4`` in both families.
"""

from __future__ import annotations

from . import regnet, resnet
from .backbone import Backbone
from .external import LibraryBackbone
from .from_timm import TimmBackbone  # and registers "timm/<name>"
from .from_torchvision import TorchvisionBackbone  # and registers "torchvision/<name>"
from .registry import check_model, get_model, list_models, register_library, register_model
from .regnet import *  # noqa: F403  (the RegNet builders, listed in regnet.__all__ by @register_model)
from .resnet import *  # noqa: F403  (the ResNet builders, likewise)
from .weights import (
    Pretrained,
    WeightsError,
    load_weights,
    save_torchvision_state_dict,
    to_torchvision_state_dict,
)

__all__ = [
    "Backbone",
    "LibraryBackbone",
    "TimmBackbone",
    "TorchvisionBackbone",
    "Pretrained",
    "WeightsError",
    "check_model",
    "get_model",
    "list_models",
    "load_weights",
    "register_library",
    "register_model",
    "save_torchvision_state_dict",
    "to_torchvision_state_dict",
    *resnet.__all__,
    *regnet.__all__,
]
