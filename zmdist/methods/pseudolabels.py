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


def reliability_sums(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """(3, n_bins) per equal-width confidence bin over [0, 1]: count, sum of confidence, sum of correct.

    Additive over disjoint sample sets, so a dataset's bins are the sum of its shards' (streamed, never
    all in memory). A confidence of exactly 1.0 falls in the last bin."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    return np.stack([np.bincount(which, minlength=n_bins).astype(np.float64),
                     np.bincount(which, weights=confidence, minlength=n_bins),
                     np.bincount(which, weights=correct, minlength=n_bins)])


def bins_from_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Count, mean confidence and accuracy per bin from ``reliability_sums``; empty bins have NaN means."""
    count = sums[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, accuracy = sums[1] / count, sums[2] / count
    return {"edges": np.linspace(0.0, 1.0, sums.shape[1] + 1), "count": count.astype(np.int64),
            "confidence": mean_conf, "accuracy": accuracy}


def calibration_error(bins: dict[str, np.ndarray]) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)|."""
    filled = bins["count"] > 0
    weights = bins["count"][filled] / max(1, int(bins["count"].sum()))
    return float(np.sum(weights * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Equal-width confidence bins over [0, 1]: count, mean confidence and accuracy per bin.

    A confidence of exactly 1.0 falls in the last bin; empty bins have count 0 and NaN means.
    """
    return bins_from_sums(reliability_sums(confidence, correct, n_bins))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)|."""
    return calibration_error(reliability_bins(confidence, correct, n_bins))


def threshold_counts(confidence: np.ndarray, correct: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """(2, T): per threshold t, how many samples have confidence >= t and how many of those are correct.
    Additive over disjoint sample sets (see ``reliability_sums``)."""
    confidence = np.asarray(confidence)
    correct = np.asarray(correct, dtype=bool)
    keep = confidence[None, :] >= np.asarray(thresholds, dtype=np.float64)[:, None]
    return np.stack([keep.sum(1), (keep & correct[None, :]).sum(1)]).astype(np.int64)


def thresholds_from_counts(counts: np.ndarray, total: int, thresholds: list[float]) -> list[dict[str, float]]:
    """Coverage and accuracy per threshold from ``threshold_counts`` over ``total`` samples."""
    return [{"threshold": float(t), "coverage": int(n) / max(1, total), "count": int(n),
             "accuracy": int(c) / int(n) if n else float("nan")} for t, n, c in zip(thresholds, *counts)]


def accuracy_at_thresholds(
    confidence: np.ndarray, correct: np.ndarray, thresholds: list[float]
) -> list[dict[str, float]]:
    """For each threshold t: the share of samples with confidence >= t (coverage) and their accuracy."""
    return thresholds_from_counts(threshold_counts(confidence, correct, thresholds), len(np.asarray(confidence)),
                                  thresholds)
