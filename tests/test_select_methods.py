"""Pure selection rules (zmdist.methods.selection / kmeans / updp) against hand-made cases and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zmdist.methods import kmeans as km
from zmdist.methods import selection as sel
from zmdist.methods.updp import cluster_entropy, cluster_loss, instance_loss, nt_xent


def blobs(n_per: int, centres: int, dim: int = 8, spread: float = 0.05,
          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(centres, dim, generator=g), dim=1)
    labels = torch.arange(centres).repeat_interleave(n_per)
    x = means[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1), labels


# --- DropQuery's threshold ------------------------------------------------------------------------

def _reference_candidates(mismatch: list[int], budget: int, passes: int) -> tuple[int, list[int]]:
    """Independent formulation: the highest t in [0, passes // 2] that leaves >= 25 * budget samples
    with mismatch > t; 0 if none does."""
    for t in range(passes // 2, -1, -1):
        if sum(m > t for m in mismatch) >= 25 * budget:
            return t, [i for i, m in enumerate(mismatch) if m > t]
    return 0, [i for i, m in enumerate(mismatch) if m > 0]


def test_dropquery_threshold_hand_made_case():
    """Kills: starting at passes instead of passes // 2, a `>=` for `>`, lowering below 0, unsorted indices."""
    mismatch = torch.tensor([3] * 30 + [2] * 20 + [1] * 30 + [0] * 20)
    mismatch = mismatch[torch.randperm(100, generator=torch.Generator().manual_seed(1))]
    # M = 3: start at 1; 50 samples have mismatch > 1
    t, idx = sel.dropquery_candidates(mismatch, budget=2, passes=3)  # needs 50: enough at 1
    assert t == 1 and len(idx) == 50 and bool((mismatch[idx] > 1).all())
    assert torch.equal(idx, torch.sort(idx).values)
    t, idx = sel.dropquery_candidates(mismatch, budget=3, passes=3)  # needs 75: lowered to 0 (80)
    assert t == 0 and len(idx) == 80
    t, idx = sel.dropquery_candidates(mismatch, budget=4, passes=3)  # needs 100: stays at 0, never below
    assert t == 0 and len(idx) == 80 and bool((mismatch[idx] > 0).all())
    t, idx = sel.dropquery_candidates(mismatch, budget=1, passes=5)  # M = 5 starts at 2: 30 > 25
    assert t == 2 and len(idx) == 30


@pytest.mark.parametrize("passes", [1, 2, 3, 5, 8])
def test_dropquery_threshold_matches_brute_force(passes):
    rng = np.random.default_rng(passes)
    for trial in range(30):
        mismatch = rng.integers(0, passes + 1, size=int(rng.integers(1, 400)))
        budget = int(rng.integers(1, 12))
        t, idx = sel.dropquery_candidates(torch.from_numpy(mismatch), budget, passes)
        ref_t, ref_idx = _reference_candidates(mismatch.tolist(), budget, passes)
        assert (t, idx.tolist()) == (ref_t, ref_idx), (trial, budget)


def test_mismatch_counts():
    clean = torch.tensor([0, 1, 2])
    passes = torch.tensor([[0, 0, 2], [1, 0, 2], [0, 1, 0]])
    assert sel.mismatch_counts(clean, passes).tolist() == [1, 2, 1]


# --- k-means and nearest to centroid --------------------------------------------------------------

def test_kmeans_reaches_a_lloyd_fixed_point_checked_by_brute_force():
    """At convergence every point is nearest its own centroid and each centroid is its members' mean
    (kills a wrong update, e.g. summing without dividing, or assigning to the farthest centroid)."""
    x, _ = blobs(40, 5, seed=3)
    res = km.kmeans(x, 5, iterations=100, seed=0, chunk=17)
    assert res.iterations < 100
    full = ((x[:, None, :] - res.centroids[None]) ** 2).sum(-1)  # brute force, small N only
    assert torch.equal(res.labels, full.argmin(1))
    for k in range(5):
        assert torch.allclose(res.centroids[k], x[res.labels == k].mean(0), atol=1e-5)
    assert torch.allclose(res.sq_dists, full.min(1).values, atol=1e-5)


def test_kmeans_does_not_depend_on_the_chunk_size_and_is_seeded():
    x, _ = blobs(50, 6, seed=4)
    a = km.kmeans(x.half(), 6, seed=7, chunk=13)
    b = km.kmeans(x.half(), 6, seed=7, chunk=10_000)
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.centroids, b.centroids, atol=1e-5)


