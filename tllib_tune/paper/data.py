"""The reproduction's data: the synthetic source and target sets and their deterministic loaders.

Each set is generated once under ``data_dir/synthetic-<variant>-<checksum of its parameters>``, so that
the default and the ``--fast`` sets (or any other settings) never collide. Training batches come from
:class:`~tllib_tune.utils.data.EpochBatchSampler` and :class:`~tllib_tune.utils.data.SeededDataset`: the
order and the augmentation of every step depend only on the seed, identically in every mode, so two
modes fed the same seed see exactly the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

from torch.utils.data import DataLoader

from ..datasets import ensure_synthetic, get_dataset, get_test_transform, get_train_transform
from ..utils.data import EpochBatchSampler, SeededDataset
from .settings import Settings, settings_checksum

__all__ = ["synthetic_root", "load_sets", "train_loader", "eval_loader"]


def synthetic_root(data_dir: Path, params: Dict[str, Any]) -> Path:
    """The folder of the synthetic set with these parameters (named by their checksum)."""
    return Path(data_dir) / f"synthetic-{params['variant']}-{settings_checksum(params, 10)}"


def load_sets(settings: Settings, data_dir: Path, variant: str, progress: bool = False) -> Dict[str, Any]:
    """``{"train", "train_plain", "test", "num_classes", "root"}`` of the source or target set,
    generating it on first use. ``train_plain`` is the training split with the test transform."""
    params = settings.dataset_params(variant)
    root = synthetic_root(data_dir, params)
    ensure_synthetic(root, progress=progress, **params)  # the readers below would generate it silently
    train_tf = get_train_transform(settings.input_size, scale=settings.crop_scale)
    test_tf = get_test_transform(settings.input_size)
    train = get_dataset("synthetic", root, split="train", transform=train_tf, **params)
    return {
        "train": train,
        "train_plain": get_dataset("synthetic", root, split="train", transform=test_tf, **params),
        "test": get_dataset("synthetic", root, split="test", transform=test_tf, **params),
        "num_classes": train.num_classes,
        "root": root,
    }


def train_loader(dataset: Any, batch_size: int, iters_per_epoch: int, seed: int) -> Tuple[DataLoader, Any]:
    """(loader, sampler): call ``sampler.set_epoch(epoch)`` before each epoch's pass over the loader."""
    sampler = EpochBatchSampler(len(dataset), batch_size, iters_per_epoch, seed=seed)
    return DataLoader(SeededDataset(dataset), batch_sampler=sampler, num_workers=0), sampler


def eval_loader(dataset: Any, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
