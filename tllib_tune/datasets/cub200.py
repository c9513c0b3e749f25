"""CUB-200-2011 birds: 200 classes, 5,994 train / 5,794 test images.

Reads the official archive's layout (``root/CUB_200_2011/`` or ``root`` itself holding ``images.txt``,
``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt`` and ``images/``) or TLlib's image
lists; ``download=True`` fetches the official archive from Caltech (MD5-checked, extracted atomically).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .base import (
    FineGrainedDataset,
    Layout,
    PathLike,
    Sample,
    parse_int,
    read_lines,
    safe_relpath,
    split_fields,
)
from .download import RESOURCES, download_and_extract
from .errors import MetadataError
from .imagelist import ImageListLayout

__all__ = ["CUB200", "CUBLayout", "CUB_FILES"]

CUB_DIR = "CUB_200_2011"
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _read_id_table(path: Path, fix: str) -> Dict[int, Tuple[int, str]]:
    """Read "id value" lines into {id: (line number, value)}; duplicate or non-integer ids are errors."""
    table: Dict[int, Tuple[int, str]] = {}
    for lineno, line in read_lines(path, what="CUB metadata file", fix=fix):
        id_token, value = split_fields(line, path, lineno, 2, "'id value'")
        image_id = parse_int(id_token, path, lineno, "id", minimum=1)
        if image_id in table:
            raise MetadataError(
                f"{path}, line {lineno}: id {image_id} appears twice (first on line {table[image_id][0]})"
            )
        table[image_id] = (lineno, value)
    return table


def _display_name(raw: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black_footed_Albatross' (the number is the class id)."""
    head, dot, tail = raw.partition(".")
    return tail if dot and head.isdigit() and tail else raw


class CUBLayout(Layout):
    """The official CUB_200_2011 folder (as unpacked from CUB_200_2011.tgz)."""

    name = "CUB_200_2011"

    def describe(self, root: Path) -> str:
        return f"{root / CUB_DIR}/ or {root}/ holding {', '.join(CUB_FILES)} and images/"

    def find(self, root: Path) -> Optional[Path]:
        if (root / CUB_DIR).is_dir():
            return root / CUB_DIR
        if any((root / name).is_file() for name in CUB_FILES):
            return root
        return None

    def read(self, base: Path, split: str, sample_rate: int) -> Tuple[List[Sample], List[str], bool]:
        fix = (
            f"The CUB_200_2011 folder {base} looks half-extracted: delete it and extract CUB_200_2011.tgz "
            "again (or pass download=True)."
        )
        classes_table = _read_id_table(base / "classes.txt", fix)
        images = _read_id_table(base / "images.txt", fix)
        labels = _read_id_table(base / "image_class_labels.txt", fix)
        is_train = _read_id_table(base / "train_test_split.txt", fix)

        class_ids = sorted(classes_table)
        index_of = {cid: i for i, cid in enumerate(class_ids)}
        names = [_display_name(classes_table[cid][1]) for cid in class_ids]

        for other_name, other in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
            only_images = sorted(set(images) - set(other))
            only_other = sorted(set(other) - set(images))
            if only_images or only_other:
                detail = (
                    f"ids {only_images[:5]} are in images.txt but not in {other_name}"
                    if only_images
                    else f"ids {only_other[:5]} are in {other_name} but not in images.txt"
                )
                raise MetadataError(f"{base / other_name} does not match {base / 'images.txt'}: {detail}")

        want = 1 if split == "train" else 0
        samples: List[Sample] = []
        for image_id in sorted(images):
            lineno, flag_token = is_train[image_id]
            flag = parse_int(flag_token, base / "train_test_split.txt", lineno, "is_train flag")
            if flag not in (0, 1):
                raise MetadataError(
                    f"{base / 'train_test_split.txt'}, line {lineno}: is_train must be 0 or 1, got {flag}"
                )
            lab_line, class_token = labels[image_id]
            class_id = parse_int(class_token, base / "image_class_labels.txt", lab_line, "class id")
            if class_id not in index_of:
                raise MetadataError(
                    f"{base / 'image_class_labels.txt'}, line {lab_line}: class id {class_id} is not in "
                    f"{base / 'classes.txt'}"
                )
            img_line, rel = images[image_id]
            safe_relpath(rel, base / "images.txt", img_line)
            if flag == want:
                samples.append((str(base / "images" / rel), index_of[class_id]))
        return samples, names, False


class CUB200(FineGrainedDataset):
    """CUB-200-2011 (official layout or TLlib image lists under ``root``)."""

    name = "cub200"
    title = "CUB-200-2011"
    layouts = (CUBLayout(), ImageListLayout())
    how_to_get = (
        "download CUB_200_2011.tgz (1.1 GB) from https://data.caltech.edu/records/65de6-vp158 and extract it "
        "under root, or pass download=True."
    )

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        sample_rate: int = 100,
        transform: Optional[Callable] = None,
        download: bool = False,
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
        )

    def download(self, root: Path) -> None:
        download_and_extract(RESOURCES["cub200"], root)
