"""Embedding/pseudolabel files: round trips, no pickle, atomic writes, and joins by (shard, key)."""

import numpy as np
import pytest

from zmdist.atomic import atomic_path, clean_temp_files
from zmdist.formats import EmbeddingShard, PseudolabelShard, PseudolabelStore, sidecar_name


def _sidecar(keys):
    n = len(keys)
    return PseudolabelShard(
        keys=np.array(keys), labels=np.arange(n), pseudolabel=np.arange(n)[::-1].copy(),
        confidence=np.linspace(0.5, 1.0, n).astype(np.float32), margin=np.zeros(n, np.float32),
        entropy=np.zeros(n, np.float32), topk_classes=np.zeros((n, 2), np.int64),
        topk_probs=np.zeros((n, 2), np.float32),
    )


def test_embedding_round_trip_without_pickle(tmp_path):
    emb = EmbeddingShard(keys=np.array(["a", "bb"]), labels=np.array([3, -1]),
                         embeddings=np.ones((2, 4), np.float16))
    path = tmp_path / sidecar_name("train-000001.tar")
    assert path.name == "train-000001.npz"
    emb.save(path)
    back = EmbeddingShard.load(path)
    assert back.keys.tolist() == ["a", "bb"] and back.keys.dtype.kind == "U"  # no object arrays
    assert back.embeddings.dtype == np.float16 and back.labels.tolist() == [3, -1]
    assert [p.name for p in tmp_path.iterdir()] == ["train-000001.npz"]  # no temp files left


def test_damaged_files_are_clear_errors(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="unreadable.*delete it and rerun"):
        EmbeddingShard.load(bad)
    np.savez(tmp_path / "y.npz", keys=np.array(["a"]), labels=np.array([1]))
    with pytest.raises(ValueError, match=r"lacks fields \['embeddings'\]"):
        EmbeddingShard.load(tmp_path / "y.npz")
    with pytest.raises(FileNotFoundError, match="missing"):
        EmbeddingShard.load(tmp_path / "z.npz")


def test_store_joins_by_shard_and_key(tmp_path):
    _sidecar(["k0", "k1", "k2"]).save(tmp_path / "train-000000.npz")
    store = PseudolabelStore(tmp_path)
    assert store.lookup("train-000000.tar", "k0") == (2, pytest.approx(0.5))
    assert store.lookup("train-000000.tar", "k2") == (0, pytest.approx(1.0))
    with pytest.raises(KeyError, match="shard train-000000.tar: no pseudolabel for key 'nope'"):
        store.lookup("train-000000.tar", "nope")
    with pytest.raises(FileNotFoundError, match="no pseudolabel sidecar for shard train-000009.tar"):
        store.lookup("train-000009.tar", "k0")


def test_atomic_writes_get_the_umasks_permissions_not_owner_only(tmp_path):
    """Catches results readable by their owner only (mkstemp's 0600) on a cluster where a group shares them."""
    import os

    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


def test_atomic_write_leaves_nothing_on_failure_and_cleans_leftovers(tmp_path):
    target = tmp_path / "out.npz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".tmp-out.npz.abc123.npz").write_bytes(b"left by a SIGKILL")
    (tmp_path / ".tmp-other.npz.zzz.npz").write_bytes(b"another job's")
    assert clean_temp_files([target]) == 1
    assert [p.name for p in tmp_path.iterdir()] == [".tmp-other.npz.zzz.npz"]
