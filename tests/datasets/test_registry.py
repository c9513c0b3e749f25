"""get_dataset: names, aliases, arguments and their errors."""

from __future__ import annotations

import pytest

from tllib_tune.datasets import ALIASES, DATASETS, Aircraft, StanfordCars, get_dataset, list_datasets


def test_names_and_aliases():
    assert set(list_datasets()) >= {"cub200", "aircraft", "stanford_cars", "synthetic"}
    assert DATASETS[ALIASES["cars"]] is StanfordCars


@pytest.mark.parametrize(
    "name, close", [("cub2000", "cub200"), ("aircarft", "aircraft"), ("stanford-car", "stanford_cars")]
)
def test_unknown_name_lists_choices_and_closest(tmp_path, name, close):
    with pytest.raises(ValueError) as err:
        get_dataset(name, tmp_path)
    msg = str(err.value)
    assert repr(name) in msg and "synthetic" in msg and f"did you mean {close}" in msg


def test_case_and_hyphens(aircraft_root):
    root, _ = aircraft_root
    assert isinstance(get_dataset("FGVC-Aircraft", root), Aircraft)


@pytest.mark.parametrize("split", ["val", "trainval", "", None])
def test_bad_split(cub_root, split):
    root, _ = cub_root
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\]"):
        get_dataset("cub200", root, split=split)


def test_reader_options_pass_through(aircraft_root):
    root, _ = aircraft_root
    assert get_dataset("aircraft", root, crop_banner=False).crop_banner is False
    with pytest.raises(TypeError):
        get_dataset("aircraft", root, no_such_option=1)
