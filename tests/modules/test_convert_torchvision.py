"""convert_convbn on every torchvision classification model: the pairs found equal an independent torch.fx
count (on the meta device, so that regnet_y_128gf costs nothing), checkpoints unchanged; and on a
representative subset, float64 numerics: tune == eval == the original, activation memory, deploy."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tests.conftest import randomize_all_bn_
from tests.models.conftest import _single_thread  # noqa: F401  (autouse: one thread per test)
from tests.modules.conftest import assert_converts_exactly, fx_exclusive_pairs
from tllib_tune import convert_convbn, get_modes
from tllib_tune.modules.convert import init_on_meta
from tllib_tune.modules.convert_probe import is_batchnorm

ALL = torchvision.models.list_models(module=torchvision.models)
# the input each family needs at least (vision transformers a fixed 224, inception 75)
SIZES = {"inception_v3": 75, "vit": 224, "swin": 224, "maxvit": 224}


def _size(name: str) -> int:
    return next((size for prefix, size in SIZES.items() if name.startswith(prefix)), 64)


def _build(name: str, **kwargs) -> nn.Module:
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("init_weights", False)  # skips scipy's slow truncated normal; weights are random
    return torchvision.models.get_model(name, weights=None, **kwargs)


@pytest.mark.parametrize("name", ALL)
def test_pairs_equal_the_fx_count_and_keys_stay(name):
    with init_on_meta():
        model = _build(name)
    norms = sum(is_batchnorm(m) for m in model.modules())
    expected = fx_exclusive_pairs(model) if norms else set()
    keys = list(model.state_dict())
    x = torch.empty(2, 3, _size(name), _size(name), device="meta")
    model, report = convert_convbn(model, x, return_report=True)
    assert set(report.converted) == expected and report.total == norms
    assert len(report.converted) == sum(get_modes(model).values())
    state = model.state_dict()
    assert list(state) == keys  # so it loads strictly into the unconverted model; and back, in:
    model.load_state_dict(state)


def test_fx_reference_sees_what_stays():
    """The reference is no copy of the probe: on DenseNet it leaves the BatchNorms after a concat."""
    with init_on_meta():
        model = _build("densenet121")
    pairs = fx_exclusive_pairs(model)
    assert len(pairs) == 59 and ("features.conv0", "features.norm0") in pairs
    assert not any(bn.endswith("norm1") for _, bn in pairs)  # each dense layer's first BN follows a concat


NUMERICS = [
    ("resnet18", 32),
    ("mobilenet_v3_small", 32),
    ("efficientnet_b0", 32),
    ("densenet121", 32),
    ("shufflenet_v2_x0_5", 32),
    ("mnasnet0_5", 32),
    ("regnet_x_400mf", 32),
    ("googlenet", 32),
    ("inception_v3", 75),
]


@pytest.mark.parametrize("name, size", NUMERICS, ids=[n for n, _ in NUMERICS])
def test_float64_tune_equals_the_original_with_deploys_memory(name, size):
    torch.manual_seed(0)
    original = randomize_all_bn_(_build(name).double(), seed=0, wide=False).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, report = assert_converts_exactly(original, x)
    assert "mode 'tune' within" in report.verified
