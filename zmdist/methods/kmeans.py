"""Batched k-means (k-means++ seeding, Lloyd iterations) and nearest-to-centroid picking on torch tensors.

Why our own and not FAISS: ``faiss-cpu`` is in the package index, but these k-means runs are small where it
matters most (DropQuery clusters ``25 * B`` candidates into ``B``), the same code runs on the GPU when one
is there (the issue asks for torch on the available device), and seeding is exact k-means++ under a
``torch.Generator`` so selections are reproducible bit for bit on one device. FAISS would be the lever
for a centroid initial pool over 10^8 points with thousands of centroids; not needed at 10^6.

Memory bound: every distance is computed between a block of at most ``chunk`` rows and the ``k``
centroids (``pairwise_sq_dists`` is the only place that builds a distance matrix), so besides the pool
itself (N x d, kept in its own dtype, e.g. float16, and converted block by block) a run holds O(N)
vectors (assignment, distance) and one ``chunk x max(k, d)`` float32 block: never N x N, never N x k.
Time per Lloyd iteration is O(N k d).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_CHUNK = 16384


def pairwise_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (len(a), len(b)) via ``|a|^2 + |b|^2 - 2 a.b`` (clamped at 0).

    The one place a distance matrix is built: callers pass row blocks, so its size is their bound."""
    a2 = (a * a).sum(1, keepdim=True)
    b2 = (b * b).sum(1)
    return (a2 + b2 - 2.0 * (a @ b.T)).clamp_min_(0.0)


def block_rows(x: torch.Tensor, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Rows ``start:stop`` of ``x`` as float32 on ``device`` (the pool may be float16 on the CPU)."""
    return x[start:stop].to(device=device, dtype=torch.float32, non_blocking=True)


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest centroid, squared distance to it) for every row of ``x``, in row blocks."""
    n = len(x)
    labels = torch.empty(n, dtype=torch.long, device=centroids.device)
    dists = torch.empty(n, dtype=torch.float32, device=centroids.device)
    for start in range(0, n, chunk):
        d = pairwise_sq_dists(block_rows(x, start, start + chunk, centroids.device), centroids)
        best, idx = d.min(dim=1)
        labels[start:start + len(idx)] = idx
        dists[start:start + len(idx)] = best
    return labels, dists


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator, chunk: int = DEFAULT_CHUNK,
                     device: torch.device | None = None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii): each next centroid drawn with probability proportional
    to the squared distance to the nearest centroid so far. Keeps one O(N) min-distance vector."""
    device = device or x.device
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {n} points")
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = torch.empty((k, x.shape[1]), dtype=torch.float32, device=device)
    centroids[0] = block_rows(x, first, first + 1, device)[0]
    min_d = assign(x, centroids[:1], chunk)[1]
    for j in range(1, k):
        total = float(min_d.sum())
        if total <= 0:  # every point sits on a centroid (duplicates): any unchosen-looking point will do
            pick = int(torch.randint(n, (1,), generator=generator))
        else:
            # inverse-CDF draw in float64 (torch.multinomial caps the category count at 2^24)
            cdf = torch.cumsum(min_d.double(), 0).cpu()
            u = float(torch.rand((), generator=generator, dtype=torch.float64)) * float(cdf[-1])
            pick = min(int(torch.searchsorted(cdf, torch.tensor([u], dtype=torch.float64), right=True)), n - 1)
        centroids[j] = block_rows(x, pick, pick + 1, device)[0]
        min_d = torch.minimum(min_d, assign(x, centroids[j:j + 1], chunk)[1])
    return centroids


@dataclass(frozen=True)
class KMeansResult:
    centroids: torch.Tensor  # (k, d) float32
    labels: torch.Tensor  # (N,) cluster of each point
    sq_dists: torch.Tensor  # (N,) squared distance to its centroid
    iterations: int


def kmeans(x: torch.Tensor, k: int, *, iterations: int = 100, seed: int = 0, chunk: int = DEFAULT_CHUNK,
           device: torch.device | None = None) -> KMeansResult:
    """k-means++ then at most ``iterations`` Lloyd steps, stopping when no assignment changes.

    One pass over the pool per step: each block is assigned to the current centroids and summed into
    its clusters at once, so the pool is read (and converted to float32) once per step, not twice. A
    cluster that loses all its points keeps its previous centroid (k stays fixed and the run
    deterministic); nearest-to-centroid picking then skips it and the caller fills the budget."""
    device = device or x.device
    generator = torch.Generator().manual_seed(int(seed))
    centroids = kmeans_plus_plus(x, k, generator, chunk, device)
    n = len(x)
    labels: torch.Tensor | None = None
    for step in range(1, iterations + 1):
        new_labels = torch.empty(n, dtype=torch.long, device=device)
        dists = torch.empty(n, dtype=torch.float32, device=device)
        sums = torch.zeros_like(centroids)
        for start in range(0, n, chunk):
            block = block_rows(x, start, start + chunk, device)
            best, idx = pairwise_sq_dists(block, centroids).min(dim=1)
            new_labels[start:start + len(idx)], dists[start:start + len(idx)] = idx, best
            sums.index_add_(0, idx, block)
        if labels is not None and torch.equal(new_labels, labels):  # centroids are these labels' means
            return KMeansResult(centroids, labels, dists, step)
        labels = new_labels
        counts = torch.bincount(labels, minlength=k).to(torch.float32)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    labels, dists = assign(x, centroids, chunk)  # not converged: labels of the last centroids
    return KMeansResult(centroids, labels, dists, iterations)


def nearest_members(labels: torch.Tensor, sq_dists: torch.Tensor, k: int) -> torch.Tensor:
    """For each cluster ``0..k-1`` that has members, the index of its member nearest to its centroid.

    Picks are real points and distinct (clusters are disjoint); ties go to the lower index. Sorting the
    O(N) (distance, cluster) pairs keeps this O(N log N) time and O(N) memory. Returned in cluster order."""
    order = torch.argsort(sq_dists, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]
    sorted_labels = labels[order]
    first = torch.ones_like(sorted_labels, dtype=torch.bool)
    first[1:] = sorted_labels[1:] != sorted_labels[:-1]
    picks = order[first]
    return picks[sorted_labels[first] < k]


def l2_normalise_rows(x: torch.Tensor, chunk: int = DEFAULT_CHUNK, tolerance: float = 1e-2) -> torch.Tensor:
    """``x`` with unit rows, in its own dtype, block by block (no float32 copy of the whole pool).

    Returns ``x`` itself when its rows already have unit norm (within ``tolerance``, float16 rounding):
    teacher embeddings are stored normalised, and a second copy of a 10^6-row pool is 1 GiB."""
    if all(bool(((x[s:s + chunk].float().norm(dim=1) - 1).abs() <= tolerance).all()) for s in range(0, len(x), chunk)):
        return x
    out = torch.empty_like(x)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk].float()
        out[start:start + len(block)] = torch.nn.functional.normalize(block, dim=1).to(x.dtype)
    return out
