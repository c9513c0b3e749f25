"""Weights: torchvision downloads (offline, through torch.hub's cache), timm and own checkpoints, errors."""

from __future__ import annotations

import argparse
import os
import urllib.error

import pytest
import timm
import torch
import torch.hub
import torchvision
from safetensors.torch import save_file

from tests.conftest import randomize_all_bn_, rel_err
from tests.models.conftest import saved_reference, torchvision_features, torchvision_reference
from tllib_tune import set_mode
from tllib_tune.models import (
    WeightsError,
    load_weights,
    resnet18,
    resnet50,
    save_torchvision_state_dict,
    to_torchvision_state_dict,
)
from tllib_tune.models.weights import KEY_RULES, extract_state_dict, torchvision_key_map

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def _features(model):
    with torch.no_grad():
        return model.eval()(X)


# --- timm -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def timm_resnet50():
    torch.manual_seed(5)
    model = timm.create_model("resnet50", pretrained=False)
    randomize_all_bn_(model, seed=5)
    with torch.no_grad():
        expected = model.eval().forward_features(X)
    return model.state_dict(), expected


def test_timm_state_dict_loads(timm_resnet50, tmp_path):
    state, expected = timm_resnet50
    path = tmp_path / "timm_resnet50.pth"
    torch.save(state, path)
    model = resnet50(pretrained=str(path))
    assert rel_err(_features(model), expected) <= 1e-5
    set_mode(model, "tune")
    assert rel_err(_features(model), expected) <= 1e-5


@pytest.mark.parametrize("variant", ["train_script_ddp", "compiled", "no_counters", "safetensors", "ema"])
def test_timm_checkpoint_variants_load(variant, timm_resnet50, tmp_path):
    state, expected = timm_resnet50
    path = tmp_path / "checkpoint.pth"
    if variant == "train_script_ddp":  # timm's train.py: {"state_dict": ...}, keys of a DDP-wrapped model
        obj = {"epoch": 3, "arch": "resnet50", "state_dict": {"module." + k: v for k, v in state.items()}}
    elif variant == "compiled":
        obj = {"model": {"_orig_mod." + k: v for k, v in state.items()}}
    elif variant == "ema":
        obj = {"state_dict_ema": state}
    else:
        obj = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if variant == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    assert rel_err(_features(resnet50(pretrained=str(path))), expected) <= 1e-5


# --- own format and export ------------------------------------------------------------------------
def test_own_format_round_trip_from_any_mode(tmp_path):
    _, path = saved_reference("resnet18", tmp_path)
    source = resnet18(pretrained=str(path), mode="deploy")  # state_dict is canonical even in deploy
    expected = _features(source)
    own = tmp_path / "own.pth"
    torch.save(source.state_dict(), own)
    target = resnet18()
    assert load_weights(target, str(own)) == "tllib_tune"
    assert rel_err(_features(target), expected) <= 1e-5
    assert load_weights(resnet18(), str(path)) == "torchvision"


def test_export_is_exact_and_loads_strictly_into_torchvision(tmp_path):
    reference, path = saved_reference("resnet18", tmp_path)
    ours = resnet18(pretrained=str(path))
    exported = to_torchvision_state_dict(ours)
    original = reference.state_dict()
    assert list(exported) == list(original)  # same keys, same order, num_batches_tracked included
    assert all(torch.equal(exported[k], original[k]) for k in original)
    out = save_torchvision_state_dict(ours, tmp_path / "sub" / "exported.pth")
    assert os.listdir(tmp_path / "sub") == ["exported.pth"]  # written atomically, no temporary left
    fresh = torchvision.models.resnet18()
    fresh.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(X), reference(X))


def test_key_map_is_one_to_one_and_covers_every_key():
    for model in (resnet18(), resnet50()):
        mapping = torchvision_key_map(model)
        assert set(mapping) == set(model.state_dict())
        assert len(set(mapping.values())) == len(mapping)
    assert set(KEY_RULES) == {"resnet", "regnet"}


