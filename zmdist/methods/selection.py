"""Which samples to label next: pure selection rules on feature and probability tensors.

Every rule takes the features (or scores) of the samples it may choose from and returns the indices of
exactly ``budget`` distinct ones, ascending (fewer only when fewer exist), deterministic for a seed. The
stage maps them to keys and removes the already-labelled pool first, so "not already labelled" holds by
construction. Rules follow docs/methods.md section 3 (DropQuery, centroid initial pool, baselines) and the
papers named per function. Nothing here builds an N x N matrix: distances go through
``zmdist.methods.kmeans.pairwise_sq_dists`` in row blocks of at most ``MAX_BLOCK_ELEMS`` entries.
"""

from __future__ import annotations

import torch

from zmdist.methods.kmeans import (
    DEFAULT_CHUNK,
    assign,
    block_rows,
    kmeans,
    l2_normalise_rows,
    nearest_members,
    pairwise_sq_dists,
)

MAX_BLOCK_ELEMS = 1 << 24  # 64 MiB of float32 per distance block, whatever N is
CANDIDATE_FACTOR = 25  # DropQuery keeps lowering its threshold until it has 25 * budget candidates


def _rows_per_block(cols: int) -> int:
    return max(1, MAX_BLOCK_ELEMS // max(1, cols))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def random_fill(chosen: torch.Tensor, n: int, budget: int, generator: torch.Generator,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
    """``chosen`` topped up to ``budget`` indices (at most all ``allowed`` ones) with uniformly drawn
    unchosen ``allowed`` ones (a boolean mask over ``range(n)``; default all); ascending.

    Used where a rule yields fewer than ``budget`` picks (empty clusters, too few candidates, a covered
    pool), so a strategy always returns what was asked for."""
    chosen = torch.unique(chosen.cpu())
    free = torch.ones(n, dtype=torch.bool) if allowed is None else allowed.cpu().clone()
    free[chosen] = False
    need = min(budget - len(chosen), int(free.sum()))
    if need > 0:
        rest = torch.nonzero(free).flatten()
        chosen = torch.cat([chosen, rest[torch.randperm(len(rest), generator=generator)[:need]]])
    return torch.sort(chosen).values


def random_select(n: int, budget: int, seed: int) -> torch.Tensor:
    """``budget`` of ``n`` indices drawn uniformly without replacement."""
    return random_fill(torch.empty(0, dtype=torch.long), n, budget, _generator(seed))


# --------------------------------------------------------------------------------------------------
# Uncertainty baselines: higher score = more uncertain = labelled first


def entropy_scores(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``-sum p log p`` of each row (0 log 0 = 0)."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(1)


def margin_scores(probs: torch.Tensor) -> torch.Tensor:
    """``-(p_top1 - p_top2)``: a small gap between the two most probable classes is uncertain."""
    top2 = probs.topk(2, dim=1).values
    return -(top2[:, 0] - top2[:, 1])


def least_confidence_scores(probs: torch.Tensor) -> torch.Tensor:
    """``1 - max p``."""
    return 1.0 - probs.max(1).values


def top_scores(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices of the ``budget`` highest scores, ties to the lower index; ascending."""
    order = torch.argsort(-scores.cpu(), stable=True)
    return torch.sort(order[:budget]).values


# --------------------------------------------------------------------------------------------------
# DropQuery (Gupte et al. 2024) and the centroid initial pool


def mismatch_counts(clean_pred: torch.Tensor, pass_preds: torch.Tensor) -> torch.Tensor:
    """Per sample, how many dropout passes (rows of ``pass_preds``, shape (M, N)) predict another class
    than the clean prediction ``clean_pred`` (N,)."""
    return (pass_preds != clean_pred.unsqueeze(0)).sum(0)


def dropquery_candidates(mismatch: torch.Tensor, budget: int, passes: int = 3) -> tuple[int, torch.Tensor]:
    """(threshold, candidate indices ascending): samples with ``mismatch > threshold``.

    The threshold starts at ``passes // 2`` (a majority of passes disagree) and is lowered by one while
    fewer than ``25 * budget`` samples pass it, down to 0 (at least one pass disagrees): never below, so
    samples every pass agrees on are never candidates (the caller fills at random if fewer than
    ``budget`` remain)."""
    threshold = passes // 2
    wanted = CANDIDATE_FACTOR * budget
    while threshold > 0 and int((mismatch > threshold).sum()) < wanted:
        threshold -= 1
    return threshold, torch.nonzero(mismatch.cpu() > threshold).flatten()


def centroid_select(features: torch.Tensor, budget: int, *, seed: int = 0, iterations: int = 100,
                    chunk: int = DEFAULT_CHUNK, device: torch.device | None = None) -> torch.Tensor:
    """k-means (k = budget, k-means++ init) on the L2-normalised features; the member nearest each
    centroid. Clusters left empty by Lloyd are filled at random, so exactly ``budget`` come back."""
    n = len(features)
    if budget >= n:
        return torch.arange(n)
    x = l2_normalise_rows(features, chunk)
    result = kmeans(x, budget, iterations=iterations, seed=seed, chunk=chunk, device=device)
    picks = nearest_members(result.labels, result.sq_dists, budget)
    return random_fill(picks, n, budget, _generator(seed))


def dropquery_select(features: torch.Tensor, mismatch: torch.Tensor, budget: int, *, passes: int = 3, seed: int = 0,
                     iterations: int = 100, chunk: int = DEFAULT_CHUNK, device: torch.device | None = None,
                     allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, int]]:
    """DropQuery's pick and what it saw: candidates from ``dropquery_candidates``; fewer than ``budget``:
    all of them plus random others; otherwise ``centroid_select`` among the candidates only.

    ``allowed`` (boolean mask, default all) restricts the choice without copying the pool: the caller
    passes the whole pool with its labelled rows disallowed (their mismatch is ignored)."""
    if allowed is not None:
        mismatch = torch.where(allowed.to(mismatch.device), mismatch, torch.full_like(mismatch, -1))
    threshold, candidates = dropquery_candidates(mismatch, budget, passes)
    info = {"threshold": threshold, "candidates": len(candidates)}
    if len(candidates) <= budget:
        return random_fill(candidates, len(features), budget, _generator(seed), allowed), info
    local = centroid_select(features[candidates.to(features.device)], budget, seed=seed, iterations=iterations,
                            chunk=chunk, device=device)
    return torch.sort(candidates[local]).values, info


# --------------------------------------------------------------------------------------------------
# Coreset (Sener & Savarese 2018): k-center greedy


def kcenter_greedy(features: torch.Tensor, labelled: torch.Tensor, budget: int, *, seed: int = 0,
                   chunk: int = DEFAULT_CHUNK, device: torch.device | None = None) -> torch.Tensor:
    """Repeatedly take the point farthest from every labelled or already-taken point (L2 distance).

    ``labelled`` are indices into ``features`` (never returned); with none, the first centre is drawn at
    random. Keeps one O(N) nearest-centre distance vector; each pick costs one pass over the pool."""
    device = device or features.device
    n = len(features)
    min_d = torch.full((n,), float("inf"), device=device)
    taken = torch.zeros(n, dtype=torch.bool, device=device)
    labelled = labelled.to(device)
    taken[labelled] = True
    centres_per_pass = max(1, MAX_BLOCK_ELEMS // chunk)  # a chunk x centres block stays within the bound
    for start in range(0, len(labelled), centres_per_pass):
        centres = features[labelled[start:start + centres_per_pass].to(features.device)].to(device, torch.float32)
        min_d = torch.minimum(min_d, assign(features, centres, chunk)[1])
    picks: list[int] = []
    budget = min(budget, n - int(taken.sum()))
    if budget > 0 and not len(labelled):
        first = int(torch.randint(n, (1,), generator=_generator(seed)))
        picks.append(first)
        taken[first] = True
        min_d = torch.minimum(min_d, assign(features, block_rows(features, first, first + 1, device), chunk)[1])
    while len(picks) < budget:
        pick = int(torch.where(taken, torch.full_like(min_d, -1.0), min_d).argmax())
        picks.append(pick)
        taken[pick] = True
        min_d = torch.minimum(min_d, assign(features, block_rows(features, pick, pick + 1, device), chunk)[1])
    return torch.sort(torch.tensor(picks, dtype=torch.long)).values


# --------------------------------------------------------------------------------------------------
# Initial pools without labels: TypiClust (Hacohen et al. 2022), ProbCover (Yehuda et al. 2022)


def typicality(members: torch.Tensor, knn: int, device: torch.device | None = None) -> torch.Tensor:
    """TypiClust's typicality of each row: 1 / mean L2 distance to its ``knn`` nearest other rows
    (``min(knn, m - 1)``; a lone point gets typicality +inf). Row blocks sized so a block is at most
    ``MAX_BLOCK_ELEMS``: memory O(block x m), time O(m^2 d) per cluster."""
    device = device or members.device
    m = len(members)
    k = min(knn, m - 1)
    if k < 1:
        return torch.full((m,), float("inf"))
    ref = members.to(device, torch.float32)
    out = torch.empty(m)
    step = _rows_per_block(m)
    for start in range(0, m, step):
        d = pairwise_sq_dists(ref[start:start + step], ref)
        rows = torch.arange(len(d), device=device)
        d[rows, rows + start] = float("inf")  # a point is not its own neighbour
        near = d.topk(k, dim=1, largest=False).values.sqrt()
        out[start:start + len(d)] = (1.0 / near.mean(1).clamp_min(1e-12)).cpu()
    return out


def typiclust_select(features: torch.Tensor, budget: int, *, knn: int = 20, seed: int = 0, iterations: int = 100,
                     chunk: int = DEFAULT_CHUNK, device: torch.device | None = None) -> torch.Tensor:
    """k-means into ``budget`` clusters (the cold-start case: no labelled clusters to skip), then the
    most typical member of each cluster (TypiClust's rule, ``knn=20`` as in its paper)."""
    n = len(features)
    if budget >= n:
        return torch.arange(n)
    x = l2_normalise_rows(features, chunk)
    result = kmeans(x, budget, iterations=iterations, seed=seed, chunk=chunk, device=device)
    labels = result.labels.cpu()
    picks = []
    for cluster in range(budget):
        members = torch.nonzero(labels == cluster).flatten()
        if len(members):
            picks.append(int(members[int(typicality(x[members.to(x.device)], knn, device).argmax())]))
    return random_fill(torch.tensor(picks, dtype=torch.long), n, budget, _generator(seed))


def probcover_delta(features: torch.Tensor, clusters: torch.Tensor, purity: float = 0.95,
                    device: torch.device | None = None) -> float:
    """ProbCover's ball radius: the largest delta whose balls are ``purity``-pure w.r.t. ``clusters``.

    A ball of radius delta around x holds only x's cluster iff delta < r(x), the distance from x to the
    nearest point of another cluster, so purity(delta) = mean(r > delta) and the largest delta with
    purity >= alpha is the (1 - alpha) quantile of r. One O(N^2 d) pass in row blocks."""
    device = device or features.device
    n = len(features)
    x = features.to(device, torch.float32)
    c = clusters.to(device)
    r = torch.empty(n)
    step = _rows_per_block(n)
    for start in range(0, n, step):
        d = pairwise_sq_dists(x[start:start + step], x)
        d[c[start:start + step, None] == c[None, :]] = float("inf")
        r[start:start + len(d)] = d.min(1).values.sqrt().cpu()
    r = r[torch.isfinite(r)]
    return float(torch.quantile(r, 1.0 - purity)) if len(r) else float("inf")


def probcover_select(features: torch.Tensor, budget: int, delta: float, *, seed: int = 0,
                     device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """ProbCover's greedy max coverage: repeatedly take the point whose delta-ball (L2) covers the most
    still-uncovered points; once all are covered, fill at random. Returns (picks, points covered).

    The delta-ball graph is kept as an edge list built in row blocks, so memory is O(edges) (not N x N;
    a delta so large that most pairs are edges is the caller's mistake), time O(N^2 d) to build."""
    device = device or features.device
    n = len(features)
    x = features.to(device, torch.float32)
    src, dst = [], []
    step = _rows_per_block(n)
    for start in range(0, n, step):
        close = torch.nonzero(pairwise_sq_dists(x[start:start + step], x) <= delta * delta)
        src.append(close[:, 0] + start)
        dst.append(close[:, 1])
    edge_src, edge_dst = torch.cat(src), torch.cat(dst)
    covered = torch.zeros(n, dtype=torch.bool, device=device)
    picks: list[int] = []
    while len(picks) < min(budget, n):
        live = ~covered[edge_dst]
        edge_src, edge_dst = edge_src[live], edge_dst[live]
        if not len(edge_src):
            break
        degree = torch.bincount(edge_src, minlength=n)
        pick = int(degree.argmax())
        picks.append(pick)
        covered[edge_dst[edge_src == pick]] = True
    n_covered = int(covered.sum())
    return random_fill(torch.tensor(picks, dtype=torch.long), n, budget, _generator(seed)), n_covered


# --------------------------------------------------------------------------------------------------
# UP-DP's rule: one representative per learned cluster


def one_per_cluster(probs: torch.Tensor) -> torch.Tensor:
    """For each cluster k (a column of the (N, K) cluster-probability matrix), the sample with the highest
    p_k among those assigned to k (argmax); a cluster with no member takes the unpicked sample with the
    highest p_k instead. So K distinct samples always come back (K <= N), ascending."""
    n, k = probs.shape
    if k > n:
        raise ValueError(f"{k} clusters but only {n} samples to choose from")
    assigned = probs.argmax(1)
    taken = torch.zeros(n, dtype=torch.bool, device=probs.device)
    picks = []
    for cluster in range(k):
        score = probs[:, cluster].clone()
        mine = (assigned == cluster) & ~taken
        score[~mine if bool(mine.any()) else taken] = -1.0
        pick = int(score.argmax())
        picks.append(pick)
        taken[pick] = True
    return torch.sort(torch.tensor(picks, dtype=torch.long)).values
