"""Per-rank reading: exact-once eval, equal-count train, reproducible shuffles (ranks simulated in-process)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from zmdist.data.reader import ShardDataset, assign_shards, make_loader, worker_plan


def _label_key(rec: dict) -> tuple[int, str]:
    return rec["label"], rec["key"]


def _tensor_label_key(rec: dict) -> tuple[torch.Tensor, int, str]:
    return torch.from_numpy(np.asarray(rec["image"]).copy()).permute(2, 0, 1), rec["label"], rec["key"]


def _rank_keys(root, split, rank, world, *, mode, workers, batch=4, epoch=0, seed=0, **kwargs) -> list[list[str]]:
    """Batches of keys one rank sees through a real DataLoader."""
    ds = ShardDataset(root, split, rank, world, mode=mode, seed=seed, sample_fn=_label_key, **kwargs)
    ds.set_epoch(epoch)
    loader = make_loader(ds, batch_size=batch, num_workers=workers)
    batches = [list(keys) for _, keys in loader]
    assert len(batches) == len(loader) == math.ceil(len(ds) / batch)  # worker split is batch-aligned
    return batches


def test_assign_shards_disjoint_balanced_deterministic():
    counts = [10, 7, 3, 1, 9, 9, 0]
    for world in range(1, 9):
        parts = [assign_shards(counts, r, world) for r in range(world)]
        assert sorted(itertools.chain(*parts)) == list(range(len(counts)))
        loads = [sum(counts[i] for i in p) for p in parts]
        assert max(loads) - min(loads) <= max(counts)
        assert parts == [assign_shards(counts, r, world) for r in range(world)]
    assert assign_shards([10, 7, 3, 1], 0, 2) == [0, 3] and assign_shards([10, 7, 3, 1], 1, 2) == [1, 2]
    with pytest.raises(ValueError, match="outside world size"):
        assign_shards([1], 2, 2)


@pytest.mark.parametrize("counts", [[10, 7, 3, 1], [5], [3, 0, 4]])
def test_plans_exact_once_in_eval_and_equal_in_train(counts):
    """Every (world, workers) up to 6x5: eval covers each sample once, train gives ceil(T/W) per rank."""
    total = sum(counts)
    for world, workers, align in itertools.product(range(1, 7), range(1, 6), (1, 3)):
        seen, per_rank = Counter(), []
        for rank in range(world):
            plans = [worker_plan(counts, rank, world, w, workers, mode="eval", seed=0, epoch=0, align=align)
                     for w in range(workers)]
            seen.update((p.shard, int(i)) for plan in plans for p in plan for i in p.positions)
        assert seen == Counter((s, i) for s, c in enumerate(counts) for i in range(c))
        if world > total:
            continue
        for rank in range(world):
            plans = [worker_plan(counts, rank, world, w, workers, mode="train", seed=1, epoch=2, align=align)
                     for w in range(workers)]
            per_rank.append(Counter((p.shard, int(i)) for plan in plans for p in plan for i in p.positions))
        assert all(sum(c.values()) == math.ceil(total / world) for c in per_rank)
        union = sum(per_rank, Counter())
        assert set(union) == {(s, i) for s, c in enumerate(counts) for i in range(c)}  # nothing dropped
        assert sum(union.values()) - total == world * math.ceil(total / world) - total  # only the wrap repeats
        assert all(sum(c.values()) - len(c) <= 1 for c in per_rank)  # a rank repeats at most one sample


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_exact_once_through_dataloader(make_shards, workers):
    for counts, world in [([10, 7, 3, 1], 2), ([10, 7, 3, 1], 3), ([4], 3)]:
        root, keys = make_shards(counts)
        got = [k for r in range(world) for b in _rank_keys(root, "train", r, world, mode="eval", workers=workers)
               for k in b]
        assert sorted(got) == sorted(keys) and len(got) == len(set(got))


@pytest.mark.parametrize("workers", [0, 2])
def test_train_equal_counts_on_uneven_shards(make_shards, workers):
    for counts, world in [([10, 7, 3, 1], 2), ([5, 2], 3)]:  # the second: fewer shards than ranks x workers
        root, keys = make_shards(counts)
        per_rank = [_rank_keys(root, "train", r, world, mode="train", workers=workers, batch=2)
                    for r in range(world)]
        samples_per_rank = math.ceil(len(keys) / world)
        assert [sum(len(b) for b in batches) for batches in per_rank] == [samples_per_rank] * world
        assert len({len(batches) for batches in per_rank}) == 1  # DDP sees the same number of steps
        flat = [k for batches in per_rank for b in batches for k in b]
        assert set(flat) == set(keys) and len(flat) - len(keys) == world * samples_per_rank - len(keys)


def test_train_order_reproducible_per_seed_and_epoch(make_shards):
    root, keys = make_shards([10, 7, 3, 1])

    def order(epoch, seed=0, workers=0, **kw):
        return [k for r in range(2) for b in _rank_keys(root, "train", r, 2, mode="train", workers=workers,
                                                         epoch=epoch, seed=seed, **kw) for k in b]

    first = order(0)
    assert first == order(0) == order(0, workers=0)
    assert order(1) != first and sorted(set(order(1))) == sorted(keys)
    assert order(0, seed=5) != first
    assert order(0, workers=2) == order(0, workers=2)


def test_positions_subset_keeps_both_guarantees(make_shards):
    """Catches: a position subset (ZeroMatch's hold-out) read twice, dropped, or leaking the other part;
    and unequal train counts per rank on the subset."""
    root, keys = make_shards([10, 7, 3, 1])
    rng = np.random.default_rng(0)
    positions = [np.sort(rng.choice(c, c // 2, replace=False)) for c in (10, 7, 3, 1)]
    wanted = sorted(f"s{i}_{j}" for i, p in enumerate(positions) for j in p.tolist())
    for world in (1, 2, 3):
        seen = [k for r in range(world) for b in _rank_keys(root, "train", r, world, mode="eval", workers=2,
                                                               positions=positions) for k in b]
        assert sorted(seen) == wanted  # exactly once, nothing outside the subset
        per_rank = [sum(map(len, _rank_keys(root, "train", r, world, mode="train", workers=2, positions=positions)))
                    for r in range(world)]
        assert per_rank == [math.ceil(len(wanted) / world)] * world


def test_items_labels_and_sample_fn(make_shards):
    root, _ = make_shards([3, 2])
    ds = ShardDataset(root, "train", mode="eval", sample_fn=_tensor_label_key)
    images, labels, keys = next(iter(make_loader(ds, batch_size=5)))
    assert images.shape == (5, 3, 4, 4) and images.dtype == torch.uint8
    assert list(keys) == ["s0_0", "s0_1", "s0_2", "s1_0", "s1_1"]  # eval: manifest order, tar order
    assert labels.tolist() == [0, 1, 2, 1, 2]
    assert images[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 1]


def test_clear_errors(make_shards):
    root, _ = make_shards([2, 1])
    with pytest.raises(KeyError, match="'test' is not in .*has: train"):
        ShardDataset(root, "test", 0, 1, sample_fn=_label_key)
    with pytest.raises(ValueError, match="world size 4 exceeds the 3 samples"):
        ShardDataset(root, "train", 0, 4, mode="train", sample_fn=_label_key)
    assert len(ShardDataset(root, "train", 3, 4, mode="eval", sample_fn=_label_key)) == 1
    with pytest.raises(ValueError, match="mode must be one of"):
        ShardDataset(root, "train", mode="test", sample_fn=_label_key)
    empty, _ = make_shards([0])
    with pytest.raises(ValueError, match="has no samples"):
        ShardDataset(empty, "train", sample_fn=_label_key)
    with pytest.raises(ValueError, match="positions has 1 entries but split 'train' has 2 shards"):
        ShardDataset(root, "train", sample_fn=_label_key, positions=[np.arange(2)])
