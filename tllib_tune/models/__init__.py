"""Model zoo: ImageNet backbones built from ConvBN blocks, and a registry of their builders.

Every builder has the form ``resnet50(pretrained=False, mode="train", progress=True, **kwargs)`` and
returns a backbone whose ``forward`` gives the last feature map ``[N, out_features, H, W]`` and whose
``copy_head()`` returns the ImageNet classifier. ``pretrained`` is False, True (torchvision's default
ImageNet weights, downloaded once and cached by torch.hub), a torchvision weights name such as
"IMAGENET1K_V1", a local checkpoint path (torchvision, timm or tllib_tune format, detected) or a state
dict. See :mod:`tllib_tune.models.weights`.

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

from typing import Any, Callable, Dict, List

from torch import nn

from ..common import suggest
from .regnet import (
    RegNet,
    RegNetBlock,
    SqueezeExcite,
    regnet_x_1_6gf,
    regnet_x_3_2gf,
    regnet_x_8gf,
    regnet_x_16gf,
    regnet_x_32gf,
    regnet_x_400mf,
    regnet_x_800mf,
    regnet_y_1_6gf,
    regnet_y_3_2gf,
    regnet_y_8gf,
    regnet_y_16gf,
    regnet_y_32gf,
    regnet_y_128gf,
    regnet_y_400mf,
    regnet_y_800mf,
)
from .resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x8d,
    resnext101_64x4d,
    wide_resnet50_2,
    wide_resnet101_2,
)
from .weights import (
    Pretrained,
    WeightsError,
    load_weights,
    save_torchvision_state_dict,
    to_torchvision_state_dict,
)

_BUILDERS: List[Callable[..., nn.Module]] = [
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x8d,
    resnext101_64x4d,
    wide_resnet50_2,
    wide_resnet101_2,
    regnet_x_400mf,
    regnet_x_800mf,
    regnet_x_1_6gf,
    regnet_x_3_2gf,
    regnet_x_8gf,
    regnet_x_16gf,
    regnet_x_32gf,
    regnet_y_400mf,
    regnet_y_800mf,
    regnet_y_1_6gf,
    regnet_y_3_2gf,
    regnet_y_8gf,
    regnet_y_16gf,
    regnet_y_32gf,
    regnet_y_128gf,
]
_REGISTRY: Dict[str, Callable[..., nn.Module]] = {builder.__name__: builder for builder in _BUILDERS}


def list_models() -> List[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str, pretrained: Pretrained = False, **kwargs: Any) -> nn.Module:
    """Build the backbone ``name`` (see :func:`list_models`); other arguments go to its builder.

    An unknown name raises ValueError naming the closest known ones.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; {suggest(key, list_models(), n=5)}")
    return _REGISTRY[key](pretrained=pretrained, **kwargs)


__all__ = [
    "BasicBlock",
    "Bottleneck",
    "Pretrained",
    "RegNet",
    "RegNetBlock",
    "ResNet",
    "SqueezeExcite",
    "WeightsError",
    "get_model",
    "list_models",
    "load_weights",
    "save_torchvision_state_dict",
    "to_torchvision_state_dict",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_x_1_6gf",
    "regnet_x_3_2gf",
    "regnet_x_8gf",
    "regnet_x_16gf",
    "regnet_x_32gf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "regnet_y_1_6gf",
    "regnet_y_3_2gf",
    "regnet_y_8gf",
    "regnet_y_16gf",
    "regnet_y_32gf",
    "regnet_y_128gf",
]
