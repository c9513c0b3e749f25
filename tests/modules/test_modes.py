"""set_mode / get_modes / using_mode / iter_blocks on small models."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tllib_tune import ConvBN, LinearBN, Mode, get_modes, set_mode, using_mode


def _model():
    backbone = nn.Sequential(ConvBN(3, 4, 3), nn.ReLU(), ConvBN(4, 4, 3), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), LinearBN(4, 3))
    return nn.ModuleDict({"backbone": backbone, "head": head})


def test_set_mode_counts_and_include():
    model = _model()
    assert get_modes(model) == {"train": 3}
    assert set_mode(model, "tune", include="backbone") == 2
    assert get_modes(model) == {"tune": 2, "train": 1}
    assert get_modes(model, include="head") == {"train": 1}
    assert set_mode(model, Mode.DEPLOY, include=["backbone.0", "head.*"]) == 2
    assert model["backbone"][0].mode is Mode.DEPLOY and model["head"][2].mode is Mode.DEPLOY
    assert model["backbone"][2].mode is Mode.TUNE
    assert set_mode(model, "eval") == 3
    assert get_modes(model) == {"eval": 3}


def test_include_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="backbon.*top-level modules are: backbone, head"):
        set_mode(_model(), "tune", include="backbon")


def test_bad_mode_is_an_error_before_anything_changes():
    model = _model()
    with pytest.raises(ValueError, match="choose one of"):
        set_mode(model, "tuning")
    assert get_modes(model) == {"train": 3}


def test_using_mode_restores_each_blocks_mode():
    model = _model()
    set_mode(model, "tune", include="backbone")
    set_mode(model, "deploy", include="backbone.2")
    weight = model["backbone"][2].conv.weight.detach().clone()
    with using_mode(model, "eval"):
        assert get_modes(model) == {"eval": 3}
    assert [b.mode.value for b in (model["backbone"][0], model["backbone"][2], model["head"][2])] == [
        "tune",
        "deploy",
        "train",
    ]
    assert torch.allclose(model["backbone"][2].conv.weight, weight, rtol=1e-6)


def test_using_mode_restores_on_error():
    model = _model()
    with pytest.raises(RuntimeError), using_mode(model, "tune"):
        raise RuntimeError("boom")
    assert get_modes(model) == {"train": 3}


def test_a_model_without_convbn_blocks_is_an_error_not_a_no_op():
    plain = torchvision.models.resnet18()  # nn.Conv2d + nn.BatchNorm2d: nothing a mode could switch
    with pytest.raises(ValueError, match=r"ResNet has no ConvBN block \(20 plain BatchNorm layer"):
        set_mode(plain, "tune")
    with pytest.raises(ValueError, match=r"convert_convbn\(model\)"):
        with using_mode(plain, "tune"):
            pass
    with pytest.raises(ValueError, match="no BatchNorm at all"):
        set_mode(nn.Linear(2, 2), "eval")
    assert get_modes(plain) == {}  # a question, not a switch
