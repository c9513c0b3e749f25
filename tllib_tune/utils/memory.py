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


class _SavedTensorHooks:
    """What both meters share: within the context, autograd hands every tensor it saves to ``_pack`` and
    takes it back through ``_unpack``; :meth:`_activation` says whether a tensor counts."""

    def __init__(self, exclude: Iterable[Any]) -> None:
        self._excluded = excluded_storages(exclude)
        self._hooks: Optional[torch.autograd.graph.saved_tensors_hooks] = None

    def _activation(self, t: Tensor) -> Optional[Tuple[Tuple[Any, ...], int]]:
        """(storage key, bytes) of ``t``'s storage, or None for a parameter's, an empty one or none."""
        found = storage_key(t)  # no storage (fake tensors): None
        if found is None or found[:2] in self._excluded or found[1] == 0:
            return None
        return found[:2], found[2]

    def _pack(self, t: Tensor) -> Any:
        raise NotImplementedError

    def _unpack(self, packed: Any) -> Tensor:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        self._hooks = None


class SavedTensorMeter(_SavedTensorHooks):
    """Context manager that sums the bytes of distinct storages saved for backward.

    Args:
        exclude: modules or tensors whose storages are not activations (usually the model itself).

    Example::

        with SavedTensorMeter(exclude=[model]) as meter:
            loss = model(x).sum()
        print(meter.bytes / 2**20, "MiB")
    """

    def __init__(self, exclude: Iterable[Any] = ()) -> None:
        super().__init__(exclude)
        self._storages: Dict[tuple, int] = {}

    def _pack(self, t: Tensor) -> Tensor:
        found = self._activation(t)
        if found is not None:
            self._storages[found[0]] = found[1]
        return t

    def _unpack(self, t: Tensor) -> Tensor:
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._storages.clear()
        return super().__enter__()

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


class PeakSavedMeter(_SavedTensorHooks):
    """The largest live total of distinct storages saved for backward over a whole step (forward,
    backward, and any recomputation that runs with the hooks in force), parameters' storages excluded.

    A storage counts from the first time autograd saves a tensor on it until the last saved tensor on it
    is released (backward frees a node's saved tensors once the node has run). Exact for what autograd
    saves; it does not count gradients, the gradient flowing between nodes, or an operator's scratch
    memory, which CUDA's max allocated includes. Use it around forward *and* backward.
    """

    def __init__(self, exclude: Tuple[nn.Module, ...] = ()) -> None:
        super().__init__(exclude)
        self._counts: Dict[Tuple[Any, ...], int] = {}
        self._sizes: Dict[Tuple[Any, ...], int] = {}
        self.live = 0
        self.peak = 0

    def _pack(self, t: Tensor) -> _Held:
        found = self._activation(t)
        if found is None:
            return _Held(t, None, self)
        key, nbytes = found
        count = self._counts.get(key, 0)
        if count == 0:
            self._sizes[key] = nbytes
            self.live += nbytes
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
