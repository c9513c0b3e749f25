"""Fine-grained data sets by name: ``get_dataset("cub200"|"aircraft"|"stanford_cars"|"synthetic", root)``,
and users' own images: ``get_dataset("imagefolder", root)`` (class folders) or ``"imagelist"`` (TLlib's
image lists).

Each data set is a torch ``Dataset`` of ``(image, label)`` with ``classes``, ``num_classes`` and ``samples``
(list of (path, 0-based label)); the on-disk layout is detected under ``root``. Problems on disk raise a
:class:`DatasetError` subclass whose message names the file and the fix.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Type

from ..common import suggest
from .aircraft import Aircraft
from .base import SAMPLE_RATES, FineGrainedDataset, ImageDataset, PathLike, load_image, stratified_subset
from .cub200 import CUB200
from .download import RESOURCES, download_and_extract, download_url, extract_archive
from .errors import (
    ChecksumError,
    CorruptImageError,
    DatasetError,
    DatasetNotFoundError,
    DownloadError,
    ExtractionError,
    MetadataError,
    MissingFileError,
    MissingSplitError,
)
from .imagefolder import ClassFolders
from .imagelist import ImageList
from .stanford_cars import StanfordCars
from .synthetic import SyntheticFineGrained, ensure_synthetic, generate_synthetic
from .transforms import get_test_transform, get_train_transform, get_transforms

__all__ = [
    "get_dataset",
    "list_datasets",
    "DATASETS",
    "ALIASES",
    "SAMPLE_RATES",
    "CUB200",
    "Aircraft",
    "StanfordCars",
    "ImageList",
    "ClassFolders",
    "SyntheticFineGrained",
    "ImageDataset",
    "FineGrainedDataset",
    "get_transforms",
    "get_train_transform",
    "get_test_transform",
    "load_image",
    "stratified_subset",
    "ensure_synthetic",
    "generate_synthetic",
    "RESOURCES",
    "download_url",
    "extract_archive",
    "download_and_extract",
    "DatasetError",
    "DatasetNotFoundError",
    "MissingSplitError",
    "MissingFileError",
    "MetadataError",
    "CorruptImageError",
    "DownloadError",
    "ChecksumError",
    "ExtractionError",
]

DATASETS: Dict[str, Type[FineGrainedDataset]] = {
    "cub200": CUB200,
    "aircraft": Aircraft,
    "stanford_cars": StanfordCars,
    "synthetic": SyntheticFineGrained,
    "imagelist": ImageList,
    "imagefolder": ClassFolders,
}
ALIASES = {"cars": "stanford_cars", "cub": "cub200", "fgvc_aircraft": "aircraft"}


def list_datasets() -> List[str]:
    """The names :func:`get_dataset` accepts (aliases not included)."""
    return list(DATASETS)


def _resolve(name: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, one of {list_datasets()}, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        hint = suggest(key, list(DATASETS) + list(ALIASES), n=1)
        raise ValueError(f"unknown dataset {name!r}; {hint} (known: {list_datasets()}, aliases: {ALIASES})")
    return key


def get_dataset(
    name: str,
    root: PathLike,
    split: str = "train",
    sample_rate: int = 100,
    transform: Optional[Callable] = None,
    download: bool = False,
    **kwargs: Any,
) -> FineGrainedDataset:
    """Build a data set by name.

    Args:
        name: "cub200", "aircraft", "stanford_cars" (alias "cars"), "synthetic", "imagelist" or
            "imagefolder".
        root: folder holding the data set (see data/README.md for the layouts detected).
        split: "train" or "test" ("imagefolder": its test/ or val/ folder).
        sample_rate: percent of the training set kept per class, one of 100, 50, 30, 15 (TLlib's
            protocol; the subset is seeded and identical on every machine). Ignored for "test".
        transform: applied to each PIL image (see :func:`get_transforms`).
        download: fetch the official archive when the data set is absent (CUB-200, Aircraft).
        **kwargs: reader options, e.g. ``crop_banner=False`` (aircraft), ``layout="image_list"``,
            ``seed`` / ``num_classes`` / ``images_per_class`` / ``image_size`` (synthetic).
    """
    cls = DATASETS[_resolve(name)]
    return cls(root, split=split, sample_rate=sample_rate, transform=transform, download=download, **kwargs)
