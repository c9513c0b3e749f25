"""Builders for tiny data-set trees in every supported layout (a few classes, a few small JPEGs each)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

IMAGE_W, IMAGE_H = 24, 44  # taller than the 20-px aircraft banner


def write_jpeg(
    path: Path, seed: int, size: Tuple[int, int] = (IMAGE_W, IMAGE_H), banner: bool = False
) -> None:
    """A small random JPEG; with ``banner`` the bottom 20 rows are pure white (like FGVC-Aircraft)."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
    if banner:
        pixels[h - 20 :] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue())


# ---------------------------------------------------------------------------------------------- CUB-200
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty Albatross"]


def make_cub(base: Path, per_class: int = 6, class_ids: Sequence[int] = (1, 2, 3)) -> Dict[str, list]:
    """Official CUB_200_2011 layout in ``base``; even image indices are train. Returns expected splits."""
    expected: Dict[str, list] = {"train": [], "test": []}
    images, labels, split = [], [], []
    image_id = 0
    for label, (cid, name) in enumerate(zip(class_ids, CUB_CLASSES)):
        for k in range(per_class):
            image_id += 1
            rel = f"{name}/{name.split('.')[1]}_{k:04d}_{image_id}.jpg"
            write_jpeg(base / "images" / rel, seed=image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
            is_train = int(k % 2 == 0)
            split.append(f"{image_id} {is_train}")
            expected["train" if is_train else "test"].append((str(base / "images" / rel), label))
    (base / "classes.txt").write_text("".join(f"{cid} {n}\n" for cid, n in zip(class_ids, CUB_CLASSES)))
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return expected


# -------------------------------------------------------------------------------------------- Aircraft
AIRCRAFT_VARIANTS = ["707-320", "A300B4", "F/A-18", "Cessna 172"]


def make_aircraft(data: Path, per_split: int = 3) -> Dict[str, list]:
    """fgvc-aircraft-2013b/data layout in ``data``: every variant appears in trainval and test."""
    (data / "variants.txt").parent.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("".join(v + "\n" for v in AIRCRAFT_VARIANTS))
    expected: Dict[str, list] = {"train": [], "test": []}
    next_id = 1000000
    for split, fname in (("train", "images_variant_trainval.txt"), ("test", "images_variant_test.txt")):
        lines = []
        for label, variant in enumerate(AIRCRAFT_VARIANTS):
            for _ in range(per_split):
                next_id += 1
                image_id = f"{next_id:07d}"
                write_jpeg(data / "images" / f"{image_id}.jpg", seed=next_id, banner=True)
                lines.append(f"{image_id} {variant}")
                expected[split].append((str(data / "images" / f"{image_id}.jpg"), label))
        (data / fname).write_text("\n".join(lines) + "\n")
    return expected


# -------------------------------------------------------------------------------------- Stanford Cars
CARS_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TTS Coupe 2012"]


def annotations(rows: List[dict]) -> np.ndarray:
    """A MATLAB struct array (what scipy.io.savemat writes for a structured numpy array)."""
    fields = list(rows[0])
    arr = np.zeros(len(rows), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            arr[i][f] = row[f]
    return arr


def make_cars_devkit(
    base: Path, per_class: int = 3, kaggle: bool = False, test_annos_in_devkit: bool = False
) -> Dict[str, list]:
    """torchvision's stanford_cars layout in ``base`` (or a Kaggle-style variant when ``kaggle``)."""
    import scipy.io

    devkit = base / ("car_devkit/devkit" if kaggle else "devkit")
    devkit.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(devkit / "cars_meta.mat"), {"class_names": np.array(CARS_CLASSES, dtype=object)})
    expected: Dict[str, list] = {"train": [], "test": []}
    n = 0
    for split in ("train", "test"):
        folder = base / f"cars_{split}" / (f"cars_{split}" if kaggle else "")
        rows = []
        for label in range(len(CARS_CLASSES)):
            for _ in range(per_class):
                n += 1
                fname = f"{n:05d}.jpg"
                write_jpeg(folder / fname, seed=5000 + n)
                rows.append(
                    {
                        "bbox_x1": 1,
                        "bbox_y1": 1,
                        "bbox_x2": 10,
                        "bbox_y2": 10,
                        "class": label + 1,
                        "fname": fname,
                    }
                )
                expected[split].append((str(folder / fname), label))
        if split == "train":
            target = devkit / "cars_train_annos.mat"
        else:
            target = (devkit if test_annos_in_devkit else base) / "cars_test_annos_withlabels.mat"
        scipy.io.savemat(str(target), {"annotations": annotations(rows)})
    return expected


def make_cars_annos(base: Path, per_class: int = 4) -> Dict[str, list]:
    """The all-in-one cars_annos.mat + car_ims/ layout; every other image is test."""
    import scipy.io

    rows = []
    expected: Dict[str, list] = {"train": [], "test": []}
    n = 0
    for label in range(len(CARS_CLASSES)):
        for k in range(per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            write_jpeg(base / rel, seed=7000 + n)
            test = k % 2
            rows.append({"relative_im_path": rel, "class": label + 1, "test": test})
            expected["test" if test else "train"].append((str(base / rel), label))
    scipy.io.savemat(
        str(base / "cars_annos.mat"),
        {"annotations": annotations(rows), "class_names": np.array(CARS_CLASSES, dtype=object)},
    )
    return expected


# ----------------------------------------------------------------------------------------- image lists
def make_image_list(
    root: Path, classes: int = 3, per_class: int = 8, subsets: Sequence[int] = ()
) -> Dict[str, list]:
    """TLlib layout: root/image_list/{train_100,test}.txt (+ train_{sr}.txt for ``subsets``)."""
    expected: Dict[str, list] = {"train": [], "test": []}
    lines: Dict[str, list] = {"train": [], "test": []}
    n = 0
    for split in ("train", "test"):
        for label in range(classes):
            for k in range(per_class):
                n += 1
                rel = f"{split}/cls{label}/img_{k}.jpg"
                write_jpeg(root / rel, seed=9000 + n)
                lines[split].append(f"{rel} {label}")
                expected[split].append((os.path.join(root, rel), label))
    (root / "image_list").mkdir(parents=True, exist_ok=True)
    (root / "image_list" / "train_100.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "image_list" / "test.txt").write_text("\n".join(lines["test"]) + "\n")
    for sr in subsets:  # a hand-made subset file: the first two images of every class
        keep = [
            line for line in lines["train"] if line.split("/")[2].split(" ")[0] in ("img_0.jpg", "img_1.jpg")
        ]
        (root / "image_list" / f"train_{sr}.txt").write_text("\n".join(keep) + "\n")
    return expected
