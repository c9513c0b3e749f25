"""Stanford Cars reader: torchvision's devkit layout (checked against torchvision), mirrors, no download."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision

from tllib_tune.datasets import DatasetNotFoundError, MissingFileError, StanfordCars, get_dataset

from .trees import CARS_CLASSES, make_cars_annos, make_cars_devkit


@pytest.mark.parametrize("split", ["train", "test"])
def test_matches_torchvision_stanford_cars(cars_root, split):
    root, expected = cars_root
    ours = get_dataset("stanford_cars", root, split=split)
    ref = torchvision.datasets.StanfordCars(str(root), split=split, download=False)
    assert ours.layout == "devkit"
    assert ours.classes == ref.classes == CARS_CLASSES
    assert ours.num_classes == 3 and len(ours) == len(ref) == 9
    assert ours.samples == expected[split]
    for i in range(0, 9, 4):
        ref_image, ref_label = ref[i]
        image, label = ours[i]
        assert label == ref_label
        np.testing.assert_array_equal(np.asarray(image), np.asarray(ref_image))


def test_alias_cars_and_root_being_the_folder(cars_root):
    root, expected = cars_root
    assert get_dataset("cars", root / "stanford_cars", split="test").samples == expected["test"]


def test_kaggle_style_mirror(tmp_path):
    expected = make_cars_devkit(tmp_path, kaggle=True, test_annos_in_devkit=True)
    for split in ("train", "test"):
        ds = StanfordCars(tmp_path, split=split)
        assert ds.samples == expected[split]
        assert "/cars_train/cars_train/" in ds.samples[0][0] or split == "test"


def test_cars_annos_layout(tmp_path):
    expected = make_cars_annos(tmp_path / "stanford_cars")
    for split in ("train", "test"):
        ds = get_dataset("cars", tmp_path, split=split)
        assert ds.layout == "cars_annos"
        assert ds.samples == expected[split]
        assert ds.classes == CARS_CLASSES


def test_missing_test_labels_file_explains_where_it_comes_from(cars_root):
    root, _ = cars_root
    (root / "stanford_cars" / "cars_test_annos_withlabels.mat").unlink()
    assert len(get_dataset("cars", root, split="train")) == 9
    with pytest.raises(MissingFileError) as err:
        get_dataset("cars", root, split="test")
    assert "cars_test_annos_withlabels.mat" in str(err.value) and "Kaggle" in str(err.value)


def test_missing_devkit(cars_root):
    import shutil

    root, _ = cars_root
    shutil.rmtree(root / "stanford_cars" / "devkit")
    with pytest.raises(MissingFileError, match="no devkit/ folder"):
        get_dataset("cars", root, split="test")


def test_missing_image_folder(cars_root):
    import shutil

    root, _ = cars_root
    shutil.rmtree(root / "stanford_cars" / "cars_test")
    with pytest.raises(MissingFileError, match="cars_test is missing"):
        get_dataset("cars", root, split="test")


def test_download_is_a_clear_error_with_alternatives(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("stanford_cars", tmp_path, download=True)
    msg = str(err.value)
    assert "no official download" in msg and "7545" in msg
    assert "kaggle.com" in msg and "TLlib" in msg


def test_download_flag_is_harmless_when_data_is_present(cars_root):
    root, expected = cars_root
    assert get_dataset("cars", root, download=True).samples == expected["train"]
