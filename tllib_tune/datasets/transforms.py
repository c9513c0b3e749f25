"""Image transforms for fine-tuning, by name: TLlib's defaults, the paper's 448-px setting, small sizes.

``get_transforms(split, input_size=224, resizing="default")`` returns a torchvision ``Compose`` ending in
``ToTensor`` and ImageNet normalisation. The resize before a centre crop is ``resize_size``, by default
``round(input_size * 8 / 7)``: 224 -> 256 (TLlib), 448 -> 512 (the paper's Appendix D), 96 -> 110 (the
synthetic quick start). ``setting`` names a preset of both sizes:

============  ==========  ===========  ==========================================
setting       input_size  resize_size  use
============  ==========  ===========  ==========================================
"tllib"       224         256          TLlib's erm.py defaults
"paper448"    448         512          the Tune-mode paper's fine-grained runs
"small"       96          110          the synthetic set / CPU quick start
============  ==========  ===========  ==========================================

``resizing`` chooses the crop policy with TLlib's names: train "default" (RandomResizedCrop, scale
0.2-1), "cen.crop", "ran.crop", "res."; test "default" (Resize + CenterCrop) and "res.".
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from torchvision import transforms as T

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SETTINGS",
    "TRAIN_RESIZINGS",
    "TEST_RESIZINGS",
    "get_transforms",
    "get_train_transform",
    "get_test_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SETTINGS = {"tllib": (224, 256), "paper448": (448, 512), "small": (96, 110)}
TRAIN_RESIZINGS = ("default", "cen.crop", "ran.crop", "res.")
TEST_RESIZINGS = ("default", "res.")


def _sizes(input_size: int, resize_size: Optional[int], setting: Optional[str]) -> Tuple[int, int]:
    if setting is not None:
        if setting not in SETTINGS:
            raise ValueError(f"setting must be one of {list(SETTINGS)}, got {setting!r}")
        return SETTINGS[setting]
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 8:
        raise ValueError(f"input_size must be an integer >= 8 (pixels), got {input_size!r}")
    if resize_size is None:
        resize_size = round(input_size * 8 / 7)
    if isinstance(resize_size, bool) or not isinstance(resize_size, int) or resize_size < input_size:
        raise ValueError(f"resize_size must be an integer >= input_size ({input_size}), got {resize_size!r}")
    return input_size, resize_size


def _tail(normalize: bool, mean: Sequence[float], std: Sequence[float]) -> list:
    return [T.ToTensor()] + ([T.Normalize(mean, std)] if normalize else [])


def get_train_transform(
    input_size: int = 224,
    resizing: str = "default",
    resize_size: Optional[int] = None,
    hflip: bool = True,
    scale: Tuple[float, float] = (0.2, 1.0),
    setting: Optional[str] = None,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Training transform: crop policy ``resizing``, optional horizontal flip, ImageNet normalisation."""
    crop, resize = _sizes(input_size, resize_size, setting)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale!r}")
    if resizing == "default":
        ops = [T.RandomResizedCrop(crop, scale=tuple(scale))]
    elif resizing == "cen.crop":
        ops = [T.Resize((resize, resize)), T.CenterCrop(crop)]
    elif resizing == "ran.crop":
        ops = [T.Resize((resize, resize)), T.RandomCrop(crop)]
    elif resizing == "res.":
        ops = [T.Resize((crop, crop))]
    else:
        raise ValueError(f"train resizing must be one of {list(TRAIN_RESIZINGS)}, got {resizing!r}")
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops + _tail(normalize, mean, std))


def get_test_transform(
    input_size: int = 224,
    resizing: str = "default",
    resize_size: Optional[int] = None,
    setting: Optional[str] = None,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Evaluation transform: Resize(shorter side to resize_size) + CenterCrop(input_size), or "res."."""
    crop, resize = _sizes(input_size, resize_size, setting)
    if resizing == "default":
        ops = [T.Resize(resize), T.CenterCrop(crop)]
    elif resizing == "res.":
        ops = [T.Resize((crop, crop))]
    else:
        raise ValueError(f"test resizing must be one of {list(TEST_RESIZINGS)}, got {resizing!r}")
    return T.Compose(ops + _tail(normalize, mean, std))


def get_transforms(
    split: str,
    input_size: int = 224,
    resizing: str = "default",
    resize_size: Optional[int] = None,
    hflip: bool = True,
    setting: Optional[str] = None,
    normalize: bool = True,
    scale: Tuple[float, float] = (0.2, 1.0),
) -> T.Compose:
    """The transform for ``split`` ("train" or "test"); see the module docstring for names and sizes.

    ``hflip`` and ``scale`` (RandomResizedCrop's area range) only affect the train transform.
    """
    if split == "train":
        return get_train_transform(
            input_size, resizing, resize_size, hflip, scale=scale, setting=setting, normalize=normalize
        )
    if split == "test":
        return get_test_transform(input_size, resizing, resize_size, setting=setting, normalize=normalize)
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