def test_nearest_members_are_real_members_nearest_their_centroid():
    """Kills: picking the globally nearest point (could belong to another cluster), or a non-member."""
    x, _ = blobs(30, 4, seed=5)
    res = km.kmeans(x, 4, seed=1)
    picks = km.nearest_members(res.labels, res.sq_dists, 4)
    assert len(picks) == len(set(picks.tolist())) == 4
    for k, i in enumerate(picks.tolist()):
        members = torch.nonzero(res.labels == k).flatten()
        assert i in members.tolist()
        d = ((x[members] - res.centroids[k]) ** 2).sum(1)
        assert i == int(members[d.argmin()])


def test_nearest_members_hand_made_and_empty_cluster_skipped():
    labels = torch.tensor([2, 0, 2, 0, 2])
    d = torch.tensor([0.5, 0.3, 0.1, 0.3, 0.1])  # ties go to the lower index
    assert km.nearest_members(labels, d, 3).tolist() == [1, 2]  # cluster 1 has no member


def test_centroid_select_covers_every_blob():
    """On well-separated blobs, budget = number of blobs must pick one point per blob (random does not
    in general), and scaling rows must not change the pick (kills clustering unnormalised features)."""
    x, labels = blobs(60, 8, seed=6)
    picks = sel.centroid_select(x, 8, seed=0)
    assert len(picks) == 8 and len(set(labels[picks].tolist())) == 8
    scales = 0.2 + 5 * torch.rand(len(x), 1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sel.centroid_select(x * scales, 8, seed=0), picks)  # it clusters directions, not norms


def test_centroid_select_runs_k_means_to_convergence():
    """Points on the unit circle: a wide group A (21 points, angles -0.5..0.5 step 0.05) and a tight
    small group B (5 points, 1.16..1.24 step 0.02). Two centroids split an arc into two runs of
    consecutive points, and of the 25 splits only A | B is a Lloyd fixed point (checked split by split: at
    any other one some point is nearer the other run's mean), so k-means ends there from any start. Each group is symmetric about
    its middle point, so its mean points at that point's angle (0 and 1.2) and the members nearest the
    means are A's middle (index 10) and B's (23). k-means++ often seeds both centroids in the wide A
    (weighting by squared distance favours A's far end over B's few points); the boundary between them
    then walks towards the gap over several Lloyd steps, so a k-means stopped after one to three steps
    picks two points of A, or A's end and B's edge (kills a k-means limited to a few iterations)."""
    angles = torch.cat([0.05 * torch.arange(-10, 11), 1.2 + 0.02 * torch.arange(-2, 3)]).double()
    x = torch.stack([angles.cos(), angles.sin()], 1).float()
    for seed in range(8):
        assert sel.centroid_select(x, 2, seed=seed).tolist() == [10, 23], seed


# --- baselines -------------------------------------------------------------------------------------

def test_uncertainty_scores_hand_values():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [1.0, 0.0, 0.0], [0.6, 0.3, 0.1]])
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    h4 = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    assert torch.allclose(sel.entropy_scores(p), torch.tensor([math.log(2), h, 0.0, h4]), atol=1e-6)
    assert torch.allclose(sel.margin_scores(p), torch.tensor([0.0, -0.8, -1.0, -0.3]), atol=1e-6)
    assert torch.allclose(sel.least_confidence_scores(p), torch.tensor([0.5, 0.1, 0.0, 0.4]), atol=1e-6)
    assert sel.top_scores(sel.margin_scores(p), 2).tolist() == [0, 3]
    assert sel.top_scores(torch.tensor([1.0, 2.0, 2.0, 0.0]), 2).tolist() == [1, 2]  # ties: lower index


def test_kcenter_greedy_hand_made_and_brute_force():
    """Kills: nearest instead of farthest, or forgetting the already-labelled centres."""
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    assert sel.kcenter_greedy(x, torch.tensor([0]), 2).tolist() == [2, 4]  # 11 first, then 2
    y, _ = blobs(20, 3, seed=8)
    labelled = torch.tensor([0, 25])
    got = sel.kcenter_greedy(y, labelled, 5, chunk=7)
    centres, expected = labelled.tolist(), []
    for _ in range(5):
        d = torch.cdist(y, y[centres]).min(1).values
        d[centres] = -1
        centres.append(int(d.argmax()))
        expected.append(centres[-1])
    assert got.tolist() == sorted(expected)


def test_typicality_hand_values():
    x = torch.tensor([[0.0], [1.0], [3.0]])
    assert torch.allclose(sel.typicality(x, knn=1), torch.tensor([1.0, 1.0, 0.5]))
    assert torch.allclose(sel.typicality(x, knn=5), torch.tensor([2 / 4, 2 / 3, 2 / 5]))  # k = m - 1 = 2


