"""Users' own images in class folders (``get_dataset("imagefolder", root)``), found by torchvision's
``ImageFolder``.

    root/train/<class>/*.jpg  with  root/val/<class>/*.jpg  or  root/test/<class>/*.jpg  (test preferred)
    root/<class>/*.jpg        a single tree: a train split only (fine-tuning holds out `val_ratio` of it)

Labels are the positions of train's class folders, sorted by name (torchvision's rule); the test split
uses train's labels, and a test class folder that train lacks is an error. Which files count as images is
torchvision's rule too (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp, any case; symbolic links
followed); hidden folders such as ``.ipynb_checkpoints`` are not classes. Images are decoded by the
package's reader, so a corrupt file is named like in every other data set. An empty class folder, a
missing split and a tree without images are one-line :class:`~tllib_tune.datasets.DatasetError` messages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .base import FineGrainedDataset, Layout, PathLike, Sample
from .errors import DatasetNotFoundError, MetadataError, MissingSplitError

__all__ = ["ClassFolders", "ClassFolderLayout", "class_folders", "looks_like_class_folders"]

TRAIN_DIR = "train"
EVAL_DIRS = ("test", "val")
_EXTENSIONS = ", ".join(IMG_EXTENSIONS)


def class_folders(directory: Path) -> List[str]:
    """The class folder names in ``directory``, sorted; hidden folders left out."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _has_image(directory: Path, limit: int = 200) -> bool:
    """Whether ``directory`` holds an image file among its first ``limit`` entries."""
    try:
        with os.scandir(directory) as entries:
            for index, entry in enumerate(entries):
                if index >= limit:
                    return False
                if entry.name.lower().endswith(IMG_EXTENSIONS) and entry.is_file():
                    return True
    except OSError:
        return False
    return False


def looks_like_class_folders(root: PathLike, limit: int = 20) -> Optional[str]:
    """How ``root`` looks like a class-folder tree ("train/<class>/<image>" or "<class>/<image>"),
    judged by images in its first ``limit`` class folders; None when it does not."""
    root = Path(root)
    for base, shown in ((root / TRAIN_DIR, f"{TRAIN_DIR}/<class>/<image>"), (root, "<class>/<image>")):
        if base.is_dir() and any(_has_image(base / name) for name in class_folders(base)[:limit]):
            return shown
    return None


class _Scan(ImageFolder):
    """torchvision's ImageFolder, used to list files: our class folders (hidden ones skipped, or the
    given list), and no error for an empty one (the layout names it)."""

    def __init__(self, directory: Path, classes: Optional[Sequence[str]] = None) -> None:
        self.given = list(classes) if classes is not None else None
        super().__init__(str(directory), allow_empty=True)

    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        names = self.given if self.given is not None else class_folders(Path(directory))
        return names, {name: index for index, name in enumerate(names)}


class ClassFolderLayout(Layout):
    """root/train/<class>/* with root/val/ or root/test/, or a single tree root/<class>/*."""

    name = "class_folders"

    def describe(self, root: Path) -> str:
        return (
            f"{root}/train/<class>/<image> with {root}/val/<class>/<image> (or test/), or a single tree "
            f"{root}/<class>/<image>"
        )

    def find(self, root: Path) -> Optional[Path]:
        return root  # the only layout of this data set: read() says precisely what is wrong

    @staticmethod
    def _train_dir(base: Path) -> Path:
        if (base / TRAIN_DIR).is_dir():
            return base / TRAIN_DIR
        present = [name for name in EVAL_DIRS if (base / name).is_dir()]
        if present:
            raise MissingSplitError(
                f"{base} has {present[0]}/ but no {TRAIN_DIR}/ folder: put the training images in "
                f"{base / TRAIN_DIR}/<class>/"
            )
        return base  # a single tree

    @staticmethod
    def _scan_train(train_dir: Path) -> _Scan:
        if not class_folders(train_dir):  # torchvision's scan needs at least one class
            raise MetadataError(
                f"no class folders in {train_dir}: expected {train_dir}/<class>/<image>, one folder per class"
            )
        return _Scan(train_dir)

    @staticmethod
    def _classes(train_dir: Path, scan: _Scan) -> List[str]:
        counts = [0] * len(scan.classes)
        for _, label in scan.samples:
            counts[label] += 1
        empty = [name for name, count in zip(scan.classes, counts) if count == 0]
        if len(empty) == len(scan.classes):
            raise MetadataError(f"no images in the class folders of {train_dir} (files ending {_EXTENSIONS})")
        if empty:
            shown = ", ".join(repr(name) for name in empty[:5]) + (" ..." if len(empty) > 5 else "")
            what = (
                f"class folders {shown} in {train_dir} hold"
                if len(empty) > 1
                else f"class folder {shown} in {train_dir} holds"
            )
            raise MetadataError(
                f"{what} no images (files ending {_EXTENSIONS}): add images or remove the folder"
            )
        return list(scan.classes)

    def read(self, base: Path, split: str, sample_rate: int) -> Tuple[List[Sample], List[str], bool]:
        train_dir = self._train_dir(base)
        if split == "train":
            scan = self._scan_train(train_dir)
            return list(scan.samples), self._classes(train_dir, scan), False
        found = [base / name for name in EVAL_DIRS if (base / name).is_dir()]
        if not found:
            what = "a single class-folder tree" if train_dir == base else f"{TRAIN_DIR}/ but"
            raise MissingSplitError(
                f"{base} is {what} with no val/ or test/ folder: add {base}/val/<class>/<image> (the same "
                "class folders as train)"
            )
        classes = class_folders(train_dir)
        unknown = [name for name in class_folders(found[0]) if name not in classes]
        if unknown:
            raise MetadataError(
                f"class folder {unknown[0]!r} in {found[0]} has no folder in {train_dir}: the test split can "
                "only hold classes that train has"
            )
        samples = list(_Scan(found[0], classes).samples)
        if not samples:
            raise MetadataError(f"no images in the class folders of {found[0]} (files ending {_EXTENSIONS})")
        return samples, classes, True


class ClassFolders(FineGrainedDataset):
    """Images in class folders (``get_dataset("imagefolder", root)``), see the module."""

    name = "imagefolder"
    title = "class-folder data set"
    layouts = (ClassFolderLayout(),)
    how_to_get = (
        "put the images in one folder per class: root/train/<class>/*.jpg and root/val/<class>/*.jpg (or "
        "test/), or a single tree root/<class>/*.jpg."
    )

    def download(self, root: Path) -> None:
        raise DatasetNotFoundError(
            f"{root} does not exist or is not a folder: a class-folder data set is your own images; "
            f"{self.how_to_get}"
        )
