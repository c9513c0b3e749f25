"""Helpers for the model-zoo tests: torchvision references with realistic BatchNorm statistics."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Tuple

import pytest
import torch
import torch.hub
import torchvision
from torch import Tensor, nn

from tests.conftest import randomize_all_bn_


@pytest.fixture(autouse=True)
def _single_thread():
    """Run each model test on one thread: inputs are tiny, and OpenMP threads that spin-wait on a CPU
    shared with other processes made these tests up to 100x slower (measured on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchvision_reference(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """torchvision's ``name`` with random weights and ImageNet-like BatchNorm statistics, in eval()."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(**kwargs)
    randomize_all_bn_(model, seed=seed, wide=False)
    return model.eval()


def torchvision_features(model: nn.Module, x: Tensor) -> Tensor:
    """The last-stage feature map of a torchvision ResNet or RegNet, by its own modules."""
    if isinstance(model, torchvision.models.RegNet):
        return model.trunk_output(model.stem(x))
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def saved_reference(name: str, tmp_path: Path, seed: int = 0, **kwargs) -> Tuple[nn.Module, Path]:
    """A torchvision reference model and the path of its saved state_dict."""
    model = torchvision_reference(name, seed=seed, **kwargs)
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def scramble_(model: nn.Module) -> None:
    """Overwrite every parameter and buffer, so a later load must restore each of them."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.fill_(7 if tensor.is_floating_point() else 3)


def check_against_torchvision(name: str, tmp_path: Path, size: int = 32) -> None:
    """Load torchvision's ``name`` from a file; compare features in eval/tune/deploy, head and export.

    Features must equal torchvision's last-stage features to 1e-5 relative (float32); ``copy_head`` on
    the pooled features must give torchvision's logits; the export (taken in deploy mode, the hardest
    case) must load into torchvision with strict=True and reproduce its outputs.
    """
    from tests.conftest import rel_err
    from tllib_tune import set_mode
    from tllib_tune.models import get_model, to_torchvision_state_dict

    reference, path = saved_reference(name, tmp_path)
    ours = get_model(name, pretrained=str(path)).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torchvision_features(reference, x)
        logits = reference(x)
        for mode in ("eval", "tune", "deploy"):
            set_mode(ours, mode)
            features = ours(x)
            assert features.shape == expected.shape and features.shape[1] == ours.out_features
            assert rel_err(features, expected) <= 1e-5, (name, mode, rel_err(features, expected))
        assert rel_err(ours.copy_head()(features.mean((2, 3))), logits) <= 1e-5
        exported = to_torchvision_state_dict(ours)
        scramble_(reference)
        reference.load_state_dict(exported, strict=True)
        assert rel_err(reference(x), logits) <= 1e-5


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch.hub cache, and a network that fails with URLError for every download."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    calls = []

    def no_network(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints", calls
