"""Training methods as small objects: which data a method needs and how a batch becomes a loss.

Each ``loss`` does the forward passes and calls the pure loss functions of ``zmdist.methods.ssl``; the
engine does everything else. Labelled, weak and strong batches go through the model in ONE forward pass
(as USB does) so batch-norm statistics see all of them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from zmdist.methods import ssl
from zmdist.train.engine import Batch

ReduceMean = Callable[[torch.Tensor], torch.Tensor]


def _split(logits: torch.Tensor, *sizes: int) -> list[torch.Tensor]:
    return list(torch.split(logits, list(sizes)))


def _forward(model: torch.nn.Module, *parts: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """One forward over the concatenated parts; (main logits per part, aux logits per part or None)."""
    out = model(torch.cat(parts))
    sizes = [len(p) for p in parts]
    if isinstance(out, tuple):
        return _split(out[0], *sizes), _split(out[1], *sizes)
    return _split(out, *sizes), None


@dataclass
class Supervised:
    """``CE(f(weak(x_lb)), y_lb)`` on the labelled subset only: the baseline every table needs."""

    uses_labelled: bool = True
    uses_stream: bool = False
    needs_strong: bool = False

    def loss(self, model, batch: Batch, step: int, total: int, reduce_mean: ReduceMean):
        (logits,), _ = _forward(model, batch.x_lb)
        loss = ssl.cross_entropy(logits, batch.y_lb)
        return loss, {"loss": loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class PseudoLabel(Supervised):
    """Naive baseline: CE on the teacher's hard pseudolabels as if they were labels, optionally only where
    the teacher's confidence >= ``threshold``."""

    threshold: float = 0.0
    uses_labelled: bool = False
    uses_stream: bool = True

    def loss(self, model, batch: Batch, step: int, total: int, reduce_mean: ReduceMean):
        (logits,), _ = _forward(model, batch.x_ulb_w)
        mask = (batch.conf_ulb >= self.threshold).float()
        loss = ssl.cross_entropy(logits, batch.yp_ulb, mask)
        return loss, {"loss": loss.detach(), "mask": mask.mean()}


@dataclass
class Distill(Supervised):
    """Knowledge distillation from the teacher: KL at temperature ``temperature`` to its soft
    probabilities (``soft``), or CE on its hard labels; optionally weighted by its confidence."""

    soft: bool = True
    temperature: float = 1.0
    confidence_weighted: bool = False
    uses_labelled: bool = False
    uses_stream: bool = True

    def loss(self, model, batch: Batch, step: int, total: int, reduce_mean: ReduceMean):
        (logits,), _ = _forward(model, batch.x_ulb_w)
        weights = batch.conf_ulb if self.confidence_weighted else None
        if self.soft:
            loss = ssl.distillation_loss(logits, batch.probs_ulb, self.temperature, weights)
        else:
            loss = ssl.cross_entropy(logits, batch.yp_ulb, weights)
        return loss, {"loss": loss.detach()}


@dataclass
class FixMatch(Supervised):
    """Labelled CE + ``lambda_u`` * FixMatch consistency (fixed threshold ``p_cutoff`` on the weak view)."""

    p_cutoff: float = 0.95
    lambda_u: float = 1.0
    uses_stream: bool = True
    needs_strong: bool = True

    def unsup(self, lb: torch.Tensor, w: torch.Tensor, s: torch.Tensor, reduce_mean: ReduceMean):
        loss, mask = ssl.fixmatch_unsup(w, s, self.p_cutoff)
        return loss, mask

    def loss(self, model, batch: Batch, step: int, total: int, reduce_mean: ReduceMean):
        (lb, w, s), _ = _forward(model, batch.x_lb, batch.x_ulb_w, batch.x_ulb_s)
        sup = ssl.cross_entropy(lb, batch.y_lb)
        unsup, mask = self.unsup(lb, w, s, reduce_mean)
        loss = sup + self.lambda_u * unsup
        return loss, {"loss": loss.detach(), "sup": sup.detach(), "unsup": unsup.detach(), "mask": mask.mean()}


@dataclass
class AdaMatch(FixMatch):
    """Labelled CE + AdaMatch consistency: distribution alignment (EMA marginals, synchronised across
    ranks) and a threshold relative to the labelled batch's confidence."""

    num_classes: int = 2
    momentum: float = 0.999
    state: ssl.AdaMatchState | None = field(default=None, repr=False)

    def unsup(self, lb: torch.Tensor, w: torch.Tensor, s: torch.Tensor, reduce_mean: ReduceMean):
        if self.state is None:
            self.state = ssl.AdaMatchState.uniform(self.num_classes, device=w.device)
        loss, mask, self.state = ssl.adamatch_unsup(w, s, lb, self.state, self.p_cutoff, self.momentum,
                                                    reduce_mean=reduce_mean)
        return loss, mask

    def state_dict(self) -> dict[str, Any]:
        if self.state is None:
            return {}
        return {k: v.cpu().tolist() for k, v in self.state.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.state = ssl.AdaMatchState(torch.tensor(state["p_model"]), torch.tensor(state["p_target"]))


@dataclass
class ZeroMatch:
    """ZeroMatch stage 1: labelled CE on the main head + ``lambda_p * alpha_t`` * CE of the AUXILIARY head
    on [labelled; weak unlabelled] against the teacher's pseudolabels + ``lambda_u`` * the consistency
    term of ``ssl_method`` (AdaMatch or FixMatch) on the main head. Pseudolabels reach the model only
    through the auxiliary head; evaluation uses the main head."""

    ssl_method: FixMatch
    lambda_p: float = 1.0
    anneal: ssl.Anneal = "linear"
    uses_labelled: bool = True
    uses_stream: bool = True
    needs_strong: bool = True

    def loss(self, model, batch: Batch, step: int, total: int, reduce_mean: ReduceMean):
        (lb, w, s), aux = _forward(model, batch.x_lb, batch.x_ulb_w, batch.x_ulb_s)
        if aux is None:
            raise TypeError("zeromatch needs a model with an auxiliary head (zmdist.models.DualHead)")
        unsup, mask = self.ssl_method.unsup(lb, w, s, reduce_mean)
        alpha = ssl.zeromatch_alpha(step, total, self.anneal)
        terms = ssl.zeromatch_loss(
            lb, batch.y_lb, torch.cat([aux[0], aux[1]]), torch.cat([batch.yp_lb, batch.yp_ulb]), unsup, alpha,
            self.lambda_p, self.ssl_method.lambda_u,
        )
        logs = {k if k != "total" else "loss": v.detach() for k, v in terms.items()}
        return terms["total"], {**logs, "alpha": torch.tensor(alpha), "mask": mask.mean()}

    def state_dict(self) -> dict[str, Any]:
        return self.ssl_method.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ssl_method.load_state_dict(state)
