"""One pass over a task's embedding shards into additive statistics, merged across ranks exactly.

Why statistics and not embeddings: every score of ``zmdist.methods.transfer`` is a function of sums over
images, so a rank reads one shard at a time (memory: one shard plus O(C*d + d^2) float64), and ranks
combine their sums with ONE float64 all-reduce. The result equals a single process's up to the order of
float64 additions (about 1e-15 relative), whatever the number of ranks or the shard order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as torch_dist

from zmdist.data.location import Location
from zmdist.formats import EmbeddingShard, sidecar_name
from zmdist.methods.transfer import TransferStats
from zmdist.progress import Progress


def shard_stats(emb: EmbeddingShard, num_classes: int, second_moment: bool, where: str) -> TransferStats:
    """Statistics of one embedding file; unlabelled rows are an error (the scores need ground truth)."""
    labels = np.asarray(emb.labels)
    missing = int((labels < 0).sum())
    if missing:
        raise ValueError(f"{where}: {missing} of {len(labels)} samples have no label (-1); `zmdist transfer score` "
                         "needs the ground-truth labels of the scored split (score a labelled split, e.g. split=train)")
    try:
        return TransferStats.from_batch(emb.embeddings, labels, num_classes, second_moment)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def accumulate(shards: list[tuple[str, int]], emb_dir: Location, num_classes: int, dim: int, *,
               second_moment: bool, progress: bool) -> TransferStats:
    """This rank's statistics over ``shards`` ((image shard name, manifest count): its share of the
    shards), one embedding file at a time."""
    total = TransferStats.zeros(num_classes, dim, second_moment)
    with Progress(len(shards), "transfer score", "shard", enabled=progress) as bar:
        for shard, count in shards:
            name = sidecar_name(shard)
            if emb_dir.exists(name) is False:
                raise FileNotFoundError(f"shard {shard} has no embedding file {emb_dir.ref(name)}: "
                                        "finish `zmdist embed` first")
            emb = EmbeddingShard.load(emb_dir.ref(name))
            if len(emb.keys) != count:
                raise ValueError(f"{emb_dir.ref(name)} holds {len(emb.keys)} embeddings but the manifest says shard "
                                 f"{shard} has {count} samples: re-run `zmdist embed` into a new folder")
            if emb.embeddings.ndim != 2 or emb.embeddings.shape[1] != dim:
                raise ValueError(f"{emb_dir.ref(name)}: embeddings of shape {emb.embeddings.shape}, but the teacher's "
                                 f"text embeddings have dimension {dim}: the embeddings come from another teacher")
            total = total + shard_stats(emb, num_classes, second_moment, str(emb_dir.ref(name)))
            bar.update(1)
    return total


def all_reduce(stats: TransferStats) -> TransferStats:
    """Every rank's statistics summed (float64, one collective); unchanged when not distributed."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return stats
    vector = stats.to_vector().contiguous()
    torch_dist.all_reduce(vector, op=torch_dist.ReduceOp.SUM)
    return stats.from_vector(vector)
