"""FGVC-Aircraft reader: torchvision's layout (checked against torchvision's own reader), banner crop."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision
from PIL import Image

from tllib_tune.datasets import Aircraft, CorruptImageError, MetadataError, MissingFileError, get_dataset

from .trees import AIRCRAFT_VARIANTS, IMAGE_H, IMAGE_W


@pytest.mark.parametrize("split, tv_split", [("train", "trainval"), ("test", "test")])
def test_matches_torchvision_fgvc_aircraft(aircraft_root, split, tv_split):
    root, expected = aircraft_root
    ours = get_dataset("aircraft", root, split=split, crop_banner=False)
    ref = torchvision.datasets.FGVCAircraft(
        str(root), split=tv_split, annotation_level="variant", download=False
    )
    assert ours.classes == ref.classes == AIRCRAFT_VARIANTS
    assert ours.num_classes == 4 and len(ours) == len(ref) == 12
    assert ours.samples == expected[split]
    for i in (0, 5, 11):
        ref_image, ref_label = ref[i]
        image, label = ours[i]
        assert label == ref_label
        np.testing.assert_array_equal(np.asarray(image), np.asarray(ref_image))


def test_banner_is_cropped_by_default(aircraft_root):
    root, expected = aircraft_root
    ds = get_dataset("aircraft", root, split="test")
    assert ds.crop_banner
    image, _ = ds[0]
    assert image.size == (IMAGE_W, IMAGE_H - 20)
    full = np.asarray(Image.open(expected["test"][0][0]).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(image), full[: IMAGE_H - 20])
    assert full[IMAGE_H - 20 :].min() > 240  # what was cut is the white banner
    assert Aircraft(root, split="test", crop_banner=False)[0][0].size == (IMAGE_W, IMAGE_H)


def test_image_too_small_for_banner(aircraft_root):
    root, expected = aircraft_root
    Image.new("RGB", (30, 15)).save(expected["train"][0][0])
    with pytest.raises(CorruptImageError, match="crop_banner=False"):
        get_dataset("aircraft", root)[0]


@pytest.mark.parametrize("sub", ["fgvc-aircraft-2013b", "fgvc-aircraft-2013b/data"])
def test_root_may_be_the_archive_or_data_folder(aircraft_root, sub):
    root, expected = aircraft_root
    assert Aircraft(root / sub, split="train").samples == expected["train"]


def test_half_extracted_tree(aircraft_root):
    root, _ = aircraft_root
    (root / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt").unlink()
    assert len(get_dataset("aircraft", root, split="train")) == 12
    with pytest.raises(MissingFileError) as err:
        get_dataset("aircraft", root, split="test")
    assert "images_variant_test.txt" in str(err.value) and "half-extracted" in str(err.value)


def test_unknown_variant_names_file_line_and_variant(aircraft_root):
    root, _ = aircraft_root
    path = root / "fgvc-aircraft-2013b" / "data" / "images_variant_trainval.txt"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].split(" ")[0] + " Boeing 999"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MetadataError) as err:
        get_dataset("aircraft", root)
    msg = str(err.value)
    assert "images_variant_trainval.txt, line 4" in msg and "'Boeing 999'" in msg


def test_absent_image_is_named(aircraft_root):
    root, expected = aircraft_root
    import os

    os.remove(expected["test"][7][0])
    with pytest.raises(MissingFileError) as err:
        get_dataset("aircraft", root, split="test")
    assert expected["test"][7][0] in str(err.value)
