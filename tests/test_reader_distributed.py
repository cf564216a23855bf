"""A real 2-process gloo job over uneven shards: train steps match on both ranks (no DDP hang) and
eval sees every sample exactly once, gathered across ranks with ``all_gather_object``."""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zmdist.data.reader import ShardDataset, make_loader


def _label_key(rec: dict) -> tuple[int, str]:
    return rec["label"], rec["key"]

WORLD = 2
COUNTS = [10, 7, 3, 1]  # 21 samples: ranks' slices are 10 and 11


def _rank_main(rank: int, init_file: str, shards: str, out: str) -> None:
    # A spawned child inherits "spawn" as its start method, so DataLoader workers would re-import torch
    # (seconds each); torchrun-launched ranks fork them, so do the same here.
    mp.set_start_method("fork", force=True)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    assert dist.get_world_size() == WORLD
    result: dict[str, object] = {"rank": dist.get_rank()}

    train = ShardDataset(shards, "train", dist.get_rank(), dist.get_world_size(), mode="train", seed=7,
                         sample_fn=_label_key)
    train.set_epoch(3)
    steps, seen, keys = 0, 0.0, []
    for labels, batch_keys in make_loader(train, batch_size=4, num_workers=2):
        count = torch.tensor([float(len(batch_keys))])
        dist.all_reduce(count)  # what DDP does every step: blocks forever if the other rank ran out
        steps, seen, keys = steps + 1, seen + count.item(), keys + list(batch_keys)
    result.update(train_steps=steps, train_seen_by_all=seen, train_keys=keys)

    evaluation = ShardDataset(shards, "train", dist.get_rank(), dist.get_world_size(), mode="eval",
                              sample_fn=_label_key)
    eval_keys = [k for _, batch in make_loader(evaluation, batch_size=4, num_workers=2) for k in batch]
    gathered: list[object] = [None] * WORLD
    dist.all_gather_object(gathered, eval_keys)
    result["eval_gathered"] = gathered
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_ranks_same_steps_and_exact_once_eval(make_shards, tmp_path):
    shards, keys = make_shards(COUNTS)
    context = mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(shards), str(tmp_path)), nprocs=WORLD,
                       join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("distributed reader test hung (ranks out of step?)")

    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    per_rank = math.ceil(len(keys) / WORLD)
    assert [r["rank"] for r in results] == [0, 1]
    assert results[0]["train_steps"] == results[1]["train_steps"] == math.ceil(per_rank / 4)
    assert all(len(r["train_keys"]) == per_rank for r in results)
    assert results[0]["train_seen_by_all"] == WORLD * per_rank
    train_union = results[0]["train_keys"] + results[1]["train_keys"]
    assert set(train_union) == set(keys) and len(train_union) - len(keys) == WORLD * per_rank - len(keys)

    gathered = results[0]["eval_gathered"]
    assert gathered == results[1]["eval_gathered"]
    flat = [k for rank_keys in gathered for k in rank_keys]
    assert sorted(flat) == sorted(keys) and len(flat) == len(set(flat))
