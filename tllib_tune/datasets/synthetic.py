"""An offline fine-grained data set, generated procedurally and written in the CUB_200_2011 layout.

Why: the examples and tests need a data set that exists without any download, is small enough for a
CPU quick start, and is *fine-grained* like CUB/Cars/Aircraft: classes share coarse appearance and
differ in small details. Each class is a (body, mark) pair: the body shape and its colour family are
shared by a whole genus of classes, and the species is told apart only by a small mark drawn on the
body (dot, ring, bar, cross or triangle) whose colour is random per image. Every image has its own pose
(rotation, scale, position, mirroring), background (gradient and faint blobs), lighting, pixel noise
and, a third of the time, a distractor mark in the background.

Two disjoint sets of classes, chosen by ``variant``: "source" (the default: oval, diamond, capsule,
teardrop, hexagon and kite bodies with dot, ring, bar, cross and triangle marks) and "target" (pentagon,
star, trapezoid, arrow and cruciform bodies with square, plus, chevron, half-disc and double-bar marks,
genus colours in between the source's). A network pretrained on the source set has learnt what the
target needs (bodies, small marks, colour families under pose and clutter), but no target class is a
source class: the classifier head must be new. That is the transfer task of ``tllib_tune.paper``.

The tree is generated once under ``root/CUB_200_2011`` (atomically: temporary folder, then rename) with a
``synthetic.json`` marker of its parameters and read back by the CUB-200 reader. Same parameters and
seed, same bytes (each image draws from its own seeded generator).
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..progress import progress_bar as tqdm
from .base import PathLike, check_sample_rate, check_split
from .cub200 import CUB200, CUB_DIR
from .errors import DatasetError

__all__ = [
    "SyntheticFineGrained",
    "VARIANTS",
    "ensure_synthetic",
    "generate_synthetic",
    "synthetic_class_names",
    "MARKER",
]

MARKER = "synthetic.json"
VERSION = 1
BODIES = ("oval", "diamond", "capsule", "teardrop", "hexagon", "kite")
MARKS = ("dot", "ring", "bar", "cross", "triangle")
# Base hue of each genus; bodies of one genus vary around it, genera overlap a little.
_GENUS_HUE = (0.02, 0.12, 0.3, 0.55, 0.7, 0.85)
_JPEG_QUALITY = 90


class ClassSet(NamedTuple):
    """The genera (body shapes and their base hues) and species (marks) of one variant."""

    bodies: Tuple[str, ...]
    marks: Tuple[str, ...]
    hues: Tuple[float, ...]
    stream: Tuple[int, ...]  # appended to each image's seed: variants never share a random stream


#: "source": the original set (its images are byte-identical to earlier versions); "target": new bodies,
#: new marks and hues in between the source's, for transfer experiments.
VARIANTS: Dict[str, ClassSet] = {
    "source": ClassSet(BODIES, MARKS, _GENUS_HUE, ()),
    "target": ClassSet(
        ("pentagon", "star", "trapezoid", "arrow", "cruciform"),
        ("square", "plus", "chevron", "half_disc", "double_bar"),
        (0.07, 0.2, 0.42, 0.62, 0.78),
        (1,),
    ),
}


def _class_set(variant: str) -> ClassSet:
    if variant not in VARIANTS:
        raise ValueError(f"synthetic variant must be one of {list(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def synthetic_class_names(num_classes: int, variant: str = "source") -> List[str]:
    """The class names ("oval_dot", "oval_ring", ...; "pentagon_square", ...): genus-major, species-minor."""
    cs = _class_set(variant)
    return [f"{cs.bodies[c // len(cs.marks)]}_{cs.marks[c % len(cs.marks)]}" for c in range(num_classes)]


def _check_params(
    num_classes: int, images_per_class: int, image_size: int, variant: str = "source", mark_scale: float = 1.0
) -> None:
    cs = _class_set(variant)
    if not isinstance(mark_scale, (int, float)) or not 0.5 <= mark_scale <= 2.5:
        raise ValueError(f"synthetic mark_scale must be a number in 0.5..2.5, got {mark_scale!r}")
    limit = len(cs.bodies) * len(cs.marks)
    if not 2 <= num_classes <= limit:
        raise ValueError(
            f"synthetic num_classes must be in 2..{limit} (variant {variant!r}), got {num_classes}"
        )
    if images_per_class < 2:
        raise ValueError(
            f"synthetic images_per_class must be >= 2 (half train, half test), got {images_per_class}"
        )
    if not 32 <= image_size <= 512:
        raise ValueError(f"synthetic image_size must be in 32..512 pixels, got {image_size}")


def _rgb(h: float, s: float, v: float, alpha: int = 255) -> Tuple[int, int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255), alpha)


def _body_polygon(body: str, length: float, width: float) -> List[Tuple[float, float]]:
    """Outline of a body centred at the origin, pointing to +x (the 'head' end)."""
    hl, hw = length / 2, width / 2
    if body == "diamond":
        return [(hl, 0), (0, hw), (-hl, 0), (0, -hw)]
    if body == "hexagon":
        return [(hl, 0), (hl / 2, hw), (-hl / 2, hw), (-hl, 0), (-hl / 2, -hw), (hl / 2, -hw)]
    if body == "kite":
        return [(hl, 0), (hl * 0.2, hw), (-hl, 0), (hl * 0.2, -hw)]
    if body == "trapezoid":  # narrow head, wide tail
        return [(hl, hw * 0.45), (hl, -hw * 0.45), (-hl, -hw), (-hl, hw)]
    if body == "arrow":
        return [(hl, 0), (0, hw), (0, hw * 0.6), (-hl, hw * 0.6), (-hl, -hw * 0.6), (0, -hw * 0.6), (0, -hw)]
    if body == "cruciform":  # a plus-shaped body: long axis along x, short arms along y
        a, b = hw * 0.55, hl * 0.3
        return [(hl, a), (b, a), (b, hw), (-b, hw), (-b, a), (-hl, a), (-hl, -a), (-b, -a), (-b, -hw)] + [
            (b, -hw),
            (b, -a),
            (hl, -a),
        ]
    if body in ("pentagon", "star"):
        points = 5 if body == "pentagon" else 10
        radii = (1.0,) if body == "pentagon" else (1.0, 0.55)
        return [
            (
                hl * radii[k % len(radii)] * math.cos(2 * math.pi * k / points),
                hw * radii[k % len(radii)] * math.sin(2 * math.pi * k / points),
            )
            for k in range(points)
        ]
    if body == "teardrop":
        pts = []
        for k in range(24):
            t = 2 * math.pi * k / 24
            x = math.cos(t)
            y = math.sin(t) * (0.55 + 0.45 * (1 - x) / 2)  # fat tail, narrow head
            pts.append((hl * x, hw * y))
        return pts
    if body == "capsule":
        pts = []
        r = hw
        for k in range(13):
            t = -math.pi / 2 + math.pi * k / 12
            pts.append((hl - r + r * math.cos(t), r * math.sin(t)))
        for k in range(13):
            t = math.pi / 2 + math.pi * k / 12
            pts.append((-hl + r + r * math.cos(t), r * math.sin(t)))
        return pts
    # oval
    return [(hl * math.cos(2 * math.pi * k / 32), hw * math.sin(2 * math.pi * k / 32)) for k in range(32)]


def _draw_mark(draw: ImageDraw.ImageDraw, mark: str, cx: float, cy: float, r: float, fill) -> None:
    if mark == "dot":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif mark == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, round(r * 0.45)))
    elif mark == "bar":
        draw.rectangle((cx - r * 1.1, cy - r * 0.4, cx + r * 1.1, cy + r * 0.4), fill=fill)
    elif mark == "cross":
        w = max(2, round(r * 0.5))
        draw.line((cx - r, cy - r, cx + r, cy + r), fill=fill, width=w)
        draw.line((cx - r, cy + r, cx + r, cy - r), fill=fill, width=w)
    elif mark == "square":
        draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
    elif mark == "plus":
        w = max(2, round(r * 0.5))
        draw.line((cx - r, cy, cx + r, cy), fill=fill, width=w)
        draw.line((cx, cy - r, cx, cy + r), fill=fill, width=w)
    elif mark == "chevron":
        w = max(2, round(r * 0.45))
        draw.line((cx - r, cy - r, cx + r * 0.5, cy, cx - r, cy + r), fill=fill, width=w, joint="curve")
    elif mark == "half_disc":
        draw.pieslice((cx - r * 1.1, cy - r * 1.1, cx + r * 1.1, cy + r * 1.1), 90, 270, fill=fill)
    elif mark == "double_bar":
        for dy in (-0.55, 0.55):
            draw.rectangle(
                (cx - r * 1.1, cy + r * (dy - 0.25), cx + r * 1.1, cy + r * (dy + 0.25)), fill=fill
            )
    else:  # triangle
        draw.polygon(
            [(cx + r * 1.15, cy), (cx - r * 0.8, cy + r * 1.1), (cx - r * 0.8, cy - r * 1.1)], fill=fill
        )


def _render(
    label: int, index: int, seed: int, image_size: int, variant: str = "source", mark_scale: float = 1.0
) -> Image.Image:
    """One image of class ``label``; all randomness comes from a generator seeded by (seed, label, index)
    and the variant. ``mark_scale`` multiplies the species mark's size (not the random draws).
    The stages below draw from the generator in this order; keep it, or every image changes."""
    cs = _class_set(variant)
    rng = np.random.default_rng([seed, label, index, VERSION, *cs.stream])
    size = 2 * image_size  # draw at twice the size, then downsample: cheap anti-aliasing
    background = _background(rng, size)
    if rng.random() < 1 / 3:  # a distractor mark in the background, a third of the time
        _draw_distractor(rng, ImageDraw.Draw(background), cs, size)
    layer = _subject(rng, cs, label, size, mark_scale)
    return _photograph(rng, background, _posed(rng, layer, size), image_size)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A gradient between two random colours plus faint blobs (RGBA, ``size`` square)."""
    c0 = rng.uniform(40, 215, 3)
    c1 = rng.uniform(40, 215, 3)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size] / size
    t = np.clip((xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle) + 0.5, 0, 1)[..., None]
    background = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8), "RGB").convert("RGBA")
    blobs = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    bdraw = ImageDraw.Draw(blobs)
    for _ in range(int(rng.integers(2, 6))):
        x, y = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.05, 0.25, 2) * size
        col = tuple(int(v) for v in rng.uniform(0, 255, 3)) + (int(rng.integers(30, 90)),)
        bdraw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=col)
    return Image.alpha_composite(background, blobs)


