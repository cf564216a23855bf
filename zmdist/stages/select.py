"""``zmdist select``: choose which samples to label from their teacher embeddings.

Initial pools without labels: ``random``, ``centroid`` (k-means nearest-to-centroid), ``typiclust``,
``probcover``, ``updp`` (learned prompts + cluster head, saved for reuse). Later rounds, given the
labels so far (``labelled=FILE``; their classes are read from the embedding files): ``dropquery``,
``random``, ``entropy``, ``margin``, ``least-confidence``, ``coreset``.

Writes ``OUT/selected_keys.txt`` (the ``budget`` new keys, one per line) and ``OUT/labelled_keys.txt``
(the labelled keys plus the new ones): the latter is what ``zmdist train labelled_keys=FILE`` takes,
and what the next round's ``labelled=`` takes. Runs in one process on this machine's GPU when present.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zmdist import dist
from zmdist.atomic import atomic_write_text
from zmdist.config import ConfigError, option, to_dict
from zmdist.provenance import provenance, write_run_files
from zmdist.selection.pool import load_pool, read_keys
from zmdist.selection.probe import ProbeConfig
from zmdist.selection.strategies import NEEDS_LABELS, RuleConfig, Strategy, choose
from zmdist.selection.updp import UpdpConfig
from zmdist.stages.common import resolve_device

NAME = "select"
HELP = "choose which samples to label (DropQuery, centroid, TypiClust, ProbCover, UP-DP, uncertainty, coreset)"
SELECTED_FILE = "selected_keys.txt"
LABELLED_FILE = "labelled_keys.txt"
log = logging.getLogger("zmdist")


@dataclass
class Config:
    embeddings: str = option(help="output of `zmdist embed` (folder, URL or pipe: template)")
    shards: str = option("", "where the shard set's manifest is now; empty = where `embed` read it")
    split: str = option("train", "split to choose from (the split `zmdist train` labels)")
    strategy: Strategy = option("centroid", "selection rule (dropquery, entropy, margin, least-confidence and "
                                            "coreset need labelled=FILE)")
    budget: int = option(10, "how many new keys to choose", min=1)
    labelled: str = option("", "key file of the samples labelled so far (one key per line); empty = none")
    seed: int = option(0, "seed of k-means++, probes, dropout passes and random draws")
    device: str = option("auto", "auto (GPU when present, else CPU), cpu, cuda, cuda:N")
    progress: bool = option(True, "show UP-DP training progress")
    rules: RuleConfig = option(factory=RuleConfig, help="k-means, DropQuery, TypiClust and ProbCover settings")
    probe: ProbeConfig = option(factory=ProbeConfig, help="the dropout linear probe of the label-based strategies")
    updp: UpdpConfig = option(factory=UpdpConfig, help="UP-DP training")


def run(cfg: Config, out: Path) -> dict[str, Any]:
    info = dist.detect()
    if info.world_size > 1:
        raise ConfigError(f"zmdist select runs in one process (got world size {info.world_size}): start it "
                          "without torchrun; it uses this machine's GPU when there is one")
    device = resolve_device(cfg.device, info)
    start = time.perf_counter()
    pool = load_pool(cfg.embeddings, cfg.split, cfg.shards)
    labelled_keys = read_keys(cfg.labelled, "labelled") if cfg.labelled else []
    labelled = pool.index_of(labelled_keys, f"labelled={cfg.labelled}")
    labels = torch.from_numpy(pool.labels[labelled.numpy()])
    if cfg.strategy in NEEDS_LABELS and bool((labels < 0).any()):
        bad = [labelled_keys[i] for i in torch.nonzero(labels < 0).flatten().tolist()[:3]]
        raise ValueError(f"labelled={cfg.labelled}: keys without a label in the embedding files, e.g. {bad}: "
                         f"strategy={cfg.strategy} trains on the labels so far")
    out.mkdir(parents=True, exist_ok=True)
    rows, details = choose(cfg.strategy, pool.features, labelled, labels, len(pool.classes), cfg.budget,
                           rules=cfg.rules, probe=cfg.probe, updp=cfg.updp, seed=cfg.seed, device=device, out=out,
                           progress=cfg.progress)
    chosen = sorted(pool.keys[rows.numpy()].tolist())
    atomic_write_text(out / SELECTED_FILE, "".join(f"{k}\n" for k in chosen))
    atomic_write_text(out / LABELLED_FILE, "".join(f"{k}\n" for k in sorted(set(labelled_keys) | set(chosen))))
    known = pool.labels[rows.numpy()]
    histogram = np.bincount(known[known >= 0], minlength=len(pool.classes))
    results = {
        "stage": NAME, "strategy": cfg.strategy, "budget": cfg.budget, "selected": len(chosen),
        "labelled_before": len(labelled_keys), "labelled_after": len(labelled_keys) + len(chosen),
        "pool_size": len(pool), "device": str(device),
        "selected_keys_file": str(out / SELECTED_FILE), "labelled_keys_file": str(out / LABELLED_FILE),
        # ground truth of the chosen samples where the shards have it: how many classes the pick covers
        "selected_class_histogram": {c: int(n) for c, n in zip(pool.classes, histogram)},
        "classes_covered": int((histogram > 0).sum()),
        "details": details, "seconds": time.perf_counter() - start,
    }
    write_run_files(out, to_dict(cfg), {**results, **provenance(seed=cfg.seed, classes=pool.classes)})
    log.info("select: %d keys by %s -> %s", len(chosen), cfg.strategy, out / SELECTED_FILE)
    return results
