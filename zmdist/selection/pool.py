"""The pool a strategy chooses from: keys, ground-truth labels and teacher features of one split.

Read from the embedding files of ``zmdist embed`` (one ``.npz`` per image shard, local, URL or ``pipe:``),
one shard at a time into a preallocated float16 tensor, so peak memory is the pool itself (N x d x 2
bytes: 1 GiB for 10^6 x 512) plus one shard, never a float32 copy; the rules convert row blocks to
float32 as they go. Which files form a split comes from the shard set's manifest (the folder ``embed``
read, recorded in ``embed_info.json``, or ``shards=`` where it is now).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zmdist.formats import EmbeddingShard, check_split_keys, open_embedding_run, sidecar_name


@dataclass
class Pool:
    """One split's samples in shard order: ``keys`` (N,) str, ``labels`` (N,) int64 (-1 = no label),
    ``features`` (N, d) float16 on the CPU, and the class names of the shard set."""

    keys: np.ndarray
    labels: np.ndarray
    features: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def index_of(self, keys: list[str], what: str) -> torch.Tensor:
        """Row of each key; a key that is not in the pool is an error naming it and ``what`` listed it."""
        where = {str(k): i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in where]
        if missing:
            raise ValueError(f"{what}: {len(missing)} keys are not in this split of the embeddings, e.g. "
                             f"{missing[:3]}: give keys of the same shard set and split")
        return torch.tensor([where[k] for k in keys], dtype=torch.long)


def load_pool(embeddings: str, split: str, shards: str = "") -> Pool:
    """The pool of ``split``; ``shards`` overrides where the manifest is (default: where embed read it)."""
    run_files = open_embedding_run(embeddings, shards)
    info, manifest, folder = run_files.info, run_files.manifest, run_files.folder
    if split not in manifest.splits or split not in info.get("splits", []):
        raise ValueError(f"split {split!r}: the embeddings in {embeddings} cover splits {info.get('splits')}; "
                         f"choose one of them")
    names = [sidecar_name(s.name) for s in manifest.split(split).shards]
    total = manifest.split(split).total
    features: torch.Tensor | None = None
    keys, labels, filled = [], [], 0
    for name in names:
        if folder.exists(name) is False:
            raise FileNotFoundError(f"{folder.ref(name)} is missing: finish `zmdist embed` on {embeddings} first")
        shard = EmbeddingShard.load(folder.ref(name))
        if features is None:
            features = torch.empty((total, shard.embeddings.shape[1]), dtype=torch.float16)
        rows = len(shard.keys)
        features[filled:filled + rows] = torch.from_numpy(shard.embeddings.astype(np.float16, copy=False))
        keys.append(shard.keys.astype(str))
        labels.append(shard.labels.astype(np.int64))
        filled += rows
    if features is None or filled == 0:
        raise ValueError(f"split {split!r} of {embeddings} has no embedded samples")
    check_split_keys(split, [str(folder.ref(name)) for name in names], keys)
    return Pool(np.concatenate(keys), np.concatenate(labels), features[:filled], list(manifest.classes))


def read_keys(path: str | Path, what: str) -> list[str]:
    """A key list file as ``zmdist train labelled_keys=FILE`` reads it: one key per line, blanks ignored."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}={path}: no such file")
    return sorted({k.strip() for k in p.read_text().splitlines() if k.strip()})
