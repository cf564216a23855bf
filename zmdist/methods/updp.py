"""UP-DP's training losses (Li et al., NeurIPS 2023), which are Contrastive Clustering's (Li et al., AAAI 2021).

- instance level: NT-Xent between the two views' instance-head outputs, temperature 0.5: each of the 2N
  rows must pick its other view among the 2N - 1 others by cosine similarity;
- cluster level: the same contrast between the COLUMNS of the two views' (N, K) cluster-probability
  matrices (each column: how cluster k spreads over the batch), cosine, temperature 1.0, plus, per view,
  the entropy term ``log K + sum_k P_k log P_k`` with ``P_k`` the batch share of cluster k; it is 0 for
  uniform cluster sizes and grows as clusters collapse, so minimising it keeps every cluster in use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy of paired rows ``a[i] <-> b[i]`` (both (N, D)), mean over 2N."""
    n = len(a)
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))  # a row is never its own positive or negative
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return F.cross_entropy(sim, target)


def instance_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Instance-level contrast of the two views' instance features."""
    return nt_xent(z1, z2, temperature)


def cluster_entropy(p: torch.Tensor) -> torch.Tensor:
    """``log K + sum_k P_k log P_k`` of the batch's cluster shares ``P = p.sum(0) / p.sum()``."""
    share = p.sum(0) / p.sum()
    return math.log(p.shape[1]) + (share * torch.log(share.clamp_min(1e-12))).sum()


def cluster_loss(p1: torch.Tensor, p2: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cluster-level contrast between the columns of the views' probabilities, plus both entropy terms."""
    return nt_xent(p1.T, p2.T, temperature) + cluster_entropy(p1) + cluster_entropy(p2)