def _draw_distractor(rng: np.random.Generator, draw: ImageDraw.ImageDraw, cs: ClassSet, size: int) -> None:
    """A mark of a random kind at a random place and colour."""
    dx, dy = rng.uniform(0.08, 0.92, 2) * size
    dcol = _rgb(rng.uniform(0, 1), rng.uniform(0.5, 1), rng.uniform(0.5, 1))
    distractor = cs.marks[int(rng.integers(len(cs.marks)))]
    _draw_mark(draw, distractor, dx, dy, size * rng.uniform(0.04, 0.06), dcol)


def _subject(rng: np.random.Generator, cs: ClassSet, label: int, size: int, mark_scale: float) -> Image.Image:
    """The class's subject, centred on a transparent layer: the genus's body shape and colour family, a
    darker head disc (the same for every class) and, behind it, the species mark (its shape is what
    matters; its colour is random)."""
    genus, species = divmod(label, len(cs.marks))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    length = size * rng.uniform(0.5, 0.62)
    width = length * rng.uniform(0.5, 0.62)
    hue = cs.hues[genus] + rng.uniform(-0.06, 0.06)
    body_col = _rgb(hue, rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.95))
    c = size / 2
    draw.polygon([(c + x, c + y) for x, y in _body_polygon(cs.bodies[genus], length, width)], fill=body_col)
    hr = width * 0.22
    head_col = _rgb(hue, 0.6, rng.uniform(0.15, 0.35))
    draw.ellipse((c + length * 0.32 - hr, c - hr, c + length * 0.32 + hr, c + hr), fill=head_col)
    mark_hue = hue + 0.5 + rng.uniform(-0.15, 0.15)
    mark_col = _rgb(mark_hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0) if rng.random() < 0.5 else 0.2)
    mx = c - length * rng.uniform(0.02, 0.12)
    my = c + width * rng.uniform(-0.08, 0.08)
    _draw_mark(draw, cs.marks[species], mx, my, size * rng.uniform(0.065, 0.08) * mark_scale, mark_col)
    return layer


