"""Zero-shot pseudolabels and how trustworthy they are: per-sample statistics and calibration.

Pure functions on tensors/arrays, unit-tested against hand-computed values (tests/test_methods_pseudolabels.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def zero_shot_probs(image_features: torch.Tensor, classifier: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Softmax of ``logit_scale * normalize(image) @ classifier.T``; ``classifier`` is (C, D), unit rows."""
    logits = logit_scale * F.normalize(image_features.float(), dim=-1) @ classifier.float().T
    return logits.softmax(dim=-1)


@dataclass
class PseudolabelStats:
    """Per-sample pseudolabel facts: argmax, its probability, top1 - top2, entropy (nats), top-k."""

    label: torch.Tensor
    confidence: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor
    topk_classes: torch.Tensor
    topk_probs: torch.Tensor


def pseudolabel_stats(probs: torch.Tensor, k: int) -> PseudolabelStats:
    """Statistics of an (N, C) probability matrix; ``k`` is clipped to C.

    With a single class there is no runner-up, so the margin is the top probability itself.
    """
    k = max(1, min(k, probs.shape[1]))
    top_probs, top_classes = probs.topk(max(k, min(2, probs.shape[1])), dim=1)
    second = top_probs[:, 1] if top_probs.shape[1] > 1 else torch.zeros_like(top_probs[:, 0])
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
    return PseudolabelStats(
        label=top_classes[:, 0],
        confidence=top_probs[:, 0],
        margin=top_probs[:, 0] - second,
        entropy=entropy,
        topk_classes=top_classes[:, :k],
        topk_probs=top_probs[:, :k],
    )


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Equal-width confidence bins over [0, 1]: count, mean confidence and accuracy per bin.

    A confidence of exactly 1.0 falls in the last bin; empty bins have count 0 and NaN means.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)|."""
    bins = reliability_bins(confidence, correct, n_bins)
    filled = bins["count"] > 0
    weights = bins["count"][filled] / max(1, len(confidence))
    return float(np.sum(weights * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))


def accuracy_at_thresholds(
    confidence: np.ndarray, correct: np.ndarray, thresholds: list[float]
) -> list[dict[str, float]]:
    """For each threshold t: the share of samples with confidence >= t (coverage) and their accuracy."""
    confidence = np.asarray(confidence)
    correct = np.asarray(correct, dtype=bool)
    rows = []
    for t in thresholds:
        keep = confidence >= t
        n = int(keep.sum())
        rows.append(
            {
                "threshold": float(t),
                "coverage": n / max(1, len(confidence)),
                "count": n,
                "accuracy": float(correct[keep].mean()) if n else float("nan"),
            }
        )
    return rows
