"""Deterministic data order for training: epoch batches that depend only on (seed, epoch, step).

TLlib draws ``iters_per_epoch`` batches per epoch from an endless iterator over a shuffled, drop_last
DataLoader. :class:`EpochBatchSampler` yields the same kind of stream (reshuffling after every pass
over the data, dropping the incomplete last batch), but every epoch's order is a pure function of the
seed and the epoch, and the stream can start at any step. Together with :class:`SeededDataset`, which
draws each sample's random augmentation from its own seed, this makes a run resumed from a checkpoint
(even one saved mid-epoch) see exactly the batches the uninterrupted run saw, whatever the number of
DataLoader workers. Under DistributedDataParallel each rank takes its slice of every global batch.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochBatchSampler", "SeededDataset", "ShardSampler", "mix_seed"]


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from several integers (seed, epoch, pass, ...)."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpochBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Batch sampler for one epoch of ``num_batches`` steps; yields lists of (index, sample seed).

    Args:
        num_samples: size of the training set.
        batch_size: images per step on this process.
        num_batches: steps per epoch (TLlib's ``--iters-per-epoch``).
        seed: run seed; with the epoch it fixes the order and the augmentation seeds.
        rank, world_size: this process's slice of each global batch of ``batch_size * world_size``.

    Call :meth:`set_epoch` before iterating to choose the epoch and the step to start from.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        num_batches: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or num_batches < 1:
            raise ValueError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        global_batch = batch_size * world_size
        if num_samples < global_batch:
            raise ValueError(
                f"the training set has {num_samples} images, fewer than one batch of {global_batch} "
                f"({batch_size} per process x {world_size} processes); use a smaller `batch_size`"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batches_per_pass = num_samples // global_batch
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate over ``epoch`` beginning at step ``start`` (0 <= start <= num_batches)."""
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"start step {start} is outside 0..{self.num_batches}")
        self.epoch = epoch
        self.start = start

    def _pass(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, index))
        order = torch.randperm(self.num_samples, generator=generator)
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator)
        return order, seeds

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        global_batch = self.batch_size * self.world_size
        step = self.start
        while step < self.num_batches:
            pass_index, within = divmod(step, self.batches_per_pass)
            order, seeds = self._pass(pass_index)
            for b in range(within, self.batches_per_pass):
                if step >= self.num_batches:
                    return
                lo = b * global_batch + self.rank * self.batch_size
                hi = lo + self.batch_size
                yield list(zip(order[lo:hi].tolist(), seeds[lo:hi].tolist()))
                step += 1

    def __len__(self) -> int:
        return self.num_batches - self.start


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is loaded with its random transforms seeded.

    The global random states (torch CPU, python, numpy) are restored afterwards, so loading data in
    the main process (``num_workers=0``) leaves the training RNG untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Tuple[int, int]) -> Any:
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: an evaluation shard without padding or duplicates."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices: Sequence[int] = range(rank, num_samples, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
