"""sample_rate: seeded per-class stratified subsets, identical across machines, validated."""

from __future__ import annotations

import shutil

import pytest

from tllib_tune.datasets import SAMPLE_RATES, get_dataset, stratified_subset

from .trees import make_cub


def fake_samples(per_class=(20, 7, 1, 13)):
    return [(f"/data/x/images/c{c}/img{i:03d}.jpg", c) for c, n in enumerate(per_class) for i in range(n)]


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_per_class_counts(rate):
    samples = fake_samples()
    subset = stratified_subset(samples, rate, root="/data/x")
    counts = [sum(1 for _, y in subset if y == c) for c in range(4)]
    assert counts == [max(1, (n * rate + 50) // 100) for n in (20, 7, 1, 13)]
    assert subset == [s for s in samples if s in subset]  # original order kept


def test_subsets_are_nested_and_order_independent():
    samples = fake_samples()
    subsets = {r: set(stratified_subset(samples, r, root="/data/x")) for r in SAMPLE_RATES}
    assert subsets[15] <= subsets[30] <= subsets[50] <= subsets[100]
    assert set(stratified_subset(samples[::-1], 30, root="/data/x")) == subsets[30]


def test_subset_depends_only_on_relative_paths():
    """Moving the data set elsewhere (another machine) keeps the same images."""
    a = stratified_subset(fake_samples(), 30, root="/data/x")
    moved = [(p.replace("/data/x", "/home/me/sets/cub"), y) for p, y in fake_samples()]
    b = stratified_subset(moved, 30, root="/home/me/sets/cub")
    assert [p.replace("/data/x", "") for p, _ in a] == [p.replace("/home/me/sets/cub", "") for p, _ in b]
    assert a != stratified_subset(fake_samples(), 30, root="/data/x", seed=1)


def test_dataset_subset_same_in_two_copies(tmp_path):
    make_cub(tmp_path / "one" / "CUB_200_2011", per_class=12)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    a = get_dataset("cub200", tmp_path / "one", sample_rate=30)
    b = get_dataset("cub200", tmp_path / "two", sample_rate=30)
    assert len(a) == 3 * 2  # 6 train images per class -> round(1.8) = 2
    assert [p.split("/one/")[1] for p, _ in a.samples] == [p.split("/two/")[1] for p, _ in b.samples]
    assert (
        len(get_dataset("cub200", tmp_path / "one", split="test", sample_rate=15)) == 18
    )  # test is never cut


@pytest.mark.parametrize("bad", [0, 10, 20, 75, 101, 50.5, -15, None, "half", True])
def test_invalid_sample_rate_is_a_value_error_naming_choices(cub_root, bad):
    root, _ = cub_root
    with pytest.raises(ValueError, match=r"\[100, 50, 30, 15\]"):
        get_dataset("cub200", root, sample_rate=bad)
    with pytest.raises(ValueError, match=r"\[100, 50, 30, 15\]"):
        stratified_subset(fake_samples(), bad)
