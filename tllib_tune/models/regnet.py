"""RegNetX / RegNetY backbones built from ConvBN blocks (torchvision's architecture and weights).

RegNet (Radosavovic et al., "Designing Network Design Spaces", 2020) is a stem, four stages of residual
bottleneck blocks whose widths follow a quantized linear rule, and, for RegNetY, a Squeeze-and-Excitation
unit inside every block. Stage widths and depths are derived from the paper's parameters
(depth, w_0, w_a, w_m, group width) exactly as torchvision derives them, so torchvision's ImageNet
weights load unchanged (see :mod:`tllib_tune.models.weights` for the key table).

Like the ResNets, ``forward`` returns the last feature map ``[N, out_features, H, W]``, the ImageNet
head ``fc`` is kept but unused, and :meth:`RegNet.copy_head` returns a trainable copy of it.

Names (conv/act convention of :mod:`tllib_tune.models`): stem ``conv1``/``act1``; stages ``layer1`` ...
``layer4``; in each block ``conv_a``/``act_a`` (1x1), ``conv_b``/``act_b`` (3x3 grouped, strided),
``se`` (RegNetY only), ``conv_c`` (1x1, no activation), ``downsample`` (projection ConvBN or None) and
``act_out`` after the residual add.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..modules.convbn import ConvBN
from .backbone import Backbone
from .registry import register_model, registered_in

# and every builder, added by @register_model
__all__ = ["RegNetParams", "SqueezeExcite", "RegNetBlock", "RegNet", "stage_settings"]


@dataclass(frozen=True)
class RegNetParams:
    """The paper's design parameters of one RegNet model."""

    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    se_ratio: Optional[float] = None
    bottleneck_multiplier: float = 1.0


def _round_to_multiple(value: float, divisor: int) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), never more than 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def stage_settings(params: RegNetParams) -> List[Tuple[int, int, int]]:
    """Per-stage (width, depth, group width) from the paper's parameters.

    Block j gets the continuous width w_0 + w_a * j, snapped in log space to w_0 * w_m**k and then to a
    multiple of 8; consecutive blocks of equal width form a stage. Finally the bottleneck width is made
    divisible by the group width. Computed in float32 like torchvision, whose weights depend on it.
    """
    p = params
    if p.w_a < 0 or p.w_0 <= 0 or p.w_m <= 1 or p.w_0 % 8 != 0:
        raise ValueError(f"invalid RegNet parameters {p}: need w_a >= 0, w_m > 1, w_0 > 0 divisible by 8")
    # On the CPU explicitly: the model may be built under a torch.device("meta") context.
    continuous = torch.arange(p.depth, device="cpu") * p.w_a + p.w_0
    steps = torch.round(torch.log(continuous / p.w_0) / math.log(p.w_m))
    widths = (torch.round(p.w_0 * torch.pow(p.w_m, steps) / 8) * 8).int().tolist()
    settings = []
    for width, run in groupby(widths):
        bottleneck = int(width * p.bottleneck_multiplier)
        group_width = min(p.group_width, bottleneck)
        bottleneck = _round_to_multiple(bottleneck, group_width)
        settings.append((int(bottleneck / p.bottleneck_multiplier), len(list(run)), group_width))
    return settings


