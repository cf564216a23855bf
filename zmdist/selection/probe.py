"""The dropout linear probe of Gupte et al. (2024): ``Dropout(p) -> BatchNorm1d(affine=False) -> Linear``.

Trained on the labelled features with AdamW (lr 1e-2, wd 1e-2, p = 0.75 by default). Dropout is drawn
from an explicit ``torch.Generator`` (not the global RNG), so training and DropQuery's dropout passes
are a function of the seed alone. At prediction time BatchNorm uses its running statistics in every
pass, and only the input dropout is switched on for DropQuery's M passes: the disagreement then
measures how fragile a prediction is to losing features, not batch-statistics noise.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from zmdist.config import option
from zmdist.train.metrics import classification_metrics, confusion_matrix

PREDICT_CHUNK = 65536


@dataclass
class ProbeConfig:
    dropout: float = option(0.75, "input dropout of the linear probe", min=0.0, max=0.95)
    lr: float = option(1e-2, "AdamW learning rate", min=0.0, min_exclusive=True)
    weight_decay: float = option(1e-2, "AdamW weight decay", min=0.0)
    steps: int = option(200, "optimiser steps per training", min=1)
    batch_size: int = option(256, "labelled samples per step (the whole labelled set when smaller)", min=2)


class DropoutProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.p = dropout
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits; with ``generator``, input dropout is applied (training, DropQuery passes)."""
        if generator is not None and self.p > 0:
            keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.p
            x = x * keep / (1.0 - self.p)
        return self.linear(self.norm(x))


@contextmanager
def small_ops(device: torch.device) -> Iterator[None]:
    """One intra-op thread on the CPU while training the probe or UP-DP's heads, restored after.

    Why: their matmuls are tiny (tens to hundreds of rows), so several threads only add synchronisation;
    measured here with other jobs on the 2 cores, 200 probe steps took 3.5 s with 2 threads, 0.19 s with 1."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def train_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeConfig, *, seed: int,
                device: torch.device) -> DropoutProbe:
    """Fit a probe on (few) labelled features; batches drawn with replacement, seeded."""
    torch.manual_seed(int(seed))  # the Linear's init
    probe = DropoutProbe(features.shape[1], num_classes, cfg.dropout).to(device)
    x = features.to(device, torch.float32)
    y = labels.to(device)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = _generator(seed, device)
    batch = min(cfg.batch_size, len(x))
    probe.train()
    with small_ops(device):
        _fit(probe, x, y, optimiser, gen, batch, cfg.steps)
    probe.eval()
    return probe


def _fit(probe: DropoutProbe, x: torch.Tensor, y: torch.Tensor, optimiser: torch.optim.Optimizer,
         gen: torch.Generator, batch: int, steps: int) -> None:
    for _ in range(steps):
        if batch < len(x):
            idx = torch.randint(len(x), (batch,), generator=gen, device=x.device)
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        loss = F.cross_entropy(probe(xb, gen), yb)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()


@torch.no_grad()
def predict(probe: DropoutProbe, features: torch.Tensor, *, passes: int = 0, seed: int = 0,
            device: torch.device, chunk: int = PREDICT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean probabilities (N, C) on the CPU, dropout-pass predictions (passes, N) int64), in row blocks.

    Only the (N, C) probabilities and (M, N) argmaxes are kept: O(N (C + M)) memory."""
    probe.eval()
    gen = _generator(seed + 1, device)
    probs, preds = [], []
    for start in range(0, len(features), chunk):
        x = features[start:start + chunk].to(device, torch.float32)
        probs.append(probe(x).softmax(1).cpu())
        preds.append(torch.stack([probe(x, gen).argmax(1).cpu() for _ in range(passes)])
                     if passes else torch.empty((0, len(x)), dtype=torch.long))
    return torch.cat(probs), torch.cat(preds, dim=1)


def accuracy_report(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Top-1 and class-weighted (mean per-class) accuracy, the AL papers' metric, via the training
    code's own confusion-matrix metrics (so the two can never disagree)."""
    metrics = classification_metrics(confusion_matrix(probs.argmax(1), labels, num_classes))
    return {"accuracy": metrics["top1"], "class_weighted_accuracy": metrics["class_weighted_accuracy"]}
