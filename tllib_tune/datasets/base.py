"""What every reader shares: the image data set class, layout detection, checked parsing, subsets.

A reader describes one or more *layouts* (where its metadata lives on disk and how to parse it);
:class:`FineGrainedDataset` finds the first layout present under ``root``, reads the requested split,
checks that every listed image exists, applies the seeded per-class ``sample_rate`` subset and then
serves ``(image, label)`` pairs. Parsing helpers report the file and line of anything malformed.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from PIL import Image
from torch.utils.data import Dataset

from .errors import (
    DATA_README,
    CorruptImageError,
    DatasetNotFoundError,
    MetadataError,
    MissingFileError,
)

__all__ = [
    "SAMPLE_RATES",
    "SPLITS",
    "Sample",
    "Layout",
    "ImageDataset",
    "FineGrainedDataset",
    "load_image",
    "read_lines",
    "parse_int",
    "check_sample_rate",
    "check_split",
    "stratified_subset",
    "check_images_exist",
]

SAMPLE_RATES = (100, 50, 30, 15)
SPLITS = ("train", "test")
SUBSET_SEED = 0

Sample = Tuple[str, int]
PathLike = Union[str, "os.PathLike[str]"]


# ----------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------
def check_sample_rate(sample_rate: Any) -> int:
    """Return ``sample_rate`` as an int if it is one of TLlib's rates, else raise a ValueError."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, str)):
        raise ValueError(
            f"sample_rate must be one of {list(SAMPLE_RATES)} (percent of train), got {sample_rate!r}"
        )
    try:
        value = float(sample_rate)
    except ValueError:
        value = float("nan")
    if value not in SAMPLE_RATES:
        raise ValueError(
            f"sample_rate must be one of {list(SAMPLE_RATES)} (percent of the training set, TLlib's "
            f"protocol), got {sample_rate!r}"
        )
    return int(value)


def check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


