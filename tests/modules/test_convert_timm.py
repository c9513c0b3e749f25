"""convert_convbn on a timm sample: pairs against an fx count (meta device), float64 numerics, and timm's
own layers (BatchNormAct2d keeps its activation, Conv2dSame its padding, LeViT's Linear -> BatchNorm1d)."""

from __future__ import annotations

import pytest
import timm
import torch

from tests.conftest import randomize_all_bn_
from tests.models.conftest import _single_thread  # noqa: F401  (autouse: one thread per test)
from tests.modules.conftest import assert_converts_exactly, fx_exclusive_pairs
from tllib_tune import convert_convbn
from tllib_tune.modules.convert import MovedBatchNorm, init_on_meta
from tllib_tune.modules.convert_probe import is_batchnorm

# (name, input size for the float64 check): resnet-d, efficientnet / tf_ ("same" padding), mobilenetv3,
# regnet, hrnet, dla, cspnet, ghostnet, rexnet, levit (a fixed 224: its attention biases are per position)
SAMPLE = [
    ("resnet18d", 32),
    ("efficientnet_b0", 32),
    ("tf_efficientnet_b0", 32),
    ("mobilenetv3_small_050", 32),
    ("regnetx_002", 32),
    ("hrnet_w18_small", 32),
    ("dla34", 32),
    ("cs3darknet_s", 32),
    ("ghostnet_050", 32),
    ("rexnet_100", 32),
    ("levit_128s", 224),
]
NAMES = [name for name, _ in SAMPLE]


@pytest.mark.parametrize("name", NAMES)
def test_pairs_equal_the_fx_count_and_keys_stay(name):
    with init_on_meta():
        model = timm.create_model(name, pretrained=False)
    norms = sum(is_batchnorm(m) for m in model.modules())
    expected = fx_exclusive_pairs(model)
    keys = list(model.state_dict())
    x = torch.empty((2,) + tuple(model.pretrained_cfg["input_size"]), device="meta")
    model, report = convert_convbn(model, x, return_report=True)
    assert set(report.converted) == expected and report.total == norms, report.summary()
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("name, size", SAMPLE, ids=NAMES)
def test_float64_tune_equals_the_original_with_deploys_memory(name, size):
    torch.manual_seed(0)
    original = randomize_all_bn_(
        timm.create_model(name, pretrained=False).double(), seed=0, wide=False
    ).eval()
    # batch 2: at batch 1 torch's own BatchNorm backward is wrong on LeViT's stem (CPU, a channels-last
    # strided gradient from flatten(2).transpose(1, 2) with a contiguous input), and would fail as reference
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_converts_exactly(original, x)


def test_batchnorm_act_keeps_its_activation_after_the_block():
    model = timm.create_model("efficientnet_b0", pretrained=False)
    act = model.bn1.act
    model = convert_convbn(model, torch.randn(1, 3, 32, 32))
    assert isinstance(model.bn1, MovedBatchNorm) and model.bn1.act is act
    assert "bn1.act" not in dict(model.named_modules())  # the act lives in the block's BatchNorm only
