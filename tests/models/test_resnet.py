"""ResNet family against torchvision: features in every mode, gradients in float64, activation memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import rel_err
from tests.models.conftest import check_against_torchvision, saved_reference, torchvision_features
from tllib_tune import ConvBN, get_modes, set_mode
from tllib_tune.models import BasicBlock, ResNet, resnet18, resnet50
from tllib_tune.models.resnet import resnet_names
from tllib_tune.utils.memory import MIB, activation_bytes

RESNETS = [
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
]


def test_every_resnet_is_tested():
    assert sorted(RESNETS) == resnet_names()


@pytest.mark.parametrize("name", RESNETS)
def test_features_match_torchvision_in_every_mode(name, tmp_path):
    check_against_torchvision(name, tmp_path, size=32)


def test_dilated_resnet50_matches_torchvision(tmp_path):
    dilate = [False, True, True]
    reference, path = saved_reference("resnet50", tmp_path, replace_stride_with_dilation=dilate)
    ours = resnet50(pretrained=str(path), replace_stride_with_dilation=dilate, mode="tune").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torchvision_features(reference, x)
        assert expected.shape[-1] == 8  # stride 8 instead of 32
        assert rel_err(ours(x), expected) <= 1e-5


def test_gradients_eval_equal_tune_in_float64(tmp_path):
    _, path = saved_reference("resnet50", tmp_path)
    model = resnet50(pretrained=str(path)).double().eval()
    model.fc.requires_grad_(True)  # must still get no gradient: forward does not use it
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
    assert model.fc.weight.grad is None
    assert set(grads["eval"]) == set(grads["tune"])
    assert len(grads["eval"]) == 1 + 3 * 53  # each conv weight, BN weight and BN bias, plus the input
    worst = max(rel_err(grads["tune"][k], grads["eval"][k]) for k in grads["eval"])
    assert worst <= 1e-9, worst


def test_resnet50_activation_memory_tune_matches_deploy_and_halves_eval():
    model = resnet50().eval()
    x = torch.randn(8, 3, 160, 160)
    measured = {}
    for mode in ("eval", "tune", "deploy"):
        set_mode(model, mode)
        measured[mode] = activation_bytes(model, x, backward=False)
    print({mode: f"{b / MIB:.1f} MiB" for mode, b in measured.items()})
    assert measured["tune"] <= 1.01 * measured["deploy"]
    assert measured["tune"] <= 0.50 * measured["eval"]


def test_blocks_are_convbn_and_modes_switch_all_of_them():
    model = resnet18(mode="tune")
    assert get_modes(model) == {"tune": 20}  # stem + 8 blocks x 2 + 3 projections
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in _outside_convbn(model))
    assert isinstance(model, ResNet) and model.out_features == 512
    assert resnet50().out_features == 2048


def _outside_convbn(model):
    inside = {id(sub) for m in model.modules() if isinstance(m, ConvBN) for sub in m.modules()}
    return [m for m in model.modules() if id(m) not in inside]


def test_copy_head_is_a_trainable_copy_and_fc_is_unused():
    model = resnet18(num_classes=10)
    head = model.copy_head()
    assert isinstance(head, nn.Linear) and head.out_features == 10
    assert torch.equal(head.weight, model.fc.weight) and head.weight is not model.fc.weight
    assert all(p.requires_grad for p in head.parameters())
    assert not any(p.requires_grad for p in model.fc.parameters())
    with torch.no_grad():
        head.weight.add_(1.0)
    assert not torch.equal(head.weight, model.fc.weight)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="groups=1"):
        ResNet(BasicBlock, [2, 2, 2, 2], groups=32)
    with pytest.raises(ValueError, match="three booleans"):
        resnet50(replace_stride_with_dilation=[True])
    with pytest.raises(ValueError, match="unknown mode"):
        resnet18(mode="fast")
