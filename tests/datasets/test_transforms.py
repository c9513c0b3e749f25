"""Transforms by name/size, checked against torchvision.transforms.functional applied by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image

from tllib_tune.datasets import get_transforms
from tllib_tune.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD


def image(w=300, h=260, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def reference_test(img, resize, crop):
    x = F.to_tensor(F.center_crop(F.resize(img, resize), [crop, crop]))
    return F.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize(
    "kwargs, resize, crop",
    [
        (dict(), 256, 224),
        (dict(setting="tllib"), 256, 224),
        (dict(setting="paper448"), 512, 448),
        (dict(input_size=448), 512, 448),
        (dict(input_size=96), 110, 96),
        (dict(setting="small"), 110, 96),
        (dict(input_size=64, resize_size=80), 80, 64),
    ],
)
def test_test_transform_matches_resize_centercrop(kwargs, resize, crop):
    img = image()
    out = get_transforms("test", **kwargs)(img)
    torch.testing.assert_close(out, reference_test(img, resize, crop), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, size", [(dict(), 224), (dict(setting="paper448"), 448), (dict(input_size=96), 96)]
)
def test_train_transform_shape_and_normalisation(kwargs, size):
    torch.manual_seed(0)
    out = get_transforms("train", **kwargs)(image())
    assert out.shape == (3, size, size)
    # Normalised: a constant grey image maps to (0.5 - mean) / std in every channel.
    grey = get_transforms("train", **kwargs)(Image.new("RGB", (50, 40), (128, 128, 128)))
    want = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(grey.mean((1, 2)), want, rtol=0, atol=1e-5)


def test_train_default_is_random_resized_crop_with_flip():
    t = get_transforms("train")
    names = [type(op).__name__ for op in t.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert t.transforms[0].scale == (0.2, 1.0)
    assert [type(op).__name__ for op in get_transforms("train", hflip=False).transforms][1] == "ToTensor"
    assert get_transforms("train", scale=(0.5, 1.0)).transforms[0].scale == (0.5, 1.0)


def test_tllib_resizing_names():
    img = image()
    torch.manual_seed(0)
    cen = get_transforms("train", resizing="cen.crop", hflip=False)(img)
    ref = F.normalize(
        F.to_tensor(F.center_crop(F.resize(img, [256, 256]), [224, 224])), IMAGENET_MEAN, IMAGENET_STD
    )
    torch.testing.assert_close(cen, ref, rtol=0, atol=0)
    assert get_transforms("train", resizing="ran.crop")(img).shape == (3, 224, 224)
    assert get_transforms("test", resizing="res.", input_size=96)(img).shape == (3, 96, 96)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="val"), "split must be 'train' or 'test'"),
        (dict(split="train", resizing="bogus"), "train resizing must be one of"),
        (dict(split="test", resizing="cen.crop"), "test resizing must be one of"),
        (dict(split="test", setting="paper"), "setting must be one of"),
        (dict(split="test", input_size=0), "input_size must be an integer"),
        (dict(split="test", input_size=224, resize_size=200), "resize_size must be an integer >= input_size"),
        (dict(split="train", scale=(0.0, 1.0)), "scale must be"),
    ],
)
def test_invalid_names_and_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_transforms(**kwargs)
