"""Stanford Cars: 196 classes, 8,144 train / 8,041 test images.

Reads, under ``root`` or ``root/stanford_cars``:

- the devkit layout torchvision.datasets.StanfordCars expects and most mirrors ship: ``devkit/``
  (or ``car_devkit/devkit/``) with ``cars_meta.mat`` and ``cars_train_annos.mat``,
  ``cars_test_annos_withlabels.mat`` (beside ``devkit/`` or inside it), ``cars_train/`` and ``cars_test/``
  (a doubled ``cars_train/cars_train/`` as unzipped from Kaggle is accepted too);
- the all-in-one layout ``cars_annos.mat`` + ``car_ims/``;
- TLlib's image lists.

The .mat files are read with scipy. The original Stanford host is gone, so there is no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import FineGrainedDataset, Layout, PathLike, Sample, safe_relpath
from .errors import DATA_README, DatasetNotFoundError, MetadataError, MissingFileError
from .imagelist import ImageListLayout

__all__ = ["StanfordCars", "CarsDevkitLayout", "CarsAnnosLayout", "NO_DOWNLOAD_MESSAGE", "ALTERNATIVES"]

NO_OFFICIAL_SOURCE = (
    "Stanford Cars has no official download any more: the original Stanford host is gone "
    "(see https://github.com/pytorch/vision/issues/7545)."
)
ALTERNATIVES = (
    "Known alternatives: (1) a Kaggle mirror, e.g. "
    "https://www.kaggle.com/datasets/jessicali9530/stanford-cars-dataset "
    "(needs a Kaggle account; unzip it under root; the test labels are in cars_test_annos_withlabels.mat, "
    "which some mirrors include and others do not); (2) TLlib's prepared copy (image_list/, train/, test/, "
    "linked from TLlib's tllib/vision/datasets/stanford_cars.py); (3) a copy your lab already has."
)
NO_DOWNLOAD_MESSAGE = f"{NO_OFFICIAL_SOURCE} download=True cannot fetch it. {ALTERNATIVES}"


def _load_mat(path: Path, what: str, fix: str) -> Dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"{what} {path} is missing. {fix}")
    try:
        import scipy.io
    except ImportError:  # pragma: no cover - scipy is a dependency
        raise ImportError("reading Stanford Cars' .mat files needs scipy: pip install scipy") from None
    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as err:  # scipy raises many types on damaged files
        raise MetadataError(
            f"cannot read {path}: {type(err).__name__}: {err}. The file is corrupt; {fix}"
        ) from None


def _variable(mat: Dict[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise MetadataError(f"{path} has no {key!r} variable (it holds {found}); it is not the expected file")
    return np.atleast_1d(mat[key])


def _records(mat: Dict[str, Any], path: Path, fields: Sequence[str]) -> np.ndarray:
    records = _variable(mat, "annotations", path)
    names = records.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise MetadataError(f"{path}: 'annotations' lacks the field(s) {missing} (it has {list(names)})")
    return records


def _as_int(value: Any, path: Path, index: int, field: str) -> int:
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "iuf" or not np.isfinite(arr) or float(arr) != int(arr):
        raise MetadataError(f"{path}, annotation {index + 1}: {field} must be an integer, got {value!r}")
    return int(arr)


def _as_text(value: Any, path: Path, index: int, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MetadataError(
            f"{path}, annotation {index + 1}: {field} must be a non-empty string, got {value!r}"
        )
    return value.strip()


def _class_names(mat: Dict[str, Any], path: Path) -> List[str]:
    raw = _variable(mat, "class_names", path)
    names = [_as_text(v, path, i, "class name") for i, v in enumerate(raw.tolist())]
    if not names:
        raise MetadataError(f"{path}: 'class_names' is empty")
    return names


def _label(class_id: int, num_classes: int, path: Path, index: int) -> int:
    if not 1 <= class_id <= num_classes:
        raise MetadataError(
            f"{path}, annotation {index + 1}: class {class_id} is outside 1..{num_classes} (the class list)"
        )
    return class_id - 1


def _first_dir(*candidates: Path) -> Optional[Path]:
    return next((p for p in candidates if p.is_dir()), None)


def _first_file(*candidates: Path) -> Optional[Path]:
    return next((p for p in candidates if p.is_file()), None)


class CarsDevkitLayout(Layout):
    """devkit/*.mat + cars_test_annos_withlabels.mat + cars_train/ + cars_test/ (torchvision, mirrors)."""

    name = "devkit"

    def describe(self, root: Path) -> str:
        return (
            f"{root}/ or {root / 'stanford_cars'}/ holding devkit/cars_meta.mat, "
            "devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, cars_train/ and cars_test/"
        )

    def find(self, root: Path) -> Optional[Path]:
        for base in (root / "stanford_cars", root):
            if (
                any((base / d).is_dir() for d in ("devkit", "car_devkit", "cars_train", "cars_test"))
                or (base / "cars_test_annos_withlabels.mat").is_file()
            ):
                return base
        return None

    def read(self, base: Path, split: str, sample_rate: int) -> Tuple[List[Sample], List[str], bool]:
        fix = f"The Stanford Cars folder {base} is incomplete: copy it again from your source. {ALTERNATIVES}"
        devkit = _first_dir(base / "devkit", base / "car_devkit" / "devkit")
        if devkit is None:
            raise MissingFileError(
                f"{base} has no devkit/ folder (cars_meta.mat, cars_train_annos.mat); it ships as "
                f"car_devkit.tgz with every mirror. See {DATA_README}."
            )
        meta_path = devkit / "cars_meta.mat"
        classes = _class_names(_load_mat(meta_path, "Stanford Cars class list", fix), meta_path)
        if split == "train":
            annos_path = devkit / "cars_train_annos.mat"
            images = _first_dir(base / "cars_train" / "cars_train", base / "cars_train")
            folder = "cars_train"
        else:
            found = _first_file(
                base / "cars_test_annos_withlabels.mat", devkit / "cars_test_annos_withlabels.mat"
            )
            if found is None:
                raise MissingFileError(
                    f"{base / 'cars_test_annos_withlabels.mat'} is missing: the test labels are not in the "
                    "devkit (its cars_test_annos.mat has no classes) but in this separate file. "
                    f"{ALTERNATIVES}"
                )
            annos_path = found
            images = _first_dir(base / "cars_test" / "cars_test", base / "cars_test")
            folder = "cars_test"
        if images is None:
            raise MissingFileError(f"image folder {base / folder} is missing. {fix}")
        records = _records(
            _load_mat(annos_path, "Stanford Cars annotations", fix), annos_path, ("fname", "class")
        )
        samples: List[Sample] = []
        seen = set()
        for i, rec in enumerate(records):
            fname = _as_text(rec["fname"], annos_path, i, "fname")
            safe_relpath(fname, annos_path, i + 1, unit="annotation")
            if fname in seen:
                raise MetadataError(f"{annos_path}, annotation {i + 1}: {fname!r} is listed twice")
            seen.add(fname)
            label = _label(_as_int(rec["class"], annos_path, i, "class"), len(classes), annos_path, i)
            samples.append((str(images / fname), label))
        return samples, classes, False


class CarsAnnosLayout(Layout):
    """cars_annos.mat (fields relative_im_path, class, test) + car_ims/ (the original all-in-one files)."""

    name = "cars_annos"

    def describe(self, root: Path) -> str:
        return f"{root}/ or {root / 'stanford_cars'}/ holding cars_annos.mat and car_ims/"

    def find(self, root: Path) -> Optional[Path]:
        for base in (root / "stanford_cars", root):
            if (base / "cars_annos.mat").is_file():
                return base
        return None

    def read(self, base: Path, split: str, sample_rate: int) -> Tuple[List[Sample], List[str], bool]:
        path = base / "cars_annos.mat"
        mat = _load_mat(path, "Stanford Cars annotations", "Restore it from the original archive.")
        classes = _class_names(mat, path)
        records = _records(mat, path, ("relative_im_path", "class", "test"))
        want = 0 if split == "train" else 1
        samples: List[Sample] = []
        seen = set()
        for i, rec in enumerate(records):
            rel = _as_text(rec["relative_im_path"], path, i, "relative_im_path")
            safe_relpath(rel, path, i + 1, unit="annotation")
            if rel in seen:
                raise MetadataError(f"{path}, annotation {i + 1}: {rel!r} is listed twice")
            seen.add(rel)
            label = _label(_as_int(rec["class"], path, i, "class"), len(classes), path, i)
            test = _as_int(rec["test"], path, i, "test")
            if test not in (0, 1):
                raise MetadataError(f"{path}, annotation {i + 1}: test must be 0 or 1, got {test}")
            if test == want:
                samples.append((str(base / rel), label))
        return samples, classes, False


class StanfordCars(FineGrainedDataset):
    """Stanford Cars (devkit layout, cars_annos.mat layout or TLlib image lists)."""

    name = "stanford_cars"
    title = "Stanford Cars"
    layouts = (CarsDevkitLayout(), CarsAnnosLayout(), ImageListLayout())
    how_to_get = f"{NO_OFFICIAL_SOURCE} {ALTERNATIVES} Put the files under root as described above."

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
        raise DatasetNotFoundError(
            f"No Stanford Cars data under {root}. {NO_DOWNLOAD_MESSAGE} Put the files under {root} and "
            f"call again without download=True. See {DATA_README}."
        )
