"""FGVC-Aircraft 2013b at the variant level: 100 classes, 6,667 train (= trainval) / 3,333 test images.

Reads the layout torchvision.datasets.FGVCAircraft expects (``root/fgvc-aircraft-2013b/data/`` with
``variants.txt``, ``images_variant_{trainval,test}.txt`` and ``images/<id>.jpg``; ``root`` may also be the
``fgvc-aircraft-2013b`` or ``data`` folder itself) or TLlib's image lists. Our "train" split is the
official trainval. Every image carries a 20-pixel copyright banner at the bottom, cropped by default
(``crop_banner=True``). ``download=True`` fetches the official archive from Oxford VGG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .base import FineGrainedDataset, Layout, PathLike, Sample, read_lines
from .download import RESOURCES, download_and_extract
from .errors import MetadataError
from .imagelist import ImageListLayout

__all__ = ["Aircraft", "AircraftLayout", "BANNER_PX"]

AIRCRAFT_DIR = "fgvc-aircraft-2013b"
BANNER_PX = 20
_SPLIT_FILE = {"train": "images_variant_trainval.txt", "test": "images_variant_test.txt"}


class AircraftLayout(Layout):
    """The official fgvc-aircraft-2013b folder (torchvision's FGVCAircraft layout, variant level)."""

    name = "fgvc-aircraft-2013b"

    def describe(self, root: Path) -> str:
        return (
            f"{root / AIRCRAFT_DIR / 'data'}/ (or {root}/data/, {root}/) holding variants.txt, "
            "images_variant_trainval.txt, images_variant_test.txt and images/"
        )

    def find(self, root: Path) -> Optional[Path]:
        if (root / AIRCRAFT_DIR).is_dir():
            return root / AIRCRAFT_DIR / "data"
        markers = ("variants.txt", *_SPLIT_FILE.values())
        for base in (root / "data", root):
            if any((base / name).is_file() for name in markers):
                return base
        return None

    def read(self, base: Path, split: str, sample_rate: int) -> Tuple[List[Sample], List[str], bool]:
        fix = (
            f"The FGVC-Aircraft folder {base} looks half-extracted: delete it and extract "
            "fgvc-aircraft-2013b.tar.gz again (or pass download=True)."
        )
        variants_file = base / "variants.txt"
        classes: List[str] = []
        index_of: Dict[str, int] = {}
        for lineno, name in read_lines(variants_file, what="FGVC-Aircraft class list", fix=fix):
            if name in index_of:
                raise MetadataError(f"{variants_file}, line {lineno}: variant {name!r} is listed twice")
            index_of[name] = len(classes)
            classes.append(name)

        split_file = base / _SPLIT_FILE[split]
        samples: List[Sample] = []
        seen: Dict[str, int] = {}
        for lineno, line in read_lines(split_file, what="FGVC-Aircraft split file", fix=fix):
            image_id, _, variant = line.partition(" ")
            variant = variant.strip()
            if not variant:
                raise MetadataError(
                    f"{split_file}, line {lineno}: expected 'image_id variant name', got {line[:80]!r}"
                )
            if not image_id.isalnum():
                raise MetadataError(
                    f"{split_file}, line {lineno}: image id must be alphanumeric, got {image_id!r}"
                )
            if variant not in index_of:
                raise MetadataError(
                    f"{split_file}, line {lineno}: variant {variant!r} is not in {variants_file}"
                )
            if image_id in seen:
                raise MetadataError(
                    f"{split_file}, line {lineno}: image {image_id} listed twice (line {seen[image_id]})"
                )
            seen[image_id] = lineno
            samples.append((str(base / "images" / f"{image_id}.jpg"), index_of[variant]))
        if not samples:
            raise MetadataError(f"{split_file} lists no images; restore it from the original archive")
        return samples, classes, False


class Aircraft(FineGrainedDataset):
    """FGVC-Aircraft (official layout or TLlib image lists), banner cropped unless ``crop_banner=False``."""

    name = "aircraft"
    title = "FGVC-Aircraft"
    layouts = (AircraftLayout(), ImageListLayout())
    how_to_get = (
        "download fgvc-aircraft-2013b.tar.gz (2.7 GB) from "
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ and extract it under root, "
        "or pass download=True."
    )

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        sample_rate: int = 100,
        transform: Optional[Callable] = None,
        download: bool = False,
        crop_banner: bool = True,
        layout: str = "auto",
        check_files: bool = True,
    ) -> None:
        super().__init__(
            root,
            split=split,
            sample_rate=sample_rate,
            transform=transform,
            download=download,
            layout=layout,
            check_files=check_files,
            crop_bottom=BANNER_PX if crop_banner else 0,
        )
        self.crop_banner = crop_banner

    def download(self, root: Path) -> None:
        download_and_extract(RESOURCES["aircraft"], root)
