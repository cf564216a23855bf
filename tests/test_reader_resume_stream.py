"""Resumed epochs skip without decoding; shards read as streams (local, ``pipe:``, HTTP) keep the planner's
guarantees and give the same batches wherever the bytes come from."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from zmdist.data.reader import ShardDataset, buffer_order, make_loader, resume_roles


class _Counting:
    """sample_fn that counts its calls (only meaningful in-process: num_workers=0)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, rec: dict) -> tuple[int, str]:
        self.calls += 1
        return rec["label"], rec["key"]


def _batches(root, *, workers, batch=3, epoch=1, skip=0, world=1, rank=0, mode="train", **kw) -> list[list[str]]:
    ds = ShardDataset(root, "train", rank, world, mode=mode, seed=5, sample_fn=_Counting(), **kw)
    ds.set_epoch(epoch, skip_batches=skip)
    return [list(keys) for _, keys in make_loader(ds, batch_size=batch, num_workers=workers)]


def test_resume_roles_follow_the_dataloader_round_robin():
    # workers with 2, 3, 3 batches yield in turns 0,1,2,0,1,2,1,2 (worker 0 runs out first)
    turns = [0, 1, 2, 0, 1, 2, 1, 2]
    sizes = [2, 3, 3]
    for done in range(len(turns) + 1):
        following, consumed = resume_roles(sizes, done)
        assert consumed == [turns[:done].count(w) for w in range(3)]
        if done < len(turns):  # the next turn is the first worker from ``following`` that has batches left
            nxt = next((following + i) % 3 for i in range(3) if consumed[(following + i) % 3] < sizes[(following + i) % 3])
            assert nxt == turns[done]
    with pytest.raises(ValueError, match="cannot skip 9 batches"):
        resume_roles(sizes, 9)


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_a_resumed_epoch_yields_exactly_the_remaining_batches(make_shards, workers):
    """Catches: a resumed loader that restarts the epoch, reorders batches between workers, or drops some."""
    root, _ = make_shards([7, 5, 6, 3])
    full = _batches(root, workers=workers)
    assert len(full) == math.ceil(21 / 3)
    for skip in (1, 2, 4, len(full) - 1, len(full)):
        assert _batches(root, workers=workers, skip=skip) == full[skip:], skip


def test_skipped_batches_are_not_decoded(make_shards):
    root, _ = make_shards([7, 5])
    counting = _Counting()
    ds = ShardDataset(root, "train", mode="train", seed=5, sample_fn=counting)
    ds.set_epoch(0, skip_batches=3)
    got = [k for _, keys in make_loader(ds, batch_size=2, num_workers=0) for k in keys]
    assert len(got) == 12 - 6 and counting.calls == 6


def test_buffer_order_is_a_bounded_permutation():
    order = buffer_order(50, 8, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(50))
    assert all(item <= t + 7 for t, item in enumerate(order))  # never more than 8 read ahead of what leaves
    assert order.tolist() != list(range(50))
    assert buffer_order(5, 1, np.random.default_rng(0)).tolist() == [0, 1, 2, 3, 4]


def test_stream_access_keeps_the_planner_guarantees(make_shards):
    """Streams read shards in tar order with a shuffle buffer: eval is the same as random access, train
    still gives every rank ceil(T/W) samples with at most W-1 repeats per epoch, and epochs differ."""
    root, keys = make_shards([10, 7, 3, 1])
    for world in (1, 2, 3):
        eval_random = [_batches(root, workers=2, mode="eval", world=world, rank=r) for r in range(world)]
        eval_stream = [_batches(root, workers=2, mode="eval", world=world, rank=r, access="stream") for r in range(world)]
        assert eval_stream == eval_random
        seen = Counter()
        for r in range(world):
            got = [k for b in _batches(root, workers=2, world=world, rank=r, access="stream", shuffle_buffer=4) for k in b]
            assert len(got) == math.ceil(21 / world)
            seen.update(got)
        assert set(seen) == set(keys) and sum(seen.values()) - len(keys) <= world - 1
    one = _batches(root, workers=0, access="stream", shuffle_buffer=4, epoch=1)
    two = _batches(root, workers=0, access="stream", shuffle_buffer=4, epoch=2)
    assert one != two and sorted(sum(one, [])) == sorted(sum(two, []))


def test_random_access_is_refused_for_remote_shards(make_shards):
    root, _ = make_shards([3])
    with pytest.raises(ValueError, match="access='random' needs local shards"):
        ShardDataset(f"pipe:cat {root}/{{name}}", "train", sample_fn=_Counting(), access="random")


@pytest.mark.parametrize("workers", [0, 2])
def test_http_and_pipe_shards_give_the_same_batches_as_local_streams(make_shards, http_root, workers):
    """Catches: remote reads that lose, reorder or duplicate samples, or resume differently."""
    root, _ = make_shards([9, 4, 6])
    remotes = [http_root(root), f"pipe:cat {root}/{{name}}"]
    for skip in (0, 2):
        local = _batches(root, workers=workers, skip=skip, access="stream", shuffle_buffer=3)
        for remote in remotes:
            assert _batches(remote, workers=workers, skip=skip, shuffle_buffer=3) == local, (remote, skip)
        assert _batches(remotes[0], workers=workers, mode="eval") == _batches(root, workers=workers, mode="eval")


def test_a_missing_remote_manifest_or_shard_names_the_url(make_shards, http_root, tmp_path):
    root, _ = make_shards([4])
    with pytest.raises(FileNotFoundError, match=r"no readable manifest.json at http://127\.0\.0\.1:\d+/nowhere"):
        ShardDataset(http_root(root) + "/nowhere", "train", sample_fn=_Counting())
    (root / "train-000000.tar").rename(tmp_path / "moved.tar")
    ds = ShardDataset(http_root(root), "train", sample_fn=_Counting())
    with pytest.raises(FileNotFoundError, match=r"cannot read http://127\.0\.0\.1:\d+/train-000000\.tar"):
        list(make_loader(ds, batch_size=2))


def test_draft_decoding_shrinks_jpegs_only_and_keeps_both_sides_large_enough(tmp_path):
    """Catches: a draft that goes below the requested size (the teacher would upsample) or touches PNGs."""
    import io as _io
    import json as _json

    from PIL import Image
    from webdataset import TarWriter

    from zmdist.data.reader import iter_shard

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8))
    with TarWriter(str(tmp_path / "s.tar"), encoder=False) as tar:
        for key, fmt in (("j", "JPEG"), ("p", "PNG")):
            buf = _io.BytesIO()
            photo.save(buf, format=fmt)
            tar.write({"__key__": key, fmt.lower().replace("jpeg", "jpg"): buf.getvalue(), "cls": b"0",
                       "json": _json.dumps({"key": key}).encode()})
    full = {s["key"]: s["image"].size for s in iter_shard(tmp_path / "s.tar")}
    assert full == {"j": (500, 375), "p": (500, 375)}
    for want, expected in ((224, (500, 375)), (160, (250, 188)), (40, (63, 47))):
        sizes = {s["key"]: s["image"].size for s in iter_shard(tmp_path / "s.tar", draft=want)}
        assert sizes == {"j": expected, "p": (500, 375)} and min(sizes["j"]) >= want
