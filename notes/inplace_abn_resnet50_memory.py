"""Activation memory of a torchvision-shaped ResNet-50 built from ConvBN blocks: train vs In-Place ABN."""

import copy

import torch
from torch import nn
from torchvision.models import resnet50

from tllib_tune import ConvBN, set_mode
from tllib_tune.modules.inplace_abn import convert_to_inplace_abn, count_inplace_abn
from tllib_tune.utils.memory import MIB, activation_bytes


class Bottleneck(nn.Module):
    inplace_abn_pairs = (("conv1", "act1"), ("conv2", "act2"))

    def __init__(self, tv):
        super().__init__()
        self.conv1, self.act1 = ConvBN.from_modules(tv.conv1, tv.bn1), nn.ReLU(inplace=True)
        self.conv2, self.act2 = ConvBN.from_modules(tv.conv2, tv.bn2), nn.ReLU(inplace=True)
        self.conv3, self.act3 = ConvBN.from_modules(tv.conv3, tv.bn3), nn.ReLU(inplace=True)
        self.downsample = None if tv.downsample is None else ConvBN.from_modules(*tv.downsample)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(out) + idt)


class R50(nn.Module):
    inplace_abn_pairs = (("conv1", "act1"),)

    def __init__(self):
        super().__init__()
        tv = resnet50()
        self.conv1, self.act1, self.pool = (
            ConvBN.from_modules(tv.conv1, tv.bn1),
            nn.ReLU(inplace=True),
            tv.maxpool,
        )
        self.layers = nn.Sequential(
            *[Bottleneck(b) for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4) for b in layer]
        )

    def forward(self, x):
        return self.layers(self.pool(self.act1(self.conv1(x))))


torch.manual_seed(0)
m = R50().train()
x = torch.randn(2, 3, 224, 224)
res = {}
res["train"] = activation_bytes(m, x)
c = convert_to_inplace_abn(copy.deepcopy(m)).train()
res["inplace-abn"] = activation_bytes(c, x.clone())
set_mode(m, "tune")
res["tune"] = activation_bytes(m, x)
set_mode(m, "eval")
res["eval"] = activation_bytes(m, x)
print("converted", count_inplace_abn(c))
for k, v in res.items():
    print(f"{k:12s} {v / MIB:8.1f} MiB  {v / res['train']:.3f} of train")
