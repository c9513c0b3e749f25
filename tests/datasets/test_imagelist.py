"""TLlib image-list layout, for the three named sets and custom data ("imagelist")."""

from __future__ import annotations

import shutil
import warnings

import pytest

from tllib_tune.datasets import DatasetNotFoundError, MetadataError, MissingFileError, get_dataset

from .trees import make_cub, make_image_list


@pytest.mark.parametrize("name", ["cub200", "aircraft", "stanford_cars", "imagelist"])
def test_image_list_layout_for_every_set(tmp_path, name):
    expected = make_image_list(tmp_path)
    kwargs = {"crop_banner": False} if name == "aircraft" else {}
    for split in ("train", "test"):
        ds = get_dataset(name, tmp_path, split=split, **kwargs)
        assert ds.layout == "image_list"
        assert ds.samples == expected[split]
        assert ds.num_classes == 3
        assert ds.classes == ["cls0", "cls1", "cls2"]  # from the parent folders
        assert ds[0][1] == expected[split][0][1]


def test_sample_rate_picks_the_tllib_subset_file(tmp_path):
    expected = make_image_list(tmp_path, subsets=(15,))
    ds = get_dataset("cub200", tmp_path, sample_rate=15)
    assert [p.rsplit("/", 1)[1] for p, _ in ds.samples] == ["img_0.jpg", "img_1.jpg"] * 3
    assert ds.sample_rate == 15
    # No train_50.txt: the seeded per-class subset of train_100.txt is used (4 of 8 per class).
    ds50 = get_dataset("cub200", tmp_path, sample_rate=50)
    assert len(ds50) == 12 and [ds50.targets.count(c) for c in range(3)] == [4, 4, 4]
    assert set(ds50.samples) <= set(expected["train"])


def test_official_layout_wins_over_image_lists(tmp_path):
    make_image_list(tmp_path)
    expected = make_cub(tmp_path / "CUB_200_2011")
    assert get_dataset("cub200", tmp_path).samples == expected["train"]
    assert get_dataset("cub200", tmp_path, layout="image_list").layout == "image_list"


def test_class_names_file_and_fallback(tmp_path):
    make_image_list(tmp_path)
    (tmp_path / "image_list" / "classes.txt").write_text("red\ngreen\nblue\nspare\n")
    with pytest.warns(UserWarning, match=r"no image of label\(s\) 3 out of 0..3"):  # "spare" never trains
        ds = get_dataset("imagelist", tmp_path)
    assert ds.classes == ["red", "green", "blue", "spare"] and ds.num_classes == 4
    (tmp_path / "image_list" / "classes.txt").write_text("red\ngreen\n")
    with pytest.raises(MetadataError, match="names 2 classes but the image lists use label 2"):
        get_dataset("imagelist", tmp_path)
    (tmp_path / "image_list" / "classes.txt").unlink()
    # Images of one class spread over several folders: generic names.
    (tmp_path / "train" / "other").mkdir()
    (tmp_path / "train" / "cls0" / "img_0.jpg").rename(tmp_path / "train" / "other" / "img_0.jpg")
    path = tmp_path / "image_list" / "train_100.txt"
    path.write_text(path.read_text().replace("cls0/img_0.jpg 0", "other/img_0.jpg 0"))
    assert get_dataset("imagelist", tmp_path).classes == ["class_000", "class_001", "class_002"]


def test_same_image_with_two_labels(tmp_path):
    make_image_list(tmp_path)
    path = tmp_path / "image_list" / "train_100.txt"
    path.write_text(path.read_text() + "train/cls1/img_0.jpg 2\n")
    with pytest.raises(MetadataError, match=r"line 25: 'train/cls1/img_0.jpg' is listed again with label 2"):
        get_dataset("imagelist", tmp_path)


def test_paths_with_spaces(tmp_path):
    make_image_list(tmp_path, classes=2, per_class=2)
    (tmp_path / "train" / "cls0" / "img_0.jpg").rename(tmp_path / "train" / "cls0" / "my image.jpg")
    path = tmp_path / "image_list" / "train_100.txt"
    path.write_text(path.read_text().replace("cls0/img_0.jpg", "cls0/my image.jpg"))
    ds = get_dataset("imagelist", tmp_path)
    assert ds.samples[0] == (str(tmp_path / "train" / "cls0" / "my image.jpg"), 0)


def test_missing_list_files(tmp_path):
    make_image_list(tmp_path)
    (tmp_path / "image_list" / "test.txt").unlink()
    with pytest.raises(MissingFileError, match="test.txt is missing"):
        get_dataset("imagelist", tmp_path, split="test")
    (tmp_path / "image_list" / "train_100.txt").unlink()
    with pytest.raises(MissingFileError, match="has no train list"):
        get_dataset("imagelist", tmp_path)


def test_listed_image_absent(tmp_path):
    expected = make_image_list(tmp_path)
    import os

    os.remove(expected["test"][5][0])
    with pytest.raises(MissingFileError) as err:
        get_dataset("imagelist", tmp_path, split="test")
    assert expected["test"][5][0] in str(err.value)


def test_duplicate_line_warns(tmp_path):
    make_image_list(tmp_path)
    path = tmp_path / "image_list" / "test.txt"
    path.write_text(path.read_text() + "test/cls0/img_0.jpg 0\n")
    with pytest.warns(UserWarning, match="more than once"):
        ds = get_dataset("imagelist", tmp_path, split="test")
    assert len(ds) == 25


def _relabel(root, split, mapping):
    path = root / "image_list" / ("train_100.txt" if split == "train" else "test.txt")
    lines = [line.rsplit(" ", 1) for line in path.read_text().splitlines()]
    path.write_text("".join(f"{rel} {mapping.get(int(y), int(y))}\n" for rel, y in lines))


def test_train_labels_with_gaps_warn(tmp_path):
    make_image_list(tmp_path)
    _relabel(tmp_path, "train", {2: 7})  # labels {0, 1, 7}: eight outputs, five never trained
    _relabel(tmp_path, "test", {2: 7})
    with pytest.warns(UserWarning, match=r"no image of label\(s\) 2, 3, 4, 5, 6 out of 0..7") as caught:
        ds = get_dataset("imagelist", tmp_path, split="train")
    assert ds.num_classes == 8 and len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the test split's labels are all trained: no warning
        assert get_dataset("imagelist", tmp_path, split="test").num_classes == 8


def test_test_labels_unseen_in_train_warn(tmp_path):
    make_image_list(tmp_path)
    _relabel(tmp_path, "train", {2: 1})  # train has labels 0 and 1 only, test 0, 1 and 2
    with pytest.warns(UserWarning, match=r"no image of label\(s\) 2 out of 0..2"):
        assert get_dataset("imagelist", tmp_path, split="train").num_classes == 3
    with pytest.warns(UserWarning, match=r"uses label\(s\) 2 that no training image has: its 8 image\(s\)"):
        get_dataset("imagelist", tmp_path, split="test")


def test_a_class_folder_tree_is_named_as_such(tmp_path):
    make_image_list(tmp_path)
    shutil.rmtree(tmp_path / "image_list")  # train/<class>/*.jpg and test/<class>/*.jpg remain
    with pytest.raises(
        DatasetNotFoundError,
        match=r"no image_list/ folder; it looks like a class-folder tree "
        r"\(train/<class>/<image>\): read it as the 'imagefolder' data set",
    ) as info:
        get_dataset("imagelist", tmp_path)
    assert info.value.suggested_dataset == "imagefolder"
    assert get_dataset("imagefolder", tmp_path, split="test").num_classes == 3
