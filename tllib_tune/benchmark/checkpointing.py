"""Activation checkpointing per backbone stage for the benchmark's ``eval+ckpt`` / ``tune+ckpt`` modes,
and the step's peak of saved tensors (what a checkpointed step needs beyond what its forward keeps).

Each stage (a backbone child that is an ``nn.Sequential`` of blocks: ResNet's and RegNet's layer1 ...
layer4) runs under ``torch.utils.checkpoint`` (reentrant form): its forward keeps only the stage input,
and backward runs the stage again to rebuild what it needs. The reentrant form saves the input through
autograd's saved-tensor hooks and recomputes with them in force, so that :class:`PeakSavedMeter` sees the
recomputation too. (The fine-tuning application has its own ``--grad-checkpointing``; this small
wrapper only serves the benchmark.)
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..utils.memory import excluded_storages, storage_key

__all__ = ["backbone_stages", "checkpointed_stages", "PeakSavedMeter"]


def backbone_stages(backbone: nn.Module) -> List[nn.Module]:
    """The stages of ``backbone``: its ``nn.Sequential`` children that hold parameters."""
    stages = [
        m for m in backbone.children() if isinstance(m, nn.Sequential) and any(True for _ in m.parameters())
    ]
    if not stages:
        raise ValueError(
            f"{type(backbone).__name__} has no nn.Sequential stages to checkpoint; leave eval+ckpt and "
            "tune+ckpt out of `modes` for this architecture"
        )
    return stages


def _checkpointed(stage: nn.Module) -> Any:
    forward = type(stage).forward.__get__(stage)

    def run(x: Tensor) -> Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return forward(x)
        return checkpoint(forward, x, use_reentrant=True)

    return run


@contextlib.contextmanager
def checkpointed_stages(backbone: nn.Module) -> Iterator[List[nn.Module]]:
    """Within the context, every stage of ``backbone`` (see :func:`backbone_stages`) runs checkpointed."""
    stages = backbone_stages(backbone)
    for stage in stages:  # an instance attribute, found before the class's forward
        stage.forward = _checkpointed(stage)
    try:
        yield stages
    finally:
        for stage in stages:
            del stage.forward


class _Held:
    """What the pack hook hands autograd: the tensor, and a callback when autograd lets go of it."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: Tensor, key: Optional[Tuple[Any, ...]], meter: PeakSavedMeter) -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        if self.key is not None:
            self.meter._release(self.key)


class PeakSavedMeter:
    """The largest live total of distinct storages saved for backward over a whole step (forward,
    backward, and any recomputation that runs with the hooks in force), parameters' storages excluded.

    A storage counts from the first time autograd saves a tensor on it until the last saved tensor on it
    is released (backward frees a node's saved tensors once the node has run). Exact for what autograd
    saves; it does not count gradients, the gradient flowing between nodes, or an operator's scratch
    memory, which CUDA's max allocated includes. Use it around forward *and* backward.
    """

    def __init__(self, exclude: Tuple[nn.Module, ...] = ()) -> None:
        self._excluded = excluded_storages(exclude)
        self._counts: Dict[Tuple[Any, ...], int] = {}
        self._sizes: Dict[Tuple[Any, ...], int] = {}
        self.live = 0
        self.peak = 0
        self._hooks: Optional[torch.autograd.graph.saved_tensors_hooks] = None

    def _pack(self, t: Tensor) -> _Held:
        found = storage_key(t)  # no storage (fake tensors): None
        key: Optional[Tuple[Any, ...]] = found[:2] if found is not None else None
        if key is not None and (key in self._excluded or key[1] == 0):
            key = None
        if key is not None:
            count = self._counts.get(key, 0)
            if count == 0:
                self._sizes[key] = found[2]
                self.live += found[2]
                self.peak = max(self.peak, self.live)
            self._counts[key] = count + 1
        return _Held(t, key, self)

    def _release(self, key: Tuple[Any, ...]) -> None:
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        elif count == 0:
            del self._counts[key]
            self.live -= self._sizes.pop(key)

    def __enter__(self) -> PeakSavedMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda held: held.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        self._hooks = None
