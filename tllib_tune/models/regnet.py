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

import copy
import math
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..modules.convbn import ConvBN, Mode
from .weights import Pretrained, finish_model

__all__ = ["RegNetParams", "SqueezeExcite", "RegNetBlock", "RegNet", "stage_settings", "REGNET_PARAMS"]


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


# Published parameters of the models torchvision ships ImageNet weights for.
REGNET_PARAMS: Dict[str, RegNetParams] = {
    "regnet_x_400mf": RegNetParams(22, 24, 24.48, 2.54, 16),
    "regnet_x_800mf": RegNetParams(16, 56, 35.73, 2.28, 16),
    "regnet_x_1_6gf": RegNetParams(18, 80, 34.01, 2.25, 24),
    "regnet_x_3_2gf": RegNetParams(25, 88, 26.31, 2.25, 48),
    "regnet_x_8gf": RegNetParams(23, 80, 49.56, 2.88, 120),
    "regnet_x_16gf": RegNetParams(22, 216, 55.59, 2.1, 128),
    "regnet_x_32gf": RegNetParams(23, 320, 69.86, 2.0, 168),
    "regnet_y_400mf": RegNetParams(16, 48, 27.89, 2.09, 8, se_ratio=0.25),
    "regnet_y_800mf": RegNetParams(14, 56, 38.84, 2.4, 16, se_ratio=0.25),
    "regnet_y_1_6gf": RegNetParams(27, 48, 20.71, 2.65, 24, se_ratio=0.25),
    "regnet_y_3_2gf": RegNetParams(21, 80, 42.63, 2.66, 24, se_ratio=0.25),
    "regnet_y_8gf": RegNetParams(17, 192, 76.82, 2.19, 56, se_ratio=0.25),
    "regnet_y_16gf": RegNetParams(18, 200, 106.23, 2.48, 112, se_ratio=0.25),
    "regnet_y_32gf": RegNetParams(20, 232, 115.89, 2.53, 232, se_ratio=0.25),
    "regnet_y_128gf": RegNetParams(27, 456, 160.83, 2.52, 264, se_ratio=0.25),
}


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


class RegNet(nn.Module):
    """RegNet backbone: stem ``conv1``/``act1``, stages ``layer1`` ... ``layer4``; returns the feature map.

    Args:
        params: the design parameters (see :data:`REGNET_PARAMS`).
        num_classes: size of the (unused by forward) ImageNet head ``fc``.
        stem_width: output channels of the 3x3 stride-2 stem (32 for every published model).
        arch: the registry name, used to find torchvision's weights.
    """

    family = "regnet"
    conv_act_pairs: Tuple[Tuple[str, str], ...] = (("conv1", "act1"),)

    def __init__(
        self, params: RegNetParams, num_classes: int = 1000, stem_width: int = 32, arch: Optional[str] = None
    ) -> None:
        super().__init__()
        self.arch = arch
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
        self.fc = nn.Linear(in_channels, num_classes)
        # forward never uses fc: freezing it keeps DDP (unused parameters) and weight decay away from it.
        self.fc.requires_grad_(False)
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

    @property
    def out_features(self) -> int:
        """Channels of the feature map ``forward`` returns."""
        return self._out_features

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.conv1(x))
        for stage in self.stages:
            x = stage(x)
        return x

    def copy_head(self) -> nn.Linear:
        """A trainable copy of the ImageNet classifier ``fc`` (pretrained when the weights were)."""
        head = copy.deepcopy(self.fc)
        head.requires_grad_(True)
        return head


def _build(
    arch: str, pretrained: Pretrained, mode: Union[str, Mode], progress: bool, **kwargs: Any
) -> RegNet:
    model = RegNet(REGNET_PARAMS[arch], arch=arch, **kwargs)
    return finish_model(model, pretrained=pretrained, mode=mode, progress=progress)


def _make_builder(arch: str):
    p = REGNET_PARAMS[arch]
    kind = "RegNetY (with Squeeze-and-Excitation)" if p.se_ratio else "RegNetX"

    def builder(
        pretrained: Pretrained = False, mode: Union[str, Mode] = "train", progress: bool = True, **kwargs: Any
    ) -> RegNet:
        return _build(arch, pretrained, mode, progress, **kwargs)

    builder.__name__ = builder.__qualname__ = arch
    builder.__module__ = __name__
    builder.__doc__ = (
        f"{arch}: {kind}, {p}. ``pretrained``: False, True (torchvision's default ImageNet weights), a "
        'weights name such as "IMAGENET1K_V1", or a local checkpoint path; ``mode``: the blocks\' initial '
        "mode; other keyword arguments go to :class:`RegNet`."
    )
    return builder


regnet_x_400mf = _make_builder("regnet_x_400mf")
regnet_x_800mf = _make_builder("regnet_x_800mf")
regnet_x_1_6gf = _make_builder("regnet_x_1_6gf")
regnet_x_3_2gf = _make_builder("regnet_x_3_2gf")
regnet_x_8gf = _make_builder("regnet_x_8gf")
regnet_x_16gf = _make_builder("regnet_x_16gf")
regnet_x_32gf = _make_builder("regnet_x_32gf")
regnet_y_400mf = _make_builder("regnet_y_400mf")
regnet_y_800mf = _make_builder("regnet_y_800mf")
regnet_y_1_6gf = _make_builder("regnet_y_1_6gf")
regnet_y_3_2gf = _make_builder("regnet_y_3_2gf")
regnet_y_8gf = _make_builder("regnet_y_8gf")
regnet_y_16gf = _make_builder("regnet_y_16gf")
regnet_y_32gf = _make_builder("regnet_y_32gf")
regnet_y_128gf = _make_builder("regnet_y_128gf")

__all__ += list(REGNET_PARAMS)


def regnet_names() -> List[str]:
    """The RegNet architectures this module builds."""
    return sorted(REGNET_PARAMS)