def _posed(rng: np.random.Generator, layer: Image.Image, size: int) -> Tuple[Image.Image, int, int]:
    """The subject's layer mirrored (half the time), scaled and rotated, with where its top-left corner
    goes on the canvas (a random shift about the centre)."""
    if rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.75, 1.1)
    scaled = max(8, round(size * scale))
    layer = layer.resize((scaled, scaled), Image.Resampling.BILINEAR)
    layer = layer.rotate(rng.uniform(-40, 40), resample=Image.Resampling.BICUBIC)
    ox = round((size - scaled) / 2 + rng.uniform(-0.12, 0.12) * size)
    oy = round((size - scaled) / 2 + rng.uniform(-0.12, 0.12) * size)
    return layer, ox, oy


def _photograph(
    rng: np.random.Generator, background: Image.Image, posed: Tuple[Image.Image, int, int], image_size: int
) -> Image.Image:
    """The posed subject over the background, downsampled to ``image_size``, with random lighting and
    sensor noise (RGB)."""
    layer, ox, oy = posed
    canvas = background.copy()
    canvas.alpha_composite(layer, dest=(max(ox, 0), max(oy, 0)), source=(max(-ox, 0), max(-oy, 0)))
    image = canvas.convert("RGB").resize((image_size, image_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.8, 1.2)
    pixels += rng.normal(0.0, 6.0, pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _params(
    seed: int,
    num_classes: int,
    images_per_class: int,
    image_size: int,
    variant: str = "source",
    mark_scale: float = 1.0,
) -> Dict[str, object]:
    params: Dict[str, object] = {
        "generator": "tllib_tune.datasets.synthetic",
        "version": VERSION,
        "seed": seed,
        "num_classes": num_classes,
        "images_per_class": images_per_class,
        "image_size": image_size,
    }
    # options at their defaults stay out: the original set's marker is what it always was
    if variant != "source":
        params["variant"] = variant
    if mark_scale != 1.0:
        params["mark_scale"] = mark_scale
    return params


def generate_synthetic(
    dest: PathLike,
    seed: int = 0,
    num_classes: int = 20,
    images_per_class: int = 40,
    image_size: int = 96,
    progress: bool = True,
    variant: str = "source",
    mark_scale: float = 1.0,
) -> Path:
    """Write the set into the (new or empty) folder ``dest`` in the CUB_200_2011 layout; returns ``dest``.

    ``variant`` chooses the classes (see :data:`VARIANTS`); ``mark_scale`` enlarges (> 1) or shrinks the
    species marks, the detail that tells a genus's classes apart. Not atomic by itself:
    :func:`ensure_synthetic` calls it on a temporary folder and renames.
    """
    _check_params(num_classes, images_per_class, image_size, variant, mark_scale)
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    names = synthetic_class_names(num_classes, variant)
    folders = [f"{c + 1:03d}.{name}" for c, name in enumerate(names)]
    n_train = images_per_class // 2
    images, labels, split = [], [], []
    total = num_classes * images_per_class
    desc = f"generating synthetic {variant} set"
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for label, folder in enumerate(folders):
            (dest / "images" / folder).mkdir(exist_ok=True)
            for index in range(images_per_class):
                image_id = label * images_per_class + index + 1
                rel = f"{folder}/{names[label]}_{index + 1:04d}.jpg"
                image = _render(label, index, seed, image_size, variant, mark_scale)
                image.save(dest / "images" / rel, quality=_JPEG_QUALITY)
                images.append(f"{image_id} {rel}")
                labels.append(f"{image_id} {label + 1}")
                split.append(f"{image_id} {1 if index < n_train else 0}")
                bar.update(1)
    (dest / "classes.txt").write_text("".join(f"{c + 1} {f}\n" for c, f in enumerate(folders)))
    (dest / "images.txt").write_text("\n".join(images) + "\n")
    (dest / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (dest / "train_test_split.txt").write_text("\n".join(split) + "\n")
    params = _params(seed, num_classes, images_per_class, image_size, variant, mark_scale)
    (dest / MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    return dest


def _existing_params(base: Path) -> Optional[Dict[str, object]]:
    try:
        return json.loads((base / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_synthetic(
    root: PathLike,
    seed: int = 0,
    num_classes: int = 20,
    images_per_class: int = 40,
    image_size: int = 96,
    progress: bool = True,
    variant: str = "source",
    mark_scale: float = 1.0,
) -> Path:
    """Generate the set under ``root/CUB_200_2011`` unless it is already there; returns that folder.

    Generation goes to a temporary folder inside ``root`` that is renamed into place when complete, so
    an interrupted run leaves nothing behind. A folder made with other parameters (another variant
    included), or a real CUB-200 folder, is never overwritten: that is an error naming the folder. The
    source and target variants therefore live under different roots.
    """
    _check_params(num_classes, images_per_class, image_size, variant, mark_scale)
    root = Path(os.path.expanduser(str(root)))
    base = root / CUB_DIR
    wanted = _params(seed, num_classes, images_per_class, image_size, variant, mark_scale)

    if base.exists():
        return _check_existing(base, wanted)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=root))
    try:
        generate_synthetic(
            tmp / CUB_DIR,
            seed,
            num_classes,
            images_per_class,
            image_size,
            progress=progress,
            variant=variant,
            mark_scale=mark_scale,
        )
        try:
            os.rename(tmp / CUB_DIR, base)
        except OSError:
            if base.exists():  # another process finished first: accept its identical result
                return _check_existing(base, wanted)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base


def _check_existing(base: Path, wanted: Dict[str, object]) -> Path:
    """``base`` if it holds the synthetic set made with the parameters ``wanted``; else an error that says
    what is there (another set, or not a synthetic one at all) and what to do."""
    found = _existing_params(base)
    if found is None:
        raise DatasetError(
            f"{base} exists but is not a synthetic set made by tllib-tune (no valid {MARKER}); it may "
            "be the real CUB-200-2011. Use another root for the synthetic set."
        )
    if found != wanted:
        raise DatasetError(
            f"{base} holds a synthetic set made with {found}, not the requested {wanted}. Use another "
            "root or delete that folder."
        )
    return base


class SyntheticFineGrained(CUB200):
    """The generated fine-grained set (20 classes x 40 images of 96 px by default), read as CUB-200.

    ``variant="target"`` gives the other classes (see :data:`VARIANTS`), for transfer from "source"."""

    name = "synthetic"
    title = "synthetic fine-grained set"

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        sample_rate: int = 100,
        transform: Optional[Callable] = None,
        download: bool = False,
        seed: int = 0,
        num_classes: int = 20,
        images_per_class: int = 40,
        image_size: int = 96,
        check_files: bool = True,
        variant: str = "source",
        mark_scale: float = 1.0,
    ) -> None:
        # ``download`` is accepted for a uniform signature: the set is generated locally, never downloaded.
        check_split(split)
        check_sample_rate(sample_rate)
        ensure_synthetic(
            root,
            seed=seed,
            num_classes=num_classes,
            images_per_class=images_per_class,
            image_size=image_size,
            variant=variant,
            mark_scale=mark_scale,
        )
        super().__init__(
            root,
            split=split,
            sample_rate=sample_rate,
            transform=transform,
            download=False,
            layout="CUB_200_2011",
            check_files=check_files,
        )
        self.seed = seed
        self.variant = variant