def test_probcover_delta_and_greedy_hand_made():
    x = torch.tensor([[0.0], [0.1], [1.0]])
    # distance to the nearest point of another cluster: 1.0, 0.9, 0.9; all balls pure below 0.9
    assert sel.probcover_delta(x, torch.tensor([0, 0, 1]), purity=1.0) == pytest.approx(0.9, abs=1e-6)
    line = torch.tensor([[0.0], [0.1], [0.2], [5.0]])
    picks, covered = sel.probcover_select(line, 2, 0.15)
    assert picks.tolist() == [1, 3] and covered == 4  # 0.1 covers three, then the lone point


def test_one_per_cluster_members_first_then_fallback():
    p = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.6, 0.1, 0.3]])
    # cluster 0: members 0,1,3 -> 0; cluster 1: member 2; cluster 2: no member -> best p_2 unpicked = 3
    assert sel.one_per_cluster(p).tolist() == [0, 2, 3]
    q = torch.tensor([[0.5, 0.45, 0.05], [0.05, 0.45, 0.5], [0.2, 0.42, 0.38], [0.6, 0.1, 0.3]])
    # cluster 1's best p_1 overall is a member of clusters 0/2: its own member 2 must win (kills ignoring membership)
    assert sel.one_per_cluster(q).tolist() == [1, 2, 3]


def test_random_fill_and_random_select_are_seeded_and_distinct():
    a = sel.random_select(100, 10, seed=3)
    assert torch.equal(a, sel.random_select(100, 10, seed=3)) and len(set(a.tolist())) == 10
    assert not torch.equal(a, sel.random_select(100, 10, seed=4))
    filled = sel.random_fill(torch.tensor([5, 5, 7]), 20, 6, torch.Generator().manual_seed(0))
    assert len(filled) == 6 and {5, 7} <= set(filled.tolist()) and len(set(filled.tolist())) == 6


# --- memory bound ------------------------------------------------------------------------------------

def test_no_distance_block_is_n_by_n(monkeypatch):
    """Every distance matrix built by centroid, DropQuery, coreset, TypiClust and ProbCover stays within
    its block bound (chunk x k for k-means, MAX_BLOCK_ELEMS otherwise), never N x N. Kills a rewrite that
    calls cdist on the whole pool."""
    shapes: list[tuple[int, int]] = []
    real = km.pairwise_sq_dists

    def spy(a, b):
        shapes.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(km, "pairwise_sq_dists", spy)
    monkeypatch.setattr(sel, "pairwise_sq_dists", spy)
    monkeypatch.setattr(sel, "MAX_BLOCK_ELEMS", 20_000)
    n, chunk, budget = 3000, 256, 12
    x, _ = blobs(n // 6, 6, dim=16, seed=9)
    mismatch = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(0))
    sel.centroid_select(x, budget, chunk=chunk)
    sel.dropquery_select(x, mismatch, budget, chunk=chunk)
    sel.kcenter_greedy(x, torch.arange(5), budget, chunk=chunk)
    assert shapes and max(r for r, _ in shapes) <= chunk and max(c for _, c in shapes) <= budget
    shapes.clear()
    small = x[:600]
    sel.typicality(small, knn=5)
    sel.probcover_delta(small, torch.arange(600) % 3)
    sel.probcover_select(small, 5, 0.1)
    assert shapes and all(r * c <= 20_000 for r, c in shapes) and all(r < 600 for r, _ in shapes)


# --- UP-DP losses --------------------------------------------------------------------------------------

def _nt_xent_loop(a: torch.Tensor, b: torch.Tensor, t: float) -> float:
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1).double()
    n, total = len(a), 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [float(z[i] @ z[k]) / t for k in range(2 * n) if k != i]
        total += -(float(z[i] @ z[j]) / t - math.log(sum(math.exp(s) for s in sims)))
    return total / (2 * n)


def test_nt_xent_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert float(nt_xent(a, b, 0.5)) == pytest.approx(_nt_xent_loop(a, b, 0.5), rel=1e-5)
    assert float(instance_loss(a, b)) == pytest.approx(_nt_xent_loop(a, b, 0.5), rel=1e-5)  # default 0.5


def test_cluster_entropy_and_cluster_loss_hand_values():
    uniform = torch.full((4, 2), 0.5)
    assert float(cluster_entropy(uniform)) == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(cluster_entropy(collapsed)) == pytest.approx(math.log(2), abs=1e-6)
    g = torch.Generator().manual_seed(1)
    p1, p2 = torch.rand(6, 3, generator=g).softmax(1), torch.rand(6, 3, generator=g).softmax(1)
    expected = _nt_xent_loop(p1.T, p2.T, 1.0) + float(cluster_entropy(p1)) + float(cluster_entropy(p2))
    assert float(cluster_loss(p1, p2)) == pytest.approx(expected, rel=1e-5)  # default temperature 1.0
