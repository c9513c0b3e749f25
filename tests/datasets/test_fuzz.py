"""Fuzz-style: malformed metadata lines, list files and .mat files always give a clear DatasetError.

Each case damages one file of a valid tiny tree (bad fields, random junk, binary bytes, duplicates,
truncation, emptiness) and reads the split that uses it: the reader must raise a DatasetError that names
the damaged file (or, for a well-formed line pointing at a non-existent image, that image), never a bare
KeyError/IndexError/UnicodeDecodeError or a silently changed data set.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from tllib_tune.datasets import DatasetError, MissingFileError, get_dataset

from .trees import (
    CARS_CLASSES,
    annotations,
    make_aircraft,
    make_cars_annos,
    make_cars_devkit,
    make_cub,
    make_image_list,
)

FIXED_BAD_LINES = [
    "garbage",
    "1",
    "x y",
    "1.5 2",
    "-3 7",
    "99999999999999999999999",
    "\x00\x01\x02",
    "0x1F 0b10",
]
ALPHABET = "abcXYZ0123456789 ./-_\t#é"


def random_junk(rng: random.Random) -> str:
    """A random line in which every token holds a non-digit, so it can never be a valid 'int int' line."""
    tokens = []
    for _ in range(rng.randint(1, 4)):
        token = "".join(
            rng.choice(ALPHABET.replace(" ", "").replace("\t", "")) for _ in range(rng.randint(1, 8))
        )
        tokens.append(token + rng.choice("abcXYZ.-_#é"))
    return rng.choice([" ", "\t", "  "]).join(tokens)


def mutations(text: bytes, allow_duplicates: bool = True):
    """(case id, new file bytes) pairs for one metadata file."""
    lines = text.decode().splitlines()
    mid = len(lines) // 2

    def replace(new_line) -> bytes:
        out = [line.encode() for line in lines]
        out[mid] = new_line if isinstance(new_line, bytes) else new_line.encode()
        return b"\n".join(out) + b"\n"

    for i, bad in enumerate(FIXED_BAD_LINES):
        yield f"fixed{i}", replace(bad)
    rng = random.Random(1234)
    for i in range(10):
        yield f"junk{i}", replace(random_junk(rng))
    yield "non-utf8", replace(b"\xff\xfe\xfd 1")
    if allow_duplicates:
        yield "duplicate", text + lines[0].encode() + b"\n"
    cut = sum(len(line) + 1 for line in lines[:mid]) + max(1, len(lines[mid]) // 2)
    yield "truncated", text[:cut]
    yield "empty", b""


def cases():
    readers = {
        "cub200": [
            (f, ("train", "test"))
            for f in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
        ],
        "aircraft": [
            ("variants.txt", ("train",)),
            ("images_variant_trainval.txt", ("train",)),
            ("images_variant_test.txt", ("test",)),
        ],
        "imagelist": [("train_100.txt", ("train",)), ("test.txt", ("test",))],
    }
    for reader, files in readers.items():
        for fname, splits in files:
            yield reader, fname, splits


def build(reader: str, root: Path) -> Path:
    """Build a valid tree; return the folder holding the metadata files."""
    if reader == "cub200":
        make_cub(root / "CUB_200_2011", per_class=4)
        return root / "CUB_200_2011"
    if reader == "aircraft":
        make_aircraft(root / "fgvc-aircraft-2013b" / "data", per_split=2)
        return root / "fgvc-aircraft-2013b" / "data"
    make_image_list(root, classes=3, per_class=3)
    return root / "image_list"


def assert_clear(reader, root, split, fname):
    with pytest.raises(DatasetError) as err:
        get_dataset(reader, root, split=split)
    msg = str(err.value)
    assert fname in msg or (isinstance(err.value, MissingFileError) and "missing" in msg), msg
    return msg


@pytest.mark.parametrize(
    "reader, fname, splits", list(cases()), ids=lambda v: v if isinstance(v, str) else "-".join(v)
)
def test_malformed_metadata_lines(tmp_path, reader, fname, splits):
    base = build(reader, tmp_path / "valid")
    for split in splits:  # sanity: the untouched tree reads fine
        assert len(get_dataset(reader, tmp_path / "valid", split=split)) > 0
    original = (base / fname).read_bytes()
    checked = 0
    for _case, data in mutations(original, allow_duplicates=reader != "imagelist"):
        (base / fname).write_bytes(data)
        for split in splits:
            assert_clear(reader, tmp_path / "valid", split, fname)
            checked += 1
    assert checked >= 20 * len(splits)
    (base / fname).write_bytes(original)
    assert len(get_dataset(reader, tmp_path / "valid", split=splits[0])) > 0


def mat_cases():
    good = {"class": 1, "fname": "00001.jpg"}
    bad_rows = {
        "class-zero": {"class": 0},
        "class-too-big": {"class": 999},
        "class-text": {"class": "seven"},
        "class-fraction": {"class": 1.5},
        "class-array": {"class": np.array([1, 2])},
        "fname-number": {"fname": 5},
        "fname-empty": {"fname": ""},
        "fname-escape": {"fname": "../../etc/passwd"},
    }
    for case, change in bad_rows.items():
        yield case, {"annotations": annotations([{**good, **change}])}
    yield "duplicate-fname", {"annotations": annotations([good, {**good, "class": 2}])}
    yield "no-annotations", {"something_else": np.arange(3)}
    yield "no-class-field", {"annotations": annotations([{"fname": "00001.jpg"}])}
    yield "not-a-struct", {"annotations": np.arange(4)}


@pytest.mark.parametrize("case, content", list(mat_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_malformed_cars_annotations(tmp_path, case, content):
    make_cars_devkit(tmp_path / "stanford_cars", per_class=1)
    path = tmp_path / "stanford_cars" / "devkit" / "cars_train_annos.mat"
    scipy.io.savemat(str(path), content)
    assert_clear("cars", tmp_path, "train", "cars_train_annos.mat")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
@pytest.mark.parametrize(
    "fname", ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"]
)
def test_damaged_cars_mat_files(tmp_path, fname, damage):
    make_cars_devkit(tmp_path / "stanford_cars", per_class=1)
    path = tmp_path / "stanford_cars" / fname
    data = path.read_bytes()
    path.write_bytes(
        {"garbage": b"MATLAB? no. " * 20, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    )
    split = "test" if "test" in fname else "train"
    assert_clear("cars", tmp_path, split, Path(fname).name)


@pytest.mark.parametrize(
    "names", [np.array([3, 4, 5]), np.array(["ok", ""], dtype=object), np.array([], dtype=object)]
)
def test_bad_cars_class_names(tmp_path, names):
    make_cars_devkit(tmp_path / "stanford_cars", per_class=1)
    scipy.io.savemat(str(tmp_path / "stanford_cars" / "devkit" / "cars_meta.mat"), {"class_names": names})
    assert_clear("cars", tmp_path, "train", "cars_meta.mat")


def test_cars_annos_layout_bad_test_flag(tmp_path):
    make_cars_annos(tmp_path)
    rows = [{"relative_im_path": "car_ims/000001.jpg", "class": 1, "test": 3}]
    scipy.io.savemat(
        str(tmp_path / "cars_annos.mat"),
        {"annotations": annotations(rows), "class_names": np.array(CARS_CLASSES, dtype=object)},
    )
    msg = assert_clear("cars", tmp_path, "train", "cars_annos.mat")
    assert "test must be 0 or 1" in msg
