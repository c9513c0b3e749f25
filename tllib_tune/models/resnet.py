"""ResNet, ResNeXt and Wide ResNet backbones built from ConvBN blocks (torchvision's V1.5 architecture).

The network is torchvision's: a 7x7 stem, four stages of BasicBlock or Bottleneck blocks with the
stride on the 3x3 convolution (V1.5), projection shortcuts as 1x1 ConvBN. Every Conv + BatchNorm is a
:class:`~tllib_tune.modules.convbn.ConvBN`, so ``set_mode(model, "tune")`` switches the whole backbone.

Like TLlib's backbones, ``forward`` stops after the last stage and returns the feature map
``[N, out_features, H, W]``; the ImageNet classifier ``fc`` is kept (so that checkpoints load and export
losslessly) but not used by ``forward``: :meth:`ResNet.copy_head` hands out a trainable copy.

Names follow the package's conv/act convention (see :mod:`tllib_tune.models`): ``conv1``/``act1`` in the
stem; ``conv1``/``act1``, ``conv2``/``act2``, ``conv3`` then ``act3`` after the residual add in a
Bottleneck; ``conv1``/``act1``, ``conv2`` then ``act2`` after the add in a BasicBlock.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Type, Union

from torch import Tensor, nn

from ..modules.convbn import ConvBN
from .backbone import Backbone
from .registry import register_model, registered_in

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]  # and every builder, added by @register_model


class BasicBlock(nn.Module):
    """Two 3x3 ConvBN blocks with a residual connection (ResNet-18/34)."""

    expansion = 1
    #: (ConvBN, ReLU) attribute pairs in which the ReLU is applied directly to the ConvBN's output.
    #: ``act2`` is not listed: the residual add comes between ``conv2`` and ``act2``.
    conv_act_pairs: Tuple[Tuple[str, str], ...] = (("conv1", "act1"),)

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[ConvBN] = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(
                f"BasicBlock supports only groups=1 and width_per_group=64, got groups={groups}, "
                f"width_per_group={base_width}; use Bottleneck for ResNeXt / Wide ResNet"
            )
        if dilation > 1:
            raise ValueError("BasicBlock does not support dilation > 1 (replace_stride_with_dilation)")
        self.conv1 = ConvBN(in_channels, planes, kernel_size=3, stride=stride)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = ConvBN(planes, planes, kernel_size=3)
        self.downsample = downsample
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.act1(self.conv1(x)))
        # In place: no ConvBN mode keeps its output for backward, and the add itself saves nothing.
        out += identity
        return self.act2(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, stride here: V1.5), 1x1 expand, residual add."""

    expansion = 4
    #: (ConvBN, ReLU) attribute pairs in which the ReLU is applied directly to the ConvBN's output.
    #: ``act3`` is not listed: the residual add comes between ``conv3`` and ``act3``.
    conv_act_pairs: Tuple[Tuple[str, str], ...] = (("conv1", "act1"), ("conv2", "act2"))

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[ConvBN] = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = ConvBN(in_channels, width, kernel_size=1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = ConvBN(width, width, kernel_size=3, stride=stride, groups=groups, dilation=dilation)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = ConvBN(width, planes * self.expansion, kernel_size=1)
        self.downsample = downsample
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.conv1(x))
        out = self.act2(self.conv2(out))
        out = self.conv3(out)
        out += identity
        return self.act3(out)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(Backbone):
    """ResNet backbone: stem, ``layer1`` ... ``layer4``; ``forward`` returns the last feature map.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the four stages.
        num_classes: size of the (unused by forward) ImageNet head ``fc``; 1000 for ImageNet weights.
        groups, width_per_group: ResNeXt cardinality and width (Wide ResNet: width_per_group=128).
        replace_stride_with_dilation: three booleans, as in torchvision (dilated stages 2-4).
        zero_init_residual: start each block's last BatchNorm weight at zero (as in torchvision).
            Such blocks cannot enter deploy mode until trained (the fold divides by gamma).
    """

    family = "resnet"
    conv_act_pairs: Tuple[Tuple[str, str], ...] = (("conv1", "act1"),)

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Optional[Sequence[bool]] = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers needs four stage depths, got {list(layers)}")
        dilate = list(replace_stride_with_dilation or (False, False, False))
        if len(dilate) != 3:
            raise ValueError(f"replace_stride_with_dilation needs three booleans, got {dilate}")
        self._in_channels = 64
        self._dilation = 1
        self._groups = groups
        self._base_width = width_per_group
        self.conv1 = ConvBN(3, 64, kernel_size=7, stride=2)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=dilate[2])
        self._out_features = 512 * block.expansion
        self.keep_classifier(nn.Linear(self._out_features, num_classes), "fc")
        self._init_weights(zero_init_residual)

    def _make_layer(
        self, block: Block, planes: int, blocks: int, stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        downsample = None
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_channels = planes * block.expansion
        if stride != 1 or self._in_channels != out_channels:
            downsample = ConvBN(self._in_channels, out_channels, kernel_size=1, stride=stride)
        common = dict(groups=self._groups, base_width=self._base_width)
        # Like torchvision, the first block of a dilated stage still uses the previous dilation.
        stage = [block(self._in_channels, planes, stride, downsample, dilation=previous_dilation, **common)]
        self._in_channels = out_channels
        stage += [block(out_channels, planes, dilation=self._dilation, **common) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last = (
                    m.conv3 if isinstance(m, Bottleneck) else m.conv2 if isinstance(m, BasicBlock) else None
                )
                if last is not None:
                    nn.init.zeros_(last.bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (512 features)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


@register_model
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 (512 features)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 (2048 features)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


@register_model
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 (2048 features)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


@register_model
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152 (2048 features)."""
    return ResNet(Bottleneck, [3, 8, 36, 3], **kwargs)


@register_model
def resnext50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d (2048 features)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, **kwargs)


@register_model
def resnext101_32x8d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d (2048 features)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=8, **kwargs)


@register_model
def resnext101_64x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 64x4d (2048 features)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=64, width_per_group=4, **kwargs)


@register_model
def wide_resnet50_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-50-2 (2048 features, bottlenecks twice as wide)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=128, **kwargs)


@register_model
def wide_resnet101_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-101-2 (2048 features, bottlenecks twice as wide)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], width_per_group=128, **kwargs)


def resnet_names() -> List[str]:
    """The ResNet-family architectures this module builds."""
    return registered_in(__name__)
