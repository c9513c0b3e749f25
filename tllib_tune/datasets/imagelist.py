"""TLlib's image-list layout: ``root/image_list/{train_100,train_50,train_30,train_15,test}.txt``.

Each line is ``relative/path label`` (path relative to ``root``, label 0-based). Many users already have
these folders from TLlib, so CUB-200, Aircraft and Stanford Cars all accept this layout, and
``get_dataset("imagelist", root)`` reads any custom data set written the same way.
``sample_rate`` picks ``train_{rate}.txt`` when present; otherwise the seeded per-class subset of
``train_100.txt`` (or ``train.txt``) is used. Class names come from an optional
``image_list/classes.txt`` (one name per line, in label order), else from the images' parent folders
when those agree with the labels, else ``class_000``, ``class_001``, ...

The number of classes is one more than the largest label, so labels that leave gaps ({0, 1, 7}: eight
classes, five never trained) and test labels that no training image has are warned about. A root without
``image_list/`` that holds class folders is named as such: read it as the "imagefolder" data set.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .base import FineGrainedDataset, Layout, PathLike, Sample, read_lines, safe_relpath
from .errors import DatasetNotFoundError, MetadataError, MissingFileError
from .imagefolder import looks_like_class_folders

__all__ = ["ImageListLayout", "ImageList", "read_image_list"]

LIST_DIR = "image_list"


def read_image_list(path: Path, root: Path) -> List[Sample]:
    """Parse one list file into (absolute path, label) pairs; malformed lines raise MetadataError."""
    samples: List[Sample] = []
    seen: Dict[str, int] = {}
    duplicates = 0
    for lineno, line in read_lines(path, what="image list"):
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise MetadataError(f"{path}, line {lineno}: expected 'relative/path label', got {line[:80]!r}")
        rel, token = fields
        try:
            label = int(token)
        except ValueError:
            raise MetadataError(
                f"{path}, line {lineno}: label must be a 0-based integer, got {token!r} in {line[:80]!r}"
            ) from None
        if label < 0:
            raise MetadataError(f"{path}, line {lineno}: label must be >= 0, got {label}")
        safe_relpath(rel, path, lineno)
        if rel in seen:
            if seen[rel] != label:
                raise MetadataError(
                    f"{path}, line {lineno}: {rel!r} is listed again with label {label} "
                    f"(first with {seen[rel]})"
                )
            duplicates += 1
        seen[rel] = label
        samples.append((os.path.join(root, rel), label))
    if duplicates:
        warnings.warn(
            f"{path} lists {duplicates} image(s) more than once; they are used as often as listed",
            stacklevel=2,
        )
    return samples


class ImageListLayout(Layout):
    """root/image_list/*.txt with "relative/path label" lines (TLlib)."""

    name = "image_list"

    def describe(self, root: Path) -> str:
        return f"{root / LIST_DIR}/{{train_100,train_50,train_30,train_15,test}}.txt (TLlib image lists)"

    def find(self, root: Path) -> Optional[Path]:
        return root if (root / LIST_DIR).is_dir() else None

    @staticmethod
    def _train_file(base: Path, sample_rate: int) -> Tuple[Path, bool]:
        folder = base / LIST_DIR
        exact = folder / f"train_{sample_rate}.txt"
        if exact.is_file():
            return exact, True
        for name in ("train_100.txt", "train.txt"):
            if (folder / name).is_file():
                return folder / name, sample_rate == 100
        raise MissingFileError(
            f"{folder} has no train list: expected train_{sample_rate}.txt, train_100.txt or train.txt "
            "(lines 'relative/path label'). Copy TLlib's image_list folder completely."
        )

    def read(self, base: Path, split: str, sample_rate: int) -> Tuple[List[Sample], List[str], bool]:
        folder = base / LIST_DIR
        test_file = folder / "test.txt"
        if split == "train":
            list_file, subsampled = self._train_file(base, sample_rate)
        else:
            list_file, subsampled = test_file, True
        if not list_file.is_file():
            raise MissingFileError(
                f"image list {list_file} is missing; expected lines 'relative/path label'. Copy TLlib's "
                "image_list folder completely."
            )
        samples = read_image_list(list_file, base)
        if not samples:
            raise MetadataError(f"image list {list_file} is empty; expected lines 'relative/path label'")
        # The class count must not depend on which split (or subset) is read: take every list into account.
        all_samples = list(samples)
        for other in ("train_100.txt", "train.txt", "test.txt"):
            other_path = folder / other
            if other_path.is_file() and other_path != list_file:
                all_samples += read_image_list(other_path, base)
        classes = self._classes(folder, all_samples)
        train_list = self._train_file(base, 100)[0] if split == "test" else list_file
        trained = {y for _, y in (read_image_list(train_list, base) if split == "test" else samples)}
        _warn_about_labels(split, list_file, samples, trained, len(classes))
        return samples, classes, subsampled

    @staticmethod
    def _classes(folder: Path, samples: List[Sample]) -> List[str]:
        max_label = max((y for _, y in samples), default=-1)
        names_file = folder / "classes.txt"
        if names_file.is_file():
            names = [line for _, line in read_lines(names_file, what="class-name file")]
            if len(set(names)) != len(names):
                raise MetadataError(f"{names_file}: class names must be unique")
            if max_label >= len(names):
                raise MetadataError(
                    f"{names_file} names {len(names)} classes but the image lists use label {max_label}; "
                    "fix the list files or the class names"
                )
            return names
        parents: Dict[int, set] = {}
        for path, label in samples:
            parents.setdefault(label, set()).add(Path(path).parent.name)
        folder_names = [parents.get(i, set()) for i in range(max_label + 1)]
        if all(len(n) == 1 for n in folder_names):
            names = [next(iter(n)) for n in folder_names]
            if len(set(names)) == len(names):
                return names
        return [f"class_{i:03d}" for i in range(max_label + 1)]


def _labels(labels: List[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, labels[:limit]))
    return shown + (f" ... ({len(labels)} in all)" if len(labels) > limit else "")


def _warn_about_labels(
    split: str, list_file: Path, samples: List[Sample], trained: set, num_classes: int
) -> None:
    """Warn when classes have no training image (train) or test images carry such labels (test)."""
    if split == "train":
        untrained = [c for c in range(num_classes) if c not in trained]
        if untrained:
            warnings.warn(
                f"{list_file} has no image of label(s) {_labels(untrained)} out of 0..{num_classes - 1}: "
                f"the classifier gets {num_classes} outputs, {len(untrained)} of which never train. Number "
                "the labels 0..N-1 without gaps (or name every class in image_list/classes.txt on purpose)",
                stacklevel=3,
            )
        return
    unseen = sorted({y for _, y in samples} - trained)
    if unseen:
        count = sum(1 for _, y in samples if y in set(unseen))
        warnings.warn(
            f"{list_file} uses label(s) {_labels(unseen)} that no training image has: its {count} image(s) "
            "of them can never be classified right; check the labels of both lists",
            stacklevel=3,
        )


class ImageList(FineGrainedDataset):
    """Any data set in TLlib's image-list layout (``get_dataset("imagelist", root)``)."""

    name = "imagelist"
    title = "image-list data set"
    layouts = (ImageListLayout(),)
    how_to_get = (
        "write root/image_list/train_100.txt and root/image_list/test.txt with lines 'relative/path label' "
        "(paths relative to root, labels from 0)."
    )

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        sample_rate: int = 100,
        transform: Optional[Callable] = None,
        download: bool = False,
        check_files: bool = True,
    ) -> None:
        try:
            super().__init__(
                root,
                split=split,
                sample_rate=sample_rate,
                transform=transform,
                download=download,
                check_files=check_files,
            )
        except DatasetNotFoundError as exc:
            tree = looks_like_class_folders(root) if not Path(root, LIST_DIR).exists() else None
            if tree is None:
                raise
            raise DatasetNotFoundError(
                f"{root} has no {LIST_DIR}/ folder; it looks like a class-folder tree ({tree}): read it as "
                "the 'imagefolder' data set",
                suggested_dataset="imagefolder",
            ) from exc
