"""Autocast queries that work across PyTorch versions, for code that must fold outside autocast.

Tune and deploy fold BatchNorm in at least float32 and then run the operator in the dtype autocast would
have chosen for it; these helpers say what that dtype is and switch autocast off around the fold.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

__all__ = ["autocast_enabled", "autocast_dtype", "autocast_off"]


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ("cpu", "cuda", ...)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def autocast_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run a convolution in for ``x``, or x's own dtype outside autocast."""
    device_type = x.device.type
    if not autocast_enabled(device_type) or not x.is_floating_point():
        return x.dtype
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def autocast_off(t: Tensor) -> Any:
    """A context that disables autocast for ``t``'s device, or a no-op one when it is off already."""
    device_type = t.device.type
    if autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
