"""One entry point for every strategy: ``choose(strategy, pool features, labelled rows, ...)``.

Initial-pool strategies (no labels needed) and later-round strategies (a probe trained on the labels so
far) share it, so ``zmdist select`` and ``zmdist al-sim`` run the very same code. The rows already
labelled are removed before a rule runs, so a strategy can only return unlabelled rows; the result is
exactly ``budget`` distinct rows (asking for more than are unlabelled is an error).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from zmdist.config import option
from zmdist.methods import selection as rules_
from zmdist.methods.kmeans import DEFAULT_CHUNK, kmeans, l2_normalise_rows
from zmdist.selection.probe import ProbeConfig, predict, train_probe
from zmdist.selection.updp import UpdpConfig, cluster_probs, save_model, train_updp

INITIAL = ("random", "centroid", "typiclust", "probcover", "updp")
NEEDS_LABELS = ("dropquery", "entropy", "margin", "least-confidence", "coreset")
Strategy = Literal["random", "centroid", "typiclust", "probcover", "updp", "dropquery", "entropy", "margin",
                   "least-confidence", "coreset"]
UPDP_FILE = "updp.safetensors"


@dataclass
class RuleConfig:
    kmeans_iterations: int = option(100, "Lloyd iterations of k-means (centroid, dropquery, typiclust)", min=1)
    dropquery_passes: int = option(3, "DropQuery's dropout passes M", min=1)
    typiclust_knn: int = option(20, "TypiClust's neighbours for typicality", min=1)
    probcover_purity: float = option(0.95, "ProbCover: delta = the largest radius whose balls are this pure "
                                           "w.r.t. k-means clusters (k = budget)", min=0.0, max=1.0)
    probcover_delta: float = option(0.0, "ProbCover's ball radius (L2 on unit features); 0 = from probcover_purity",
                                    min=0.0)
    chunk_size: int = option(DEFAULT_CHUNK, "rows per distance block (memory: chunk_size x k floats)", min=1)


def choose(strategy: str, features: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor, num_classes: int,
           budget: int, *, rules: RuleConfig, probe: ProbeConfig, updp: UpdpConfig, seed: int, device: torch.device,
           out: Path | None = None, progress: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """(rows of ``features`` to label next, ascending; what the strategy saw).

    ``labelled``: rows already labelled; ``labels``: their classes (used by the probe strategies only).
    ``out``: where UP-DP saves its model (``updp.safetensors``)."""
    n = len(features)
    free_mask = torch.ones(n, dtype=torch.bool)
    free_mask[labelled] = False
    free = torch.nonzero(free_mask).flatten()
    if budget > len(free):
        raise ValueError(f"budget={budget} but only {len(free)} of {n} samples are unlabelled")
    if strategy in NEEDS_LABELS and len(labelled) < 2:
        raise ValueError(f"strategy={strategy} learns from the labels so far and needs at least 2 labelled keys "
                         f"(labelled=FILE); for a first pool use one of {', '.join(INITIAL)}")
    # initial strategies choose among the unlabelled rows (a copy of them when some are labelled);
    # label-based ones score the whole pool and mask the labelled rows out, so a 10^6-row pool is not copied
    pool = features if len(free) == n or strategy in NEEDS_LABELS else features[free]
    info: dict[str, Any] = {"strategy": strategy, "budget": budget, "pool": len(free), "labelled_before": len(labelled)}
    kw = {"seed": seed, "device": device}
    if strategy == "random":
        local = rules_.random_select(len(free), budget, seed)
    elif strategy == "centroid":
        local = rules_.centroid_select(pool, budget, iterations=rules.kmeans_iterations, chunk=rules.chunk_size, **kw)
    elif strategy == "typiclust":
        local = rules_.typiclust_select(pool, budget, knn=rules.typiclust_knn, iterations=rules.kmeans_iterations,
                                        chunk=rules.chunk_size, **kw)
    elif strategy == "probcover":
        x = l2_normalise_rows(pool, rules.chunk_size)
        delta = rules.probcover_delta
        if delta <= 0:
            clusters = kmeans(x, budget, iterations=rules.kmeans_iterations, seed=seed, chunk=rules.chunk_size,
                              device=device).labels
            delta = rules_.probcover_delta(x, clusters, rules.probcover_purity, device)
        local, covered = rules_.probcover_select(x, budget, delta, **kw)
        info.update(delta=delta, covered=covered)
    elif strategy == "updp":
        model, log = train_updp(pool, budget, updp, seed=seed, device=device, progress=progress)
        local = rules_.one_per_cluster(cluster_probs(model, pool, device))
        if out is not None:
            save_model(model, out / UPDP_FILE)
            log["saved"] = str(out / UPDP_FILE)
        info["updp"] = log
    elif strategy == "coreset":
        picked = rules_.kcenter_greedy(features, labelled, budget, chunk=rules.chunk_size, **kw)
        return picked, info
    elif strategy in NEEDS_LABELS:
        model = train_probe(features[labelled], labels, num_classes, probe, seed=seed, device=device)
        passes = rules.dropquery_passes if strategy == "dropquery" else 0
        probs, pass_preds = predict(model, features, passes=passes, seed=seed, device=device)
        if strategy == "dropquery":
            mismatch = rules_.mismatch_counts(probs.argmax(1), pass_preds)
            picked, dq = rules_.dropquery_select(features, mismatch, budget, passes=passes, seed=seed,
                                                 iterations=rules.kmeans_iterations, chunk=rules.chunk_size,
                                                 device=device, allowed=free_mask)
            info.update(dq)
        else:
            score = {"entropy": rules_.entropy_scores, "margin": rules_.margin_scores,
                     "least-confidence": rules_.least_confidence_scores}[strategy](probs)
            picked = rules_.top_scores(torch.where(free_mask, score, torch.full_like(score, -torch.inf)), budget)
        return picked, info
    else:
        raise ValueError(f"strategy={strategy!r} is not known; choose one of {', '.join(INITIAL + NEEDS_LABELS)}")
    return torch.sort(free[local]).values, info
