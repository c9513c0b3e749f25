"""Training checkpoints: atomic writes, RNG states, block modes, and loading with clear errors.

A checkpoint is a dict written by :func:`save_checkpoint`::

    {"format": "tllib_tune.checkpoint", "version": 1, "model": state_dict, "optimizer": ...,
     "scheduler": ..., "scaler": ..., "epoch": e, "iteration": i, "rng": {...},
     "modes": {"counts": {"tune": 20}, "blocks": {"backbone.conv1": "tune", ...}}, "args": {...}, ...}

``epoch``/``iteration`` name the next step to run, so a run resumed from it carries on exactly where
the saved one stopped. Files are written to a temporary file in the same directory and moved into
place with ``os.replace``, so an interrupted write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import numpy as np
import torch
from torch import nn

from ..common import atomic_write
from ..modules.inplace_abn import ConvInPlaceABN
from ..modules.modes import get_modes, iter_blocks

__all__ = [
    "CheckpointError",
    "atomic_save",
    "get_rng_state",
    "set_rng_state",
    "block_modes",
    "unwrap_model",
    "save_checkpoint",
    "load_checkpoint",
    "load_model_state",
]

FORMAT = "tllib_tune.checkpoint"
VERSION = 1
PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model; the message says which."""


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file and ``os.replace`` (all or nothing)."""
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(obj, f)
    return path


def get_rng_state() -> Dict[str, Any]:
    """Random states of torch (CPU and every CUDA device), numpy and python's ``random``."""
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"].cpu() if torch.is_tensor(state["torch"]) else state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def block_modes(model: nn.Module) -> Dict[str, Any]:
    """Per-block modes ({"counts": {"tune": 20}, "blocks": {name: mode}}) of every ConvBN/LinearBN;
    blocks converted to In-Place ABN count as "inplace-abn"."""
    model = unwrap_model(model)
    counts = get_modes(model)
    blocks = {name: block.mode.value for name, block in iter_blocks(model)}
    converted = [name for name, module in model.named_modules() if isinstance(module, ConvInPlaceABN)]
    if converted:
        counts["inplace-abn"] = len(converted)
        blocks.update({name: "inplace-abn" for name in converted})
    return {"counts": counts, "blocks": blocks}


def _state(obj: Any) -> Optional[Dict[str, Any]]:
    return None if obj is None else obj.state_dict()


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    *,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Any = None,
    scaler: Any = None,
    epoch: int = 0,
    iteration: int = 0,
    args: Optional[Dict[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a full training checkpoint atomically; ``epoch``/``iteration`` name the next step to run."""
    plain = unwrap_model(model)
    checkpoint: Dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": plain.state_dict(),
        "optimizer": _state(optimizer),
        "scheduler": _state(scheduler),
        "scaler": _state(scaler),
        "epoch": int(epoch),
        "iteration": int(iteration),
        "rng": get_rng_state(),
        "modes": block_modes(plain),
        "args": dict(args or {}),
    }
    checkpoint.update(extra or {})
    return atomic_save(checkpoint, path)


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, raising :class:`CheckpointError` if the file
    is missing, truncated/corrupt, or not such a checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a directory; give the file, e.g. "
            f"{str(path / 'checkpoints' / 'latest.pt')!r}"
        )
    try:
        # weights_only=False: optimizer/scheduler/RNG states hold numpy arrays and tuples.
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read; it is truncated or corrupt ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). Use another checkpoint, e.g. best.pt "
            "or an earlier copy"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT or "model" not in checkpoint:
        raise CheckpointError(
            f"{str(path)!r} is not a tllib_tune training checkpoint (no 'format'/'model' entries): give a "
            "latest.pt or best.pt that fine-tuning wrote (save_checkpoint); plain weights load as "
            "`pretrained` instead"
        )
    return checkpoint


def _preview(keys: Iterable[str], limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_model_state(model: nn.Module, state: Dict[str, Any], *, source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly; missing, unexpected or mis-shaped keys raise
    :class:`CheckpointError` naming them (the usual cause is a checkpoint made for another architecture)."""
    plain = unwrap_model(model)
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    own = plain.state_dict()
    missing: List[str] = [k for k in own if k not in state]
    unexpected: List[str] = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and torch.is_tensor(state[k]) and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model): {_preview(mismatched, 3)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model ({'; '.join(problems)}); it was probably made for another "
            "`arch` or number of classes"
        )
    plain.load_state_dict(state, strict=True)
