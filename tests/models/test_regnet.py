"""RegNet family against torchvision: stage settings, features in every mode, float64 gradients."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.regnet import BlockParams

from tests.conftest import rel_err
from tests.models.conftest import check_against_torchvision, saved_reference
from tllib_tune import get_modes, set_mode
from tllib_tune.models import RegNet, get_model, regnet_x_400mf, regnet_y_400mf
from tllib_tune.models.regnet import RegNetParams, SqueezeExcite, regnet_names, stage_settings

# regnet_y_128gf (644 M parameters, 2.6 GB) is too big for a CPU test: test_registry compares its
# structure with torchvision's on the meta device instead.
REGNETS = [name for name in regnet_names() if name != "regnet_y_128gf"]


def test_the_required_regnets_are_there():
    assert {"regnet_x_400mf", "regnet_x_3_2gf", "regnet_y_400mf", "regnet_y_1_6gf"} <= set(regnet_names())
    assert len(regnet_names()) == 15


@pytest.mark.parametrize("name", regnet_names())
def test_stage_settings_match_torchvision(name):
    with torch.device("meta"):
        p = get_model(name).params
    theirs = BlockParams.from_init_params(
        depth=p.depth, w_0=p.w_0, w_a=p.w_a, w_m=p.w_m, group_width=p.group_width, se_ratio=p.se_ratio
    )
    expected = list(zip(theirs.widths, theirs.depths, theirs.group_widths))
    assert stage_settings(p) == expected
    assert sum(depth for _, depth, _ in expected) == p.depth


@pytest.mark.parametrize("name", REGNETS)
def test_features_match_torchvision_in_every_mode(name, tmp_path):
    check_against_torchvision(name, tmp_path, size=32)


def test_gradients_eval_equal_tune_in_float64(tmp_path):
    _, path = saved_reference("regnet_y_400mf", tmp_path)
    model = regnet_y_400mf(pretrained=str(path)).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    weights = torch.randn(2, model.out_features, 2, 2, dtype=torch.float64)
    grads = {}
    for mode in ("eval", "tune"):
        set_mode(model, mode)
        model.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_(True)
        (model(inp) * weights).sum().backward()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads[mode]["input"] = inp.grad.clone()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(grads["eval"]) == sorted(trainable + ["input"])
    assert any(".se.fc1." in n for n in trainable)  # the SE units are part of the comparison
    worst = max(rel_err(grads["tune"][k], grads["eval"][k]) for k in grads["eval"])
    assert worst <= 1e-9, worst


def test_structure_and_modes():
    x = regnet_x_400mf(mode="deploy")
    assert isinstance(x, RegNet) and x.out_features == 400
    assert not any(isinstance(m, SqueezeExcite) for m in x.modules())
    # stem + 22 blocks x 3 + one projection per stage
    assert get_modes(x) == {"deploy": 1 + 22 * 3 + 4}
    y = regnet_y_400mf()
    assert sum(isinstance(m, SqueezeExcite) for m in y.modules()) == 16
    assert y.copy_head().in_features == y.out_features == 440


def test_matches_torchvision_with_bigger_input(tmp_path):
    reference, path = saved_reference("regnet_y_400mf", tmp_path)
    ours = regnet_y_400mf(pretrained=str(path), mode="tune").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert rel_err(ours(x), reference.trunk_output(reference.stem(x))) <= 1e-5


def test_invalid_parameters_raise():
    with pytest.raises(ValueError, match="invalid RegNet parameters"):
        stage_settings(RegNetParams(depth=10, w_0=20, w_a=10.0, w_m=2.0, group_width=8))
