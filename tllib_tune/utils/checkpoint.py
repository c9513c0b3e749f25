"""Training checkpoints: atomic writes, RNG states, block modes, and safe loading with clear errors.

A checkpoint is a dict written by :func:`save_checkpoint`::

    {"format": "tllib_tune.checkpoint", "version": 2, "model": state_dict, "optimizer": ...,
     "scheduler": ..., "scaler": ..., "epoch": e, "iteration": i, "rng": {...},
     "modes": {"counts": {"tune": 20}, "blocks": {"backbone.conv1": "tune", ...}}, "args": {...}, ...}

``epoch``/``iteration`` name the next step to run (``epoch`` is the number of epochs done), so a run
resumed from it carries on exactly where the saved one stopped. Files are written to a temporary file in
the same directory and moved into place with ``os.replace``, so an interrupted write never leaves a
truncated checkpoint behind.

Everything in a checkpoint is a tensor or a plain container of numbers and strings (version 2 stores the
numpy and python RNG states as tensors), so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``: a file shared by someone else cannot run code when it is loaded, and
one that holds any other pickled object is refused. Version-1 files (numpy arrays in their RNG state)
still load: only numpy's array, dtype and array-reconstruction globals are allowed in addition.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

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
VERSION = 2
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
    """Random states of torch (CPU and every CUDA device), numpy and python's ``random``, as tensors and
    plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state(saved: Any) -> tuple:
    if isinstance(saved, dict):  # version 2
        keys = np.asarray(saved["keys"].numpy(), dtype=np.uint32)
        return saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]
    return tuple(saved)  # version 1: numpy's own tuple


def _python_state(saved: Any) -> tuple:
    if isinstance(saved, dict):  # version 2
        return saved["version"], tuple(int(v) for v in saved["state"].tolist()), saved["gauss_next"]
    return saved


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned, of either checkpoint version (CUDA states only when
    the device count matches)."""
    torch.set_rng_state(state["torch"].cpu() if torch.is_tensor(state["torch"]) else state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(_python_state(state["python"]))
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


def _legacy_globals() -> List[Any]:
    """What a version-1 checkpoint needs besides tensors and plain values: its numpy RNG state's array
    (numpy 2 names the reconstructor numpy._core..., files written under numpy 1 numpy.core...)."""
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    allowed: List[Any] = [np.ndarray, np.dtype, reconstruct, type(np.dtype(np.uint32))]
    allowed.append((reconstruct, "numpy.core.multiarray._reconstruct"))
    return allowed


def _names(items: Sequence[Any]) -> List[str]:
    return [
        item[1] if isinstance(item, tuple) else f"{item.__module__}.{item.__qualname__}" for item in items
    ]


def _refused(path: Path) -> Optional[str]:
    """The pickled globals of ``path`` that are not allowed, or None when none is (or it cannot tell)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  (a file it cannot read is reported as corrupt by the caller)
        return None
    allowed = set(_names(_legacy_globals()))
    bad = [name for name in found if name not in allowed]
    return ", ".join(bad) if bad else None


def _read(path: Path, map_location: Any, mmap: bool) -> Any:
    """torch.load with ``weights_only=True`` (plus version 1's numpy globals), errors in our words."""
    try:
        with torch.serialization.safe_globals(_legacy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        bad = _refused(path) if isinstance(exc, pickle.UnpicklingError) else None
        if bad:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds pickled objects that are not allowed ({bad}): loading them "
                "could run code, so it is refused. Use a checkpoint that fine-tuning wrote (tensors and "
                "plain values only), from a source you trust"
            ) from None
        detail = " ".join((str(exc).splitlines() or ["no detail"])[0].split())[:200]
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read; it is truncated or corrupt ({type(exc).__name__}: "
            f"{detail}). Use another checkpoint, e.g. best.pt or an earlier copy"
        ) from None


def load_checkpoint(path: PathLike, map_location: Any = "cpu", mmap: bool = False) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safely: ``weights_only=True``), raising
    :class:`CheckpointError` if the file is missing, truncated/corrupt, holds a pickled object that is
    not allowed, or is not such a checkpoint. ``mmap`` maps the tensors instead of reading them (quick
    when only the settings are wanted)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a directory; give the file, e.g. "
            f"{str(path / 'checkpoints' / 'latest.pt')!r}"
        )
    checkpoint = _read(path, map_location, mmap)
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