# ----------------------------------------------------------------------------------------------------------
# Reading metadata
# ----------------------------------------------------------------------------------------------------------
def read_lines(path: Path, what: str = "metadata file", fix: str = "") -> List[Tuple[int, str]]:
    """Return (1-based line number, stripped text) for every non-blank line of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        hint = f" {fix}" if fix else ""
        raise MissingFileError(f"{what} {path} is missing.{hint}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise MetadataError(
            f"{path}, line {line}: not valid UTF-8 text ({err.reason}); the file is corrupt, restore it "
            "from the original archive"
        ) from None
    except OSError as err:
        raise MissingFileError(f"cannot read {what} {path}: {err}") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise MetadataError(f"{path}, line {line}: contains NUL bytes; the file is corrupt, restore it")
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def parse_int(token: str, path: Path, lineno: int, what: str, minimum: Optional[int] = None) -> int:
    """Parse a decimal integer field, naming the file, line and field when it is not one."""
    try:
        value = int(token)
    except ValueError:
        raise MetadataError(f"{path}, line {lineno}: {what} must be an integer, got {token!r}") from None
    if minimum is not None and value < minimum:
        raise MetadataError(f"{path}, line {lineno}: {what} must be >= {minimum}, got {value}")
    return value


def split_fields(line: str, path: Path, lineno: int, count: int, layout: str) -> List[str]:
    """Split a whitespace-separated line into exactly ``count`` fields (the last keeps inner spaces)."""
    fields = line.split(maxsplit=count - 1)
    if len(fields) != count:
        raise MetadataError(
            f"{path}, line {lineno}: expected {count} fields ({layout}), got {len(fields)}: {line[:80]!r}"
        )
    return fields


def safe_relpath(rel: str, path: Path, lineno: int, unit: str = "line") -> str:
    """Reject image paths that are empty or climb out of the data set root ('..')."""
    parts = Path(rel).parts
    if not rel or ".." in parts:
        raise MetadataError(
            f"{path}, {unit} {lineno}: invalid image path {rel!r} (must stay inside the data set)"
        )
    return rel


# ----------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------
def load_image(path: PathLike, crop_bottom: int = 0) -> Image.Image:
    """Open an image as RGB, fully decoded; an unreadable file raises an error naming it.

    ``crop_bottom`` removes that many pixel rows at the bottom (FGVC-Aircraft's copyright banner).
    """
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")  # forces the full decode: truncated files fail here
    except FileNotFoundError:
        raise MissingFileError(
            f"image {path} is missing (it was listed in the metadata); re-extract the data set"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(
            f"cannot decode image {path}: {err}. The file is corrupt or truncated; restore it from the "
            "original archive (or re-download)"
        ) from None
    if crop_bottom:
        width, height = img.size
        if height <= crop_bottom:
            raise CorruptImageError(
                f"image {path} is {height} px high, too small to crop a {crop_bottom}-px banner; "
                "pass crop_banner=False if these images have no banner"
            )
        img = img.crop((0, 0, width, height - crop_bottom))
    return img


def check_images_exist(samples: Sequence[Sample], source: str) -> None:
    """Raise :class:`MissingFileError` listing the images that the metadata names but the disk lacks."""
    missing = [path for path, _ in samples if not os.path.isfile(path)]
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise MissingFileError(
            f"{len(missing)} of {len(samples)} images listed in {source} are missing, e.g.:\n"
            f"  {shown}{more}\n"
            "The data set looks half-extracted or moved: extract the archive again (or delete the folder and "
            "use download=True where supported)."
        )


# ----------------------------------------------------------------------------------------------------------
# Sample-rate subsets
# ----------------------------------------------------------------------------------------------------------
def _subset_key(path: str, root: Optional[Path]) -> str:
    if root is not None:
        try:
            return Path(os.path.relpath(path, root)).as_posix()
        except ValueError:  # different drive on Windows
            pass
    return Path(path).as_posix()


def stratified_subset(
    samples: Sequence[Sample], sample_rate: int, root: Optional[PathLike] = None, seed: int = SUBSET_SEED
) -> List[Sample]:
    """Keep ``sample_rate`` percent of every class, the same images on every machine.

    Within each class the images are ranked by SHA-256 of ``"{seed}:{path relative to root}"`` and the
    first ``round(n * rate / 100)`` (at least one) are kept. The ranking depends only on the relative
    paths, so the subset is identical across machines, Python versions and listing orders, and smaller
    rates are nested in larger ones (15 % is inside 30 % inside 50 %). The original order is preserved.
    """
    sample_rate = check_sample_rate(sample_rate)
    if sample_rate == 100:
        return list(samples)
    base = Path(root) if root is not None else None
    by_class: Dict[int, List[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    keep = set()
    for label in sorted(by_class):
        items = by_class[label]
        count = max(1, (len(items) * sample_rate + 50) // 100)
        keyed = []
        for path, _ in items:
            key = _subset_key(path, base)
            keyed.append((hashlib.sha256(f"{seed}:{key}".encode()).digest(), key, path))
        keyed.sort()
        keep.update(path for _, _, path in keyed[:count])
    return [s for s in samples if s[0] in keep]


# ----------------------------------------------------------------------------------------------------------
# Data set classes
# ----------------------------------------------------------------------------------------------------------
class ImageDataset(Dataset):
    """A list of (image path, 0-based label) served as (transformed image, label).

    Attributes: ``samples`` (list of (path, label)), ``classes`` (class names, index = label),
    ``num_classes``, ``targets``, ``root``, ``split``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        root: PathLike = ".",
        split: str = "train",
        transform: Optional[Callable] = None,
        crop_bottom: int = 0,
    ) -> None:
        self.samples: List[Sample] = [(str(p), int(y)) for p, y in samples]
        self.classes: List[str] = list(classes)
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.crop_bottom = crop_bottom
        bad = [y for _, y in self.samples if not 0 <= y < len(self.classes)]
        if bad:
            raise MetadataError(f"labels {sorted(set(bad))[:5]} out of range for {len(self.classes)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> List[int]:
        return [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        path, label = self.samples[index]
        image = load_image(path, crop_bottom=self.crop_bottom)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"samples={len(self)}, classes={self.num_classes})"
        )


class Layout:
    """One way a data set can sit on disk. Subclasses implement :meth:`find` and :meth:`read`."""

    name = "layout"

    def describe(self, root: Path) -> str:
        """A line for the "nothing found" message: what this layout looks for under ``root``."""
        raise NotImplementedError

    def find(self, root: Path) -> Optional[Path]:
        """The base folder of this layout under ``root`` if it is (even partly) there, else None."""
        raise NotImplementedError

    def read(self, base: Path, split: str, sample_rate: int) -> Tuple[List[Sample], List[str], bool]:
        """Return (samples, classes, already_subsampled) for ``split``; raise DatasetError if broken."""
        raise NotImplementedError


class FineGrainedDataset(ImageDataset):
    """A named data set read from whichever of its :attr:`layouts` is found under ``root``.

    Subclasses set ``name``, ``title``, ``layouts`` and ``how_to_get`` and may override :meth:`download`.
    """

    name = "dataset"
    title = "data set"
    layouts: Tuple[Layout, ...] = ()
    how_to_get = ""

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        sample_rate: int = 100,
        transform: Optional[Callable] = None,
        download: bool = False,
        layout: str = "auto",
        check_files: bool = True,
        crop_bottom: int = 0,
    ) -> None:
        split = check_split(split)
        sample_rate = check_sample_rate(sample_rate)
        root = Path(os.path.expanduser(str(root)))
        chosen = self._select_layouts(layout)
        found = self._find(root, chosen)
        if found is None and download:
            self.download(root)
            found = self._find(root, chosen)
        if found is None:
            raise DatasetNotFoundError(self._not_found_message(root, chosen))
        used, base = found
        samples, classes, subsampled = used.read(base, split, sample_rate)
        if not samples:
            raise MetadataError(f"{self.title} at {base} ({used.name} layout) lists no {split} images")
        if split == "train" and not subsampled:
            samples = stratified_subset(samples, sample_rate, root=base)
        if check_files:
            check_images_exist(samples, f"the {split} split of {base} ({used.name} layout)")
        super().__init__(
            samples, classes, root=base, split=split, transform=transform, crop_bottom=crop_bottom
        )
        self.layout = used.name
        self.sample_rate = sample_rate if split == "train" else 100

    # -- hooks -------------------------------------------------------------------------------------------
    def download(self, root: Path) -> None:
        raise DatasetNotFoundError(
            f"{self.title} cannot be downloaded automatically. {self.how_to_get} See {DATA_README}."
        )

    # -- helpers -----------------------------------------------------------------------------------------
    @classmethod
    def _select_layouts(cls, layout: str) -> Tuple[Layout, ...]:
        if layout == "auto":
            return cls.layouts
        names = [lay.name for lay in cls.layouts]
        if layout not in names:
            raise ValueError(f"layout must be 'auto' or one of {names} for {cls.title}, got {layout!r}")
        return tuple(lay for lay in cls.layouts if lay.name == layout)

    @staticmethod
    def _find(root: Path, layouts: Iterable[Layout]) -> Optional[Tuple[Layout, Path]]:
        if not root.is_dir():
            return None
        for lay in layouts:
            base = lay.find(root)
            if base is not None:
                return lay, base
        return None

    def _not_found_message(self, root: Path, layouts: Iterable[Layout]) -> str:
        if not root.exists():
            where = f"The root folder {root} does not exist."
        elif not root.is_dir():
            where = f"The root {root} is not a folder."
        else:
            where = f"No {self.title} layout was found under {root}."
        looked = "\n".join(f"  - {lay.name}: {lay.describe(root)}" for lay in layouts)
        return f"{where}\nLooked for:\n{looked}\nHow to get it: {self.how_to_get} Details: {DATA_README}."
