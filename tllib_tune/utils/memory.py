"""Activation memory: the bytes a forward pass keeps alive for backward (:class:`SavedTensorMeter`), and
the largest live total of them over a whole step, recomputation included (:class:`PeakSavedMeter`).

Counted as distinct tensor storages handed to autograd's saved-tensor hooks, excluding the storages
of the model's own parameters and buffers. The figure is exact and the same on every machine, which is
why tests may assert it while times are only ever reported by the benchmark.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "SavedTensorMeter",
    "PeakSavedMeter",
    "activation_bytes",
    "excluded_storages",
    "storage_key",
    "MIB",
]

MIB = 1024**2


def storage_key(t: Tensor) -> Optional[tuple]:
    """(device, data pointer, bytes) of the storage under ``t``: tensors sharing memory share the first two
    (None for a tensor without storage, e.g. a fake tensor)."""
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. fake tensors)
        return None
    return (t.device, storage.data_ptr(), storage.nbytes())


def excluded_storages(exclude: Iterable[Any]) -> set:
    """The (device, data pointer) of every storage under ``exclude`` (modules' parameters and buffers, or
    tensors): what a meter of saved activations leaves out."""
    excluded = set()
    for item in exclude:
        tensors = list(item.parameters()) + list(item.buffers()) if isinstance(item, nn.Module) else [item]
        for t in tensors:
            key = storage_key(t)
            if key is not None:
                excluded.add(key[:2])
    return excluded


def _enter_hooks(meter: Any) -> Any:
    """Install ``meter._pack`` / ``meter._unpack`` as autograd's saved-tensor hooks (what both meters'
    ``__enter__`` does); returns the meter."""
    meter._hooks = torch.autograd.graph.saved_tensors_hooks(meter._pack, meter._unpack)
    meter._hooks.__enter__()
    return meter


def _exit_hooks(meter: Any, exc: Tuple[Any, ...]) -> None:
    assert meter._hooks is not None
    meter._hooks.__exit__(*exc)
    meter._hooks = None


class SavedTensorMeter:
    """Context manager that sums the bytes of distinct storages saved for backward.

    Args:
        exclude: modules or tensors whose storages are not activations (usually the model itself).

    Example::

        with SavedTensorMeter(exclude=[model]) as meter:
            loss = model(x).sum()
        print(meter.bytes / 2**20, "MiB")
    """

    def __init__(self, exclude: Iterable[Any] = ()) -> None:
        self._excluded = excluded_storages(exclude)
        self._storages: Dict[tuple, int] = {}
        self._hooks: Optional[torch.autograd.graph.saved_tensors_hooks] = None

    def _pack(self, t: Tensor) -> Tensor:
        key = storage_key(t)
        if key is not None and key[:2] not in self._excluded and key[1] != 0:
            self._storages[key[:2]] = key[2]
        return t

    def _unpack(self, t: Tensor) -> Tensor:
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._storages.clear()
        return _enter_hooks(self)

    def __exit__(self, *exc: Any) -> None:
        _exit_hooks(self, exc)

    @property
    def bytes(self) -> int:
        """Total bytes of the distinct storages saved so far."""
        return sum(self._storages.values())

    @property
    def num_tensors(self) -> int:
        return len(self._storages)


def activation_bytes(
    model: nn.Module,
    *inputs: Any,
    loss_fn: Optional[Callable[[Any], Tensor]] = None,
    backward: bool = True,
) -> int:
    """Run one forward of ``model(*inputs)`` and return its saved-for-backward bytes.

    The forward runs with autograd enabled; ``backward`` then frees the graph (a loss is formed by
    ``loss_fn`` or, by default, the sum of the output).
    """
    with SavedTensorMeter(exclude=[model]) as meter:
        out = model(*inputs)
    if backward:
        loss = loss_fn(out) if loss_fn is not None else out.float().sum()
        if loss.requires_grad:
            loss.backward()
    return meter.bytes


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

    def _unpack(self, held: _Held) -> Tensor:
        return held.tensor

    def __enter__(self) -> PeakSavedMeter:
        return _enter_hooks(self)

    def __exit__(self, *exc: Any) -> None:
        _exit_hooks(self, exc)