class SqueezeExcite(nn.Module):
    """Channel gate: x * sigmoid(fc2(relu(fc1(mean over H, W of x)))), with 1x1 convolutions (biased)."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class RegNetBlock(nn.Module):
    """Residual bottleneck block: 1x1, 3x3 grouped (strided), optional SE, 1x1, then add and ReLU."""

    conv_act_pairs: Tuple[Tuple[str, str], ...] = (("conv_a", "act_a"), ("conv_b", "act_b"))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        group_width: int,
        bottleneck_multiplier: float = 1.0,
        se_ratio: Optional[float] = None,
    ) -> None:
        super().__init__()
        width = int(round(out_channels * bottleneck_multiplier))
        needs_projection = in_channels != out_channels or stride != 1
        self.downsample = (
            ConvBN(in_channels, out_channels, kernel_size=1, stride=stride) if needs_projection else None
        )
        self.conv_a = ConvBN(in_channels, width, kernel_size=1)
        self.act_a = nn.ReLU(inplace=True)
        self.conv_b = ConvBN(width, width, kernel_size=3, stride=stride, groups=width // group_width)
        self.act_b = nn.ReLU(inplace=True)
        # The SE width is relative to the block's input width (as in the paper and torchvision).
        self.se = SqueezeExcite(width, int(round(se_ratio * in_channels))) if se_ratio else None
        self.conv_c = ConvBN(width, out_channels, kernel_size=1)
        self.act_out = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act_b(self.conv_b(self.act_a(self.conv_a(x))))
        if self.se is not None:
            out = self.se(out)
        out = self.conv_c(out)
        out += identity  # in place: no ConvBN mode keeps its output for backward
        return self.act_out(out)


class RegNet(Backbone):
    """RegNet backbone: stem ``conv1``/``act1``, stages ``layer1`` ... ``layer4``; returns the feature map.

    Args:
        params: the design parameters (the published ones are in the builders below).
        num_classes: size of the (unused by forward) ImageNet head ``fc``.
        stem_width: output channels of the 3x3 stride-2 stem (32 for every published model).
    """

    family = "regnet"
    conv_act_pairs: Tuple[Tuple[str, str], ...] = (("conv1", "act1"),)

    def __init__(self, params: RegNetParams, num_classes: int = 1000, stem_width: int = 32) -> None:
        super().__init__()
        self.params = params
        self.conv1 = ConvBN(3, stem_width, kernel_size=3, stride=2)
        self.act1 = nn.ReLU(inplace=True)
        in_channels = stem_width
        settings = stage_settings(params)
        self.num_stages = len(settings)
        for index, (width, depth, group_width) in enumerate(settings, start=1):
            blocks = []
            for i in range(depth):
                blocks.append(
                    RegNetBlock(
                        in_channels,
                        width,
                        stride=2 if i == 0 else 1,
                        group_width=group_width,
                        bottleneck_multiplier=params.bottleneck_multiplier,
                        se_ratio=params.se_ratio,
                    )
                )
                in_channels = width
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self._out_features = in_channels
        self.keep_classifier(nn.Linear(in_channels, num_classes), "fc")
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> List[nn.Sequential]:
        """``layer1`` ... ``layer<num_stages>`` (four for every published RegNet)."""
        return [getattr(self, f"layer{i}") for i in range(1, self.num_stages + 1)]

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.conv1(x))
        for stage in self.stages:
            x = stage(x)
        return x


@register_model
def regnet_x_400mf(**kwargs: Any) -> RegNet:
    """RegNetX-400MF."""
    return RegNet(RegNetParams(22, 24, 24.48, 2.54, 16), **kwargs)


@register_model
def regnet_x_800mf(**kwargs: Any) -> RegNet:
    """RegNetX-800MF."""
    return RegNet(RegNetParams(16, 56, 35.73, 2.28, 16), **kwargs)


@register_model
def regnet_x_1_6gf(**kwargs: Any) -> RegNet:
    """RegNetX-1.6GF."""
    return RegNet(RegNetParams(18, 80, 34.01, 2.25, 24), **kwargs)


@register_model
def regnet_x_3_2gf(**kwargs: Any) -> RegNet:
    """RegNetX-3.2GF."""
    return RegNet(RegNetParams(25, 88, 26.31, 2.25, 48), **kwargs)


@register_model
def regnet_x_8gf(**kwargs: Any) -> RegNet:
    """RegNetX-8GF."""
    return RegNet(RegNetParams(23, 80, 49.56, 2.88, 120), **kwargs)


@register_model
def regnet_x_16gf(**kwargs: Any) -> RegNet:
    """RegNetX-16GF."""
    return RegNet(RegNetParams(22, 216, 55.59, 2.1, 128), **kwargs)


@register_model
def regnet_x_32gf(**kwargs: Any) -> RegNet:
    """RegNetX-32GF."""
    return RegNet(RegNetParams(23, 320, 69.86, 2.0, 168), **kwargs)


@register_model
def regnet_y_400mf(**kwargs: Any) -> RegNet:
    """RegNetY-400MF with Squeeze-and-Excitation."""
    return RegNet(RegNetParams(16, 48, 27.89, 2.09, 8, se_ratio=0.25), **kwargs)


@register_model
def regnet_y_800mf(**kwargs: Any) -> RegNet:
    """RegNetY-800MF with Squeeze-and-Excitation."""
    return RegNet(RegNetParams(14, 56, 38.84, 2.4, 16, se_ratio=0.25), **kwargs)


@register_model
def regnet_y_1_6gf(**kwargs: Any) -> RegNet:
    """RegNetY-1.6GF with Squeeze-and-Excitation."""
    return RegNet(RegNetParams(27, 48, 20.71, 2.65, 24, se_ratio=0.25), **kwargs)


@register_model
def regnet_y_3_2gf(**kwargs: Any) -> RegNet:
    """RegNetY-3.2GF with Squeeze-and-Excitation."""
    return RegNet(RegNetParams(21, 80, 42.63, 2.66, 24, se_ratio=0.25), **kwargs)


@register_model
def regnet_y_8gf(**kwargs: Any) -> RegNet:
    """RegNetY-8GF with Squeeze-and-Excitation."""
    return RegNet(RegNetParams(17, 192, 76.82, 2.19, 56, se_ratio=0.25), **kwargs)


@register_model
def regnet_y_16gf(**kwargs: Any) -> RegNet:
    """RegNetY-16GF with Squeeze-and-Excitation."""
    return RegNet(RegNetParams(18, 200, 106.23, 2.48, 112, se_ratio=0.25), **kwargs)


@register_model
def regnet_y_32gf(**kwargs: Any) -> RegNet:
    """RegNetY-32GF with Squeeze-and-Excitation."""
    return RegNet(RegNetParams(20, 232, 115.89, 2.53, 232, se_ratio=0.25), **kwargs)


@register_model
def regnet_y_128gf(**kwargs: Any) -> RegNet:
    """RegNetY-128GF with Squeeze-and-Excitation."""
    return RegNet(RegNetParams(27, 456, 160.83, 2.52, 264, se_ratio=0.25), **kwargs)


def regnet_names() -> List[str]:
    """The RegNet architectures this module builds."""
    return registered_in(__name__)
