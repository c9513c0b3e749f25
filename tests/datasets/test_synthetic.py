"""The synthetic fine-grained set: layout, counts, determinism, atomic generation, refusal to overwrite."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tllib_tune.datasets import CUB200, DatasetError, SyntheticFineGrained, ensure_synthetic, get_dataset
from tllib_tune.datasets import synthetic as synthetic_module

from .trees import make_cub

SMALL = dict(num_classes=6, images_per_class=4, image_size=32)


def tree_hashes(base: Path) -> dict:
    return {
        p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def default_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, progress=False)
    return root


def test_default_set_shape_and_split(default_root):
    train = get_dataset("synthetic", default_root, split="train")
    test = get_dataset("synthetic", default_root, split="test")
    assert train.num_classes == test.num_classes == 20
    assert len(train) == len(test) == 400
    assert [train.targets.count(c) for c in range(20)] == [20] * 20
    assert not set(train.samples) & set(test.samples)
    assert train.classes[:2] == ["oval_dot", "oval_ring"] and len(set(train.classes)) == 20
    image, label = test[0]
    assert image.size == (96, 96) and image.mode == "RGB" and label == 0
    # Written in the CUB layout and readable by the plain CUB reader.
    assert (default_root / "CUB_200_2011" / "train_test_split.txt").is_file()
    assert CUB200(default_root, split="test").samples == test.samples
    assert len(get_dataset("synthetic", default_root, sample_rate=15)) == 20 * 3


def test_classes_of_a_genus_share_coarse_appearance(default_root):
    """Fine-grained: mean colours of classes in one genus are closer than across genera."""
    ds = get_dataset("synthetic", default_root, split="train")
    means = np.zeros((20, 3))
    for i in range(0, len(ds), 2):
        image, label = ds[i]
        means[label] += np.asarray(image, dtype=np.float64).mean((0, 1))
    means /= 10
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    genus = np.arange(20) // 5
    same = dist[(genus[:, None] == genus[None]) & ~np.eye(20, dtype=bool)].mean()
    other = dist[genus[:, None] != genus[None]].mean()
    assert same < other


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = ensure_synthetic(tmp_path / "a", seed=3, progress=False, **SMALL)
    b = ensure_synthetic(tmp_path / "b", seed=3, progress=False, **SMALL)
    c = ensure_synthetic(tmp_path / "c", seed=4, progress=False, **SMALL)
    ha, hb, hc = tree_hashes(a), tree_hashes(b), tree_hashes(c)
    assert len(ha) == 6 * 4 + 5
    assert ha == hb
    images = [k for k in ha if k.endswith(".jpg")]
    assert all(ha[k] != hc[k] for k in images)


def test_second_call_reuses_the_tree(tmp_path):
    base = ensure_synthetic(tmp_path, progress=False, **SMALL)
    stamp = (base / "images.txt").stat().st_mtime_ns
    ds = SyntheticFineGrained(tmp_path, split="test", **SMALL)
    assert (base / "images.txt").stat().st_mtime_ns == stamp
    assert len(ds) == 6 * 2


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic_module._render

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic_module, "_render", flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, progress=False, **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic_module, "_render", real)
    assert len(get_dataset("synthetic", tmp_path, **SMALL)) == 12


def test_refuses_real_cub_and_other_parameters(tmp_path):
    make_cub(tmp_path / "real" / "CUB_200_2011", per_class=2)
    with pytest.raises(DatasetError, match="not a synthetic set"):
        get_dataset("synthetic", tmp_path / "real")
    ensure_synthetic(tmp_path / "syn", progress=False, **SMALL)
    with pytest.raises(DatasetError, match="Use another root or delete"):
        get_dataset("synthetic", tmp_path / "syn", seed=1, **SMALL)


@pytest.mark.parametrize(
    "bad", [dict(num_classes=1), dict(num_classes=31), dict(images_per_class=1), dict(image_size=8)]
)
def test_bad_parameters(tmp_path, bad):
    with pytest.raises(ValueError, match="synthetic"):
        ensure_synthetic(tmp_path, progress=False, **{**SMALL, **bad})
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_checked_before_generating(tmp_path):
    with pytest.raises(ValueError, match="sample_rate"):
        get_dataset("synthetic", tmp_path, sample_rate=20, **SMALL)
    assert list(tmp_path.iterdir()) == []
