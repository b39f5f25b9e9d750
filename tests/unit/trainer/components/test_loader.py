"""Samplers: class-balanced draws shared out over ranks, and shards without padding."""

from __future__ import annotations

import pytest

from trainer.components.loader import BalancedSampler, ShardSampler


def test_balanced_sampler_balances_an_imbalanced_label_list():
    labels = [0] * 90 + [1] * 10
    sampler = BalancedSampler(labels, rank=0, world=1, seed=0)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    assert len(drawn) == 20 * 100
    minority = sum(labels[i] == 1 for i in drawn) / len(drawn)
    assert 0.45 < minority < 0.55  # 10% in the data


def test_balanced_sampler_ranks_take_disjoint_slices_of_one_draw():
    labels = [0] * 90 + [1] * 10
    whole = list(BalancedSampler(labels, rank=0, world=1, seed=7))
    r0 = list(BalancedSampler(labels, rank=0, world=2, seed=7))
    r1 = list(BalancedSampler(labels, rank=1, world=2, seed=7))
    assert len(r0) == len(r1) == 50
    interleaved = [i for pair in zip(r0, r1, strict=True) for i in pair]
    assert interleaved == whole


def test_balanced_sampler_set_epoch_changes_the_draw():
    labels = [0] * 90 + [1] * 10
    sampler = BalancedSampler(labels, rank=0, world=2, seed=0)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same draw
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


@pytest.mark.parametrize(("size", "world"), [(10, 3), (7, 2), (5, 8), (12, 4)])
def test_shard_sampler_partitions_without_padding(size, world):
    shards = [list(ShardSampler(size, rank, world)) for rank in range(world)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(size))
    assert len(flat) == size
    assert [len(ShardSampler(size, r, world)) for r in range(world)] == [len(s) for s in shards]