# --- errors ---------------------------------------------------------------------------------------
def test_missing_and_unexpected_keys_are_listed_and_nothing_is_loaded(tmp_path):
    reference = torchvision_reference("resnet18")
    state = reference.state_dict()
    del state["layer2.0.bn1.running_var"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    model = resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as info:
        load_weights(model, state)
    message = str(info.value)
    assert "missing keys (1): layer2.0.conv1.bn.running_var" in message
    assert "unexpected keys (1): layer5.0.conv1.weight" in message
    assert "likely cause" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrong_architecture_is_named_as_the_likely_cause():
    with pytest.raises(WeightsError, match="another architecture than resnet18") as info:
        load_weights(resnet18(), torchvision_reference("resnet34").state_dict())
    assert "layer1.2.conv1.weight" in str(info.value)


def test_head_size_mismatch_suggests_num_classes():
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    with pytest.raises(WeightsError, match="num_classes=10"):
        load_weights(resnet18(), state)
    assert resnet18(pretrained=state, num_classes=10).fc.out_features == 10


def test_classifier_checkpoint_gets_a_hint():
    state = {"backbone." + k: v for k, v in resnet18().state_dict().items()}
    state["head.weight"] = torch.zeros(5, 512)
    with pytest.raises(WeightsError, match="Classifier checkpoint"):
        load_weights(resnet18(), state)


def test_unrecognised_and_unreadable_checkpoints(tmp_path):
    with pytest.raises(WeightsError, match="unrecognised checkpoint"):
        load_weights(resnet18(), {"encoder.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        resnet18(pretrained=str(tmp_path / "nowhere.pth"))
    pickled = tmp_path / "with_objects.pth"
    torch.save({"state_dict": resnet18().state_dict(), "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(WeightsError, match="weights_only=False"):
        resnet18(pretrained=str(pickled))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="could not read"):
        resnet18(pretrained=str(garbage))
    with pytest.raises(WeightsError, match="no state dict"):
        extract_state_dict({"epoch": 1, "optimizer": {}})
    with pytest.raises(TypeError, match="pretrained=3"):
        resnet18(pretrained=3)


# --- pretrained=True through torchvision's weights API, without network --------------------------
def test_pretrained_true_uses_torchvision_default_weights_from_the_hub_cache(offline_hub):
    cache, calls = offline_hub
    reference = torchvision_reference("resnet18", seed=9)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(url))
    model = resnet18(pretrained=True, mode="tune")
    assert calls == []  # served from the cache, as torch.hub does after the first download
    with torch.no_grad():
        assert rel_err(model.eval()(X), torchvision_features(reference, X)) <= 1e-5
    named = resnet18(pretrained="IMAGENET1K_V1")  # for ResNet-18, V1 is also the default
    assert torch.equal(named.conv1.conv.weight, model.conv1.conv.weight)


def test_network_failure_explains_how_to_use_a_local_file(offline_hub):
    cache, calls = offline_hub
    with pytest.raises(WeightsError) as info:
        resnet50(pretrained=True)
    url = torchvision.models.ResNet50_Weights.DEFAULT.url
    message = str(info.value)
    assert calls == [url]
    assert "Temporary failure in name resolution" in message
    assert f"pretrained='/path/to/{os.path.basename(url)}'" in message
    assert str(cache / os.path.basename(url)) in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_pretrained_get_state_dict_is_what_is_loaded(monkeypatch):
    reference = torchvision_reference("resnet18", seed=4)
    seen = []

    def fake_get_state_dict(self, *args, **kwargs):
        seen.append((self, kwargs.get("progress"), kwargs.get("check_hash")))
        return reference.state_dict()

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", fake_get_state_dict)
    model = resnet18(pretrained=True, progress=False)
    assert seen == [(torchvision.models.ResNet18_Weights.DEFAULT, False, True)]
    with torch.no_grad():
        assert rel_err(model.eval()(X), torchvision_features(reference, X)) <= 1e-5


def test_unknown_weights_name_lists_the_choices(offline_hub):
    with pytest.raises(WeightsError, match="IMAGENET1K_V2"):
        resnet50(pretrained="IMAGENET1K_V7")
