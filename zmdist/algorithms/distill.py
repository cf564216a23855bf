"""``method.name=distill``: knowledge distillation from the teacher's stored probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zmdist.algorithms.forward import forward_parts
from zmdist.algorithms.registry import METHODS, PlanContext
from zmdist.algorithms.supervised import Supervised
from zmdist.config import option
from zmdist.methods import ssl
from zmdist.train.contract import Batch, DataNeeds, Phase, ReduceMean


class Distill(Supervised):
    """KL at temperature ``temperature`` to the teacher's soft probabilities (``soft``), or CE on its hard
    labels; optionally weighted by its confidence."""

    needs = DataNeeds(stream=True)

    def __init__(self, soft: bool = True, temperature: float = 1.0, confidence_weighted: bool = False):
        self.soft, self.temperature, self.confidence_weighted = soft, temperature, confidence_weighted

    def loss(self, model: torch.nn.Module, batch: Batch, step: int, total: int, reduce_mean: ReduceMean):
        (logits,), _ = forward_parts(model, batch.x_ulb_w)
        weights = batch.conf_ulb if self.confidence_weighted else None
        if self.soft:
            loss = ssl.distillation_loss(logits, batch.probs_ulb, self.temperature, weights)
        else:
            loss = ssl.cross_entropy(logits, batch.yp_ulb, weights)
        return loss, {"loss": loss.detach()}


@METHODS.register("distill")
@dataclass
class DistillConfig:
    name: str = "distill"
    temperature: float = option(1.0, "temperature T of the KL term", min=0, min_exclusive=True)
    soft: bool = option(True, "KL to soft probabilities (true) or CE on hard labels (false)")
    confidence_weighted: bool = option(False, "weight each sample by the teacher's confidence")

    def phases(self, ctx: PlanContext) -> list[Phase]:
        return [Phase("", Distill(self.soft, self.temperature, self.confidence_weighted), ctx.steps)]
