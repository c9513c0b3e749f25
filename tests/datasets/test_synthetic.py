"""The synthetic fine-grained set: layout, counts, determinism, atomic generation, refusal to overwrite."""

from __future__ import annotations

import hashlib
import json
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


# --- the target variant: new classes for transfer experiments -------------------------------------------


def test_target_variant_has_new_genera_marks_and_names(tmp_path):
    """Transfer needs a head that is new: no target body, mark or class name is a source one."""
    source, target = synthetic_module.VARIANTS["source"], synthetic_module.VARIANTS["target"]
    assert not set(source.bodies) & set(target.bodies)
    assert not set(source.marks) & set(target.marks)
    limit = len(target.bodies) * len(target.marks)
    names = synthetic_module.synthetic_class_names(limit, variant="target")
    assert len(set(names)) == limit
    assert not set(names) & set(synthetic_module.synthetic_class_names(30))
    ds = get_dataset("synthetic", tmp_path, split="test", variant="target", **SMALL)
    assert ds.classes == names[:6] and names[:6:5] == ["pentagon_square", "star_square"]  # genus-major
    assert ds.num_classes == 6 and len(ds) == 12 and ds.variant == "target"


def test_variants_draw_different_images_and_the_source_is_unchanged():
    # the same (label, index, seed): different pictures in the two variants
    a = np.asarray(synthetic_module._render(3, 0, 0, 48, variant="source"), dtype=np.int16)
    b = np.asarray(synthetic_module._render(3, 0, 0, 48, variant="target"), dtype=np.int16)
    assert np.abs(a - b).mean() > 10
    # the default is the source variant, drawn from the original random stream
    assert np.array_equal(a, np.asarray(synthetic_module._render(3, 0, 0, 48)))


def test_variant_is_part_of_the_marker_and_never_mixed(tmp_path):
    src = ensure_synthetic(tmp_path / "s", progress=False, **SMALL)
    tgt = ensure_synthetic(tmp_path / "t", progress=False, variant="target", **SMALL)
    assert "variant" not in json.loads((src / synthetic_module.MARKER).read_text())  # as it always was
    assert json.loads((tgt / synthetic_module.MARKER).read_text())["variant"] == "target"
    assert tree_hashes(src) != tree_hashes(tgt)
    with pytest.raises(DatasetError, match="Use another root or delete"):
        get_dataset("synthetic", tmp_path / "s", variant="target", **SMALL)
    with pytest.raises(ValueError, match="variant must be one of"):
        get_dataset("synthetic", tmp_path / "x", variant="other", **SMALL)
    with pytest.raises(ValueError, match=r"2\.\.25 \(variant 'target'\)"):
        ensure_synthetic(tmp_path / "y", progress=False, variant="target", num_classes=30)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_target_classes_of_a_genus_share_coarse_appearance(tmp_path):
    """The target set is fine-grained too: the body's colour (the image centre) is much closer within a
    genus than across genera, while the species differ only in the mark."""
    options = dict(variant="target", num_classes=20, images_per_class=12, image_size=32)
    ds = get_dataset("synthetic", tmp_path, split="train", **options)
    means = np.zeros((20, 3))
    for image, label in ds:
        means[label] += np.asarray(image, dtype=np.float64)[12:20, 12:20].mean((0, 1))
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    genus = np.arange(20) // 5
    same = dist[(genus[:, None] == genus[None]) & ~np.eye(20, dtype=bool)].mean()
    assert same < 0.7 * dist[genus[:, None] != genus[None]].mean()


def test_mark_scale_enlarges_only_the_mark(tmp_path):
    """mark_scale changes the species mark and nothing else: same random draws, same background."""
    a = np.asarray(synthetic_module._render(7, 2, 0, 64), dtype=np.int16)
    b = np.asarray(synthetic_module._render(7, 2, 0, 64, mark_scale=1.5), dtype=np.int16)
    changed = np.abs(a - b).max(axis=-1) > 40
    assert 10 < changed.sum() < 0.1 * changed.size  # a few dozen pixels around the mark
    ys, xs = np.nonzero(changed)
    assert np.ptp(ys) < 32 and np.ptp(xs) < 32
    base = ensure_synthetic(tmp_path, progress=False, mark_scale=1.5, **SMALL)
    assert json.loads((base / synthetic_module.MARKER).read_text())["mark_scale"] == 1.5
    with pytest.raises(ValueError, match="mark_scale"):
        ensure_synthetic(tmp_path / "bad", progress=False, mark_scale=4, **SMALL)
