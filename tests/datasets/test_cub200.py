"""CUB-200-2011 reader: official layout, counts/labels/splits, half-extracted trees, bad images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tllib_tune.datasets import (
    CUB200,
    CorruptImageError,
    DatasetNotFoundError,
    MetadataError,
    MissingFileError,
    get_dataset,
)

from .trees import make_cub


def test_official_layout_under_root(cub_root):
    root, expected = cub_root
    for split in ("train", "test"):
        ds = get_dataset("cub200", root, split=split)
        assert ds.layout == "CUB_200_2011"
        assert ds.num_classes == 3
        assert ds.classes == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty Albatross"]
        assert ds.samples == expected[split]
        assert len(ds) == 9
        assert ds.targets == [y for _, y in expected[split]]


def test_root_is_the_cub_folder_itself(cub_root):
    root, expected = cub_root
    ds = CUB200(root / "CUB_200_2011", split="test")
    assert ds.samples == expected["test"]


def test_item_is_image_and_label(cub_root):
    root, expected = cub_root
    ds = get_dataset("cub200", root, split="train")
    image, label = ds[4]
    path, want = expected["train"][4]
    assert label == want
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(path).convert("RGB")))
    ds_t = get_dataset("cub200", root, transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    assert ds_t[4][0].shape == (44, 24, 3)


def test_non_contiguous_class_ids_map_to_0_based_labels(tmp_path):
    expected = make_cub(tmp_path / "CUB_200_2011", per_class=2, class_ids=(5, 17, 30))
    ds = CUB200(tmp_path, split="train")
    assert ds.samples == expected["train"]
    assert sorted(set(ds.targets)) == [0, 1, 2]


def test_missing_root_names_root_layouts_and_how_to_get(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("cub200", tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "does not exist" in msg
    assert "CUB_200_2011" in msg and "image_list" in msg
    assert "data.caltech.edu" in msg and "data/README.md" in msg


def test_empty_root_says_no_layout_found(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="No CUB-200-2011 layout was found"):
        get_dataset("cub200", tmp_path)


@pytest.mark.parametrize(
    "name", ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]
)
def test_half_extracted_missing_metadata_file(cub_root, name):
    root, _ = cub_root
    (root / "CUB_200_2011" / name).unlink()
    with pytest.raises(MissingFileError) as err:
        get_dataset("cub200", root)
    assert name in str(err.value) and "half-extracted" in str(err.value)


def test_listed_but_absent_images_are_named(cub_root):
    root, expected = cub_root
    gone = expected["train"][2][0]
    (root / "CUB_200_2011" / "images" / gone.split("/images/")[1]).unlink()
    with pytest.raises(MissingFileError) as err:
        get_dataset("cub200", root, split="train")
    assert gone in str(err.value) and "1 of 9" in str(err.value)
    # The test split does not list that image: it still loads.
    assert len(get_dataset("cub200", root, split="test")) == 9


def test_missing_images_folder(cub_root):
    root, _ = cub_root
    shutil.rmtree(root / "CUB_200_2011" / "images")
    with pytest.raises(MissingFileError, match="9 of 9 images"):
        get_dataset("cub200", root)


def test_corrupt_and_truncated_images_name_the_file(cub_root):
    root, expected = cub_root
    ds = get_dataset("cub200", root, split="train")
    garbage, truncated, empty = (expected["train"][i][0] for i in (0, 1, 2))
    with open(garbage, "wb") as f:
        f.write(b"this is not a jpeg at all" * 10)
    data = open(truncated, "rb").read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    open(empty, "wb").close()
    for index, path in ((0, garbage), (1, truncated), (2, empty)):
        with pytest.raises(CorruptImageError) as err:
            ds[index]
        assert path in str(err.value)
    assert ds[3][1] == expected["train"][3][1]  # other images still load


def test_image_deleted_after_construction_is_named(cub_root):
    root, expected = cub_root
    ds = get_dataset("cub200", root, split="test")
    path = expected["test"][0][0]
    (root / "CUB_200_2011" / "images" / path.split("/images/")[1]).unlink()
    with pytest.raises(MissingFileError, match="Albatross"):
        ds[0]


def test_corrupt_image_through_dataloader_names_the_file(cub_root):
    root, expected = cub_root
    path = expected["test"][0][0]
    with open(path, "wb") as f:
        f.write(b"\x00" * 64)
    loader = torch.utils.data.DataLoader(
        get_dataset("cub200", root, split="test"), batch_size=2, collate_fn=list
    )
    with pytest.raises(CorruptImageError) as err:
        next(iter(loader))
    assert path in str(err.value)


def test_inconsistent_ids_between_files(cub_root):
    root, _ = cub_root
    labels = root / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(MetadataError) as err:
        get_dataset("cub200", root)
    assert "image_class_labels.txt" in str(err.value) and "[18]" in str(err.value)


def test_unknown_class_id(cub_root):
    root, _ = cub_root
    labels = root / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("5 1\n", "5 42\n"))
    with pytest.raises(MetadataError, match=r"line 5: class id 42 is not in"):
        get_dataset("cub200", root)


def test_is_train_flag_must_be_0_or_1(cub_root):
    root, _ = cub_root
    split = root / "CUB_200_2011" / "train_test_split.txt"
    split.write_text(split.read_text().replace("3 1\n", "3 2\n"))
    with pytest.raises(MetadataError, match="is_train must be 0 or 1, got 2"):
        get_dataset("cub200", root, split="test")


def test_crlf_and_blank_lines_are_fine(cub_root):
    root, expected = cub_root
    for name in ("images.txt", "classes.txt"):
        path = root / "CUB_200_2011" / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n") + b"\r\n\r\n")
    assert get_dataset("cub200", root).samples == expected["train"]


def test_layout_argument(cub_root, tmp_path):
    root, _ = cub_root
    with pytest.raises(DatasetNotFoundError, match="image_list"):
        CUB200(root, layout="image_list")
    with pytest.raises(ValueError, match="layout must be 'auto' or one of"):
        CUB200(root, layout="cub")
