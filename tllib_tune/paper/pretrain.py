"""The source-pretrained backbone: trained once in train mode on the synthetic source set, then cached.

The stand-in for ImageNet weights. :func:`pretrained_backbone` returns the backbone's state_dict, from
``data_dir/pretrained/<arch>-source-<checksum>.pt`` when that file holds the same settings, otherwise by
pretraining (seeded data order, augmentation and initialisation) and writing the file atomically, with
a JSON sidecar of the settings and the source accuracy beside it. The checksum covers every setting
that shapes the weights (:meth:`Settings.pretrain_identity`), so changing one pretrains anew; a missing,
torn or foreign file is regenerated.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..common import atomic_write
from ..utils.logger import write_json_atomic
from .data import load_sets
from .progress import Progress
from .settings import Settings, settings_checksum
from .transfer import build_classifier, fit, test_accuracy

__all__ = ["cache_path", "pretrained_backbone", "pretrain", "load_cached"]

State = Dict[str, Tensor]


def cache_path(settings: Settings, data_dir: Path) -> Path:
    """Where the backbone pretrained with ``settings`` is cached (named by the settings' checksum)."""
    key = settings_checksum(settings.pretrain_identity())
    return Path(data_dir) / "pretrained" / f"{settings.arch}-source-{key}.pt"


def load_cached(path: Path, identity: Dict[str, Any]) -> Optional[Tuple[State, Dict[str, Any]]]:
    """(state_dict, info) from ``path`` if it is a cache file made with ``identity``, else None."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torn, truncated or not a torch file: regenerate it
        return None
    if not isinstance(blob, dict) or blob.get("identity") != identity:
        return None
    return blob["state_dict"], blob["info"]


def pretrain(settings: Settings, data_dir: Path, progress: Progress) -> Tuple[State, Dict[str, Any]]:
    """Train ``settings.arch`` from random weights on the source set; (backbone state_dict, info)."""
    start = time.perf_counter()
    sets = load_sets(settings, data_dir, "source", progress=progress.tty)
    model = build_classifier(
        settings.arch, sets["num_classes"], backbone_state=None, seed=settings.pretrain_seed
    )
    recipe = settings.for_pretraining()
    total = recipe.epochs * recipe.iters_per_epoch
    with progress.phase(f"pretraining {settings.arch} on the source set (train mode)", total) as step:
        fitted = fit(model, sets["train"], recipe, settings.pretrain_seed, step=step)
    if fitted["diverged"]:
        raise RuntimeError(f"pretraining diverged ({fitted['diverged']}); lower the pretraining lr")
    info = {
        "source_classes": sets["num_classes"],
        "source_train_images": len(sets["train"]),
        "source_train_loss": fitted["train_loss"],
        "source_train_acc1": fitted["train_acc1"],
        "source_test_acc1": test_accuracy(model, sets["test"], 4 * settings.batch_size),
        "seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    return model.backbone.state_dict(), info


def pretrained_backbone(
    settings: Settings, data_dir: Path, progress: Progress
) -> Tuple[State, Dict[str, Any], Path]:
    """(backbone state_dict, info, cache file): from the cache, or pretrained now and cached."""
    identity = settings.pretrain_identity()
    path = cache_path(settings, data_dir)
    cached = load_cached(path, identity)
    if cached is not None:
        progress.say(f"pretrained backbone: cached {path}")
        return cached[0], {**cached[1], "cached": True}, path
    if path.exists():
        progress.say(f"pretrained backbone: {path} does not hold these settings; pretraining again")
    state, info = pretrain(settings, data_dir, progress)
    with atomic_write(path) as f:
        torch.save({"identity": identity, "state_dict": state, "info": info}, f)
    write_json_atomic(path.with_suffix(".json"), {"identity": identity, "info": info})
    progress.say(
        f"pretrained backbone: source test top-1 {info['source_test_acc1']:.2f} % "
        f"({info['source_classes']} classes) in {info['seconds']:.0f} s; cached {path}"
    )
    return state, {**info, "cached": False}, path
