"""Classification metrics from a confusion matrix (which sums exactly across ranks)."""

from __future__ import annotations

import torch


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(cm: torch.Tensor) -> dict[str, object]:
    """top-1, class-weighted (mean per-class) accuracy, per-class accuracy; classes absent from the
    targets are left out of the class-weighted mean."""
    cm = cm.double()
    support = cm.sum(dim=1)
    per_class = torch.where(support > 0, cm.diag() / support.clamp_min(1), torch.full_like(support, float("nan")))
    present = support > 0
    return {
        "top1": float(cm.diag().sum() / cm.sum().clamp_min(1)),
        "class_weighted_accuracy": float(per_class[present].mean()) if present.any() else float("nan"),
        "per_class_accuracy": [None if torch.isnan(v) else float(v) for v in per_class],
        "samples": int(cm.sum()),
    }
