"""Registry, the state_dict layout of every model against torchvision's, and the conv/act convention."""

from __future__ import annotations

import inspect
import re
import sys
import types

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.regnet import BlockParams

import tllib_tune.models as models
from tllib_tune import ConvBN
from tllib_tune.models import get_model, list_models
from tllib_tune.models.regnet import regnet_names
from tllib_tune.models.resnet import resnet_names
from tllib_tune.models.weights import to_torchvision_state_dict

REQUIRED = {
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
    "regnet_x_3_2gf",
    "regnet_y_400mf",
    "regnet_y_1_6gf",
}


def test_list_models_is_sorted_and_complete():
    names = list_models()
    assert names == sorted(names) and len(set(names)) == len(names)
    assert REQUIRED <= set(names)
    assert set(names) == set(resnet_names()) | set(regnet_names())
    for name in names:
        builder = getattr(models, name)
        assert callable(builder) and builder.__name__ == name and builder.__doc__


def test_get_model_builds_with_keyword_arguments():
    model = get_model("ResNet18", num_classes=7, mode="tune")
    assert model.arch == "resnet18" and model.fc.out_features == 7
    assert {m.mode.value for m in model.modules() if isinstance(m, ConvBN)} == {"tune"}


@pytest.mark.parametrize(
    "typo, suggestion",
    [("resnet5", "resnet50"), ("resnext50", "resnext50_32x4d"), ("regnet_y_400", "regnet_y_400mf")],
)
def test_unknown_name_suggests_the_closest(typo, suggestion):
    with pytest.raises(ValueError, match=f"unknown model '{typo}'.*{suggestion}"):
        get_model(typo)


def test_unrelated_name_lists_all_models():
    with pytest.raises(ValueError, match="choose one of: .*wide_resnet50_2"):
        get_model("vgg16_bn_xyz_totally_different")


@pytest.mark.parametrize("name", list_models())
def test_state_dict_layout_matches_torchvision(name, monkeypatch):
    """Every model, the 644 M-parameter regnet_y_128gf included, built on the meta device (no memory)."""
    block_params = BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):  # torchvision computes the RegNet widths with tensors
        with torch.device("cpu"):
            return block_params(cls, *args, **kwargs)

    monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))
    with torch.device("meta"):
        ours = get_model(name)
        theirs = getattr(torchvision.models, name)()
    exported = to_torchvision_state_dict(ours)
    expected = theirs.state_dict()
    assert list(exported) == list(expected)
    assert all(exported[k].shape == expected[k].shape for k in expected)
    assert ours.out_features == theirs.fc.in_features


@pytest.mark.parametrize("name", list_models())
def test_conv_act_naming_convention_on_every_model(name):
    with torch.device("meta"):
        model = get_model(name)
    relus = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}), "a ReLU module is shared between positions"
    for path, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, ConvBN):
                assert re.fullmatch(r"conv\w*|downsample", child_name), f"{path}.{child_name}"
        for conv_name, act_name in getattr(module, "conv_act_pairs", ()):
            assert isinstance(getattr(module, conv_name), ConvBN), f"{path}.{conv_name}"
            assert isinstance(getattr(module, act_name), nn.ReLU), f"{path}.{act_name}"
            assert conv_name.replace("conv", "act", 1) == act_name


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "regnet_x_400mf", "regnet_y_400mf"])
def test_conv_act_pairs_are_exactly_the_relus_applied_to_a_convbn_output(name):
    """Hooks see what each ReLU receives: for a listed pair it is the ConvBN's output unchanged; every
    other ReLU named act<K> next to a conv<K> (after a residual add) receives something else."""
    torch.manual_seed(0)
    model = get_model(name).eval()
    outputs, checks = {}, []

    def remember(key):
        return lambda module, args, out: outputs.__setitem__(key, out.detach().clone())

    def compare(key, listed):
        return lambda module, args: checks.append((key, listed, torch.equal(args[0], outputs[key])))

    for path, module in model.named_modules():
        listed = set(getattr(module, "conv_act_pairs", ()))
        for conv_name, conv in module.named_children():
            act_name = conv_name.replace("conv", "act", 1)
            if isinstance(conv, ConvBN) and isinstance(getattr(module, act_name, None), nn.ReLU):
                key = f"{path}.{conv_name}"
                conv.register_forward_hook(remember(key))
                getattr(module, act_name).register_forward_pre_hook(
                    compare(key, (conv_name, act_name) in listed)
                )
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert checks
    if name.startswith("resnet"):  # act3 / act2 after the residual add sit next to conv3 / conv2
        assert any(not listed for _, listed, _ in checks)
    assert all(listed == same for _, listed, same in checks), [c for c in checks if c[1] != c[2]][:3]


def test_register_model_makes_the_public_builder_from_the_architecture(monkeypatch):
    """The decorator adds the name to the defining module's __all__ and the registry; the builder takes
    pretrained/mode/progress and passes the rest on; a second model of the same name is refused."""
    from tllib_tune.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    module = types.ModuleType("fake_zoo")
    monkeypatch.setitem(sys.modules, "fake_zoo", module)
    seen = {}

    def tiny_resnet(**kwargs):
        """A tiny ResNet."""
        seen.update(kwargs)
        return models.ResNet(models.BasicBlock, [1, 1, 1, 1], **kwargs)

    tiny_resnet.__module__ = "fake_zoo"
    builder = models.register_model(tiny_resnet)
    assert module.__all__ == ["tiny_resnet"] and builder.__name__ == "tiny_resnet"
    assert "tiny_resnet" in list_models() and registry.registered_in("fake_zoo") == ["tiny_resnet"]
    assert list(inspect.signature(builder).parameters) == ["pretrained", "mode", "progress", "kwargs"]
    assert builder.__doc__.startswith("A tiny ResNet.") and "pretrained:" in builder.__doc__
    source = builder(num_classes=10)
    model = get_model("Tiny_ResNet", pretrained=source.state_dict(), mode="tune", num_classes=10)
    assert seen == {"num_classes": 10} and model.arch == "tiny_resnet" and model.fc.out_features == 10
    assert {m.mode.value for m in model.modules() if isinstance(m, ConvBN)} == {"tune"}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="registered twice"):
        models.register_model(tiny_resnet)


def test_list_models_filters_with_wildcards():
    assert list_models("regnet_x_4*") == ["regnet_x_400mf"]
    assert list_models("*resnet50*") == ["resnet50", "wide_resnet50_2"]
    assert list_models("nothing*") == []
