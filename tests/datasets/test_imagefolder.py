"""Users' class-folder trees ("imagefolder"): the samples and labels torchvision's ImageFolder finds,
train/val/test splits and a single tree, and one-line errors for an empty class, a missing split, no
images and a test class that train lacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from torchvision.datasets import ImageFolder

from tllib_tune.datasets import DatasetError, MissingSplitError, get_dataset
from tllib_tune.datasets.imagefolder import looks_like_class_folders

from .trees import write_jpeg

CLASSES = ("cat", "dog", "eel")


def make_folders(root: Path, splits=("train", "val"), classes=CLASSES, per_class: int = 2) -> Path:
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            for k in range(per_class):
                write_jpeg(root / split / name / f"{k}.JPG", seed=100 * s + 10 * c + k)
    return root


@pytest.mark.parametrize("eval_dir", ["val", "test"])
def test_samples_and_labels_are_torchvisions(tmp_path, eval_dir):
    root = make_folders(tmp_path, splits=("train", eval_dir))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    splits = (("train", "train"), ("test", eval_dir))
    references = {split: ImageFolder(str(root / folder)) for split, folder in splits}
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class (torchvision's would be)
    for split, reference in references.items():
        ds = get_dataset("imagefolder", root, split=split)
        assert ds.classes == reference.classes == list(CLASSES) and ds.num_classes == 3
        assert ds.samples == reference.samples and len(ds) == 6
        image, label = ds[3]
        assert label == reference[3][1] == 1 and image.size == reference[3][0].size


def test_a_single_tree_is_a_train_split_without_a_test_split(tmp_path):
    make_folders(tmp_path, splits=("train",))
    single = tmp_path / "train"
    ds = get_dataset("imagefolder", single, split="train")
    assert ds.samples == ImageFolder(str(single)).samples
    with pytest.raises(MissingSplitError, match="single class-folder tree with no val/ or test/ folder"):
        get_dataset("imagefolder", single, split="test")
    with pytest.raises(MissingSplitError, match="train/ but with no val/ or test/ folder"):
        get_dataset("imagefolder", tmp_path, split="test")


def test_the_sample_rate_keeps_a_share_of_each_class(tmp_path):
    root = make_folders(tmp_path, per_class=4)
    ds = get_dataset("imagefolder", root, split="train", sample_rate=50)
    assert [ds.targets.count(c) for c in range(3)] == [2, 2, 2]
    assert set(ds.samples) <= set(ImageFolder(str(root / "train")).samples)


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty-class", r"class folder 'fox' in .*train holds no images \(files ending .*\.jpg"),
        ("no-images", r"no images in the class folders of .*train"),
        ("no-classes", r"no class folders in .*train: expected .*/<class>/<image>"),
        ("no-train", r"has val/ but no train/ folder"),
        ("unknown-test-class", r"class folder 'fox' in .*val has no folder in .*train"),
        ("not-there", r"does not exist or is not a folder: a class-folder data set is your own images"),
    ],
)
def test_errors_name_the_problem_in_one_line(tmp_path, case, match):
    root = tmp_path / "mine"
    split = "test" if case == "unknown-test-class" else "train"
    if case in ("empty-class", "unknown-test-class"):
        make_folders(root)
        (root / ("train" if case == "empty-class" else "val") / "fox").mkdir()
    elif case == "no-images":
        (root / "train" / "cat").mkdir(parents=True)
    elif case == "no-classes":
        (root / "train").mkdir(parents=True)
    elif case == "no-train":
        make_folders(root, splits=("val",))
    with pytest.raises(DatasetError, match=match) as info:  # download: what fine-tuning asks for
        get_dataset("imagefolder", root, split=split, download=True)
    assert "\n" not in str(info.value)


def test_what_looks_like_a_class_folder_tree(tmp_path):
    assert looks_like_class_folders(tmp_path) is None
    make_folders(tmp_path / "split")
    assert looks_like_class_folders(tmp_path / "split") == "train/<class>/<image>"
    assert looks_like_class_folders(tmp_path / "split" / "val") == "<class>/<image>"
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    assert looks_like_class_folders(tmp_path / "empty") is None
