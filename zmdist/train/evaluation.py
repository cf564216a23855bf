"""Evaluation exact-once across ranks: confusion matrices against ground truth and against pseudolabels."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from zmdist.backends.base import Backend
from zmdist.train.contract import StreamItem
from zmdist.train.metrics import classification_metrics, confusion_matrix


def main_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The main head's logits (a dual-head model returns (main, aux); evaluation uses the main head)."""
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


class Evaluator:
    """Runs the model over one rank's share of an evaluation split (``mode="eval"`` loader: every sample
    exactly once over all ranks), sums confusion matrices over ranks, returns metrics.

    ``ground_truth=False`` (a hold-out slice of the training split used to select ZeroMatch's stage 0)
    reports only ``pseudolabel_agreement``: no label is read for model selection there."""

    def __init__(self, loader: DataLoader, num_classes: int, ground_truth: bool = True, name: str = "eval"):
        self.loader, self.num_classes, self.ground_truth, self.name = loader, num_classes, ground_truth, name

    @torch.inference_mode()
    def __call__(self, backend: Backend) -> dict[str, Any]:
        model, c = backend.model, self.num_classes
        model.eval()
        cm_gt = torch.zeros(c, c, dtype=torch.long, device=backend.device)
        cm_pl = torch.zeros_like(cm_gt)
        item: StreamItem
        for item in self.loader:
            with backend.autocast():
                preds = main_logits(model, item.weak.to(backend.device)).argmax(dim=1)
            labels, pl = item.label.to(preds.device), item.pseudolabel.to(preds.device)
            if self.ground_truth:
                cm_gt += confusion_matrix(preds[labels >= 0], labels[labels >= 0], c)
            cm_pl += confusion_matrix(preds[pl >= 0], pl[pl >= 0], c)
        model.train()
        cm_gt, cm_pl = backend.all_reduce(cm_gt).cpu(), backend.all_reduce(cm_pl).cpu()
        metrics: dict[str, Any] = {"split": self.name,
                                   "pseudolabel_agreement": classification_metrics(cm_pl)["top1"] if cm_pl.sum() else None}
        if self.ground_truth:
            metrics.update(classification_metrics(cm_gt))
            metrics["confusion_matrix"] = cm_gt.tolist()
        return metrics
