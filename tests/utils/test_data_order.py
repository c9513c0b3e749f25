"""EpochBatchSampler / SeededDataset: deterministic, resumable, shardable data order."""

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from tllib_tune.utils.data import EpochBatchSampler, SeededDataset, ShardSampler


def batches(sampler, epoch, start=0):
    sampler.set_epoch(epoch, start)
    return list(sampler)


def test_order_depends_only_on_seed_and_epoch():
    a = EpochBatchSampler(23, 4, 9, seed=3)
    b = EpochBatchSampler(23, 4, 9, seed=3)
    assert batches(a, 2) == batches(b, 2)
    assert batches(a, 2) != batches(a, 3)
    assert batches(a, 2) != batches(EpochBatchSampler(23, 4, 9, seed=4), 2)


def test_passes_reshuffle_drop_last_and_cover_distinct_samples():
    sampler = EpochBatchSampler(23, 4, 12, seed=0)  # 5 full batches per pass, 3 incomplete left out
    stream = batches(sampler, 0)
    assert len(stream) == len(sampler) == 12
    assert all(len(b) == 4 for b in stream)
    first_pass = [i for b in stream[:5] for i, _ in b]
    assert len(set(first_pass)) == 20 and set(first_pass) <= set(range(23))
    second_pass = [i for b in stream[5:10] for i, _ in b]
    assert len(set(second_pass)) == 20 and second_pass != first_pass


def test_starting_mid_epoch_gives_the_rest_of_the_same_stream():
    sampler = EpochBatchSampler(30, 4, 11, seed=1)
    full = batches(sampler, 5)
    assert batches(sampler, 5, start=8) == full[8:]
    assert len(sampler) == 3
    assert batches(sampler, 5, start=11) == []
    with pytest.raises(ValueError, match="outside"):
        sampler.set_epoch(0, 12)


def test_ranks_split_each_global_batch():
    single = batches(EpochBatchSampler(40, 6, 5, seed=2), 1)
    ranks = [batches(EpochBatchSampler(40, 3, 5, seed=2, rank=r, world_size=2), 1) for r in range(2)]
    for step, global_batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == global_batch


def test_batch_larger_than_dataset_is_an_error():
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochBatchSampler(5, 4, 3, world_size=2)


def test_shard_sampler_partitions_without_padding():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(ShardSampler(10, r, 3)) for r in range(3)] == [4, 3, 3]


class RandomItems(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.rand(3), random.random(), np.random.rand(), i


def test_seeded_dataset_repeats_augmentation_and_leaves_global_rng_alone():
    data = SeededDataset(RandomItems())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    expected = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    first = data[(2, 123)]
    again = data[(2, 123)]
    other = data[(2, 124)]
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    assert not torch.equal(first[0], other[0])
    assert torch.equal(torch.rand(1), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]
