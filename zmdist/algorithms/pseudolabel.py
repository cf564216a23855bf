"""``method.name=pseudolabel``: the teacher's hard pseudolabels used as if they were labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zmdist.algorithms.forward import forward_parts
from zmdist.algorithms.registry import METHODS, PlanContext
from zmdist.algorithms.supervised import Supervised
from zmdist.config import option
from zmdist.methods import ssl
from zmdist.train.contract import Batch, DataNeeds, Phase, ReduceMean


class PseudoLabel(Supervised):
    """``mean(1[c >= threshold] * CE(f(weak(x_ulb)), yp))`` over the unlabelled stream (also ZeroMatch's
    stage 0 with ``threshold = 0``)."""

    needs = DataNeeds(stream=True)

    def __init__(self, threshold: float = 0.0):
        self.threshold = threshold

    def loss(self, model: torch.nn.Module, batch: Batch, step: int, total: int, reduce_mean: ReduceMean):
        (logits,), _ = forward_parts(model, batch.x_ulb_w)
        mask = (batch.conf_ulb >= self.threshold).float()
        loss = ssl.cross_entropy(logits, batch.yp_ulb, mask)
        return loss, {"loss": loss.detach(), "mask": mask.mean()}


@METHODS.register("pseudolabel")
@dataclass
class PseudoLabelConfig:
    name: str = "pseudolabel"
    threshold: float = option(0.0, "keep samples whose teacher confidence >= this (0 = all)", min=0, max=1)

    def phases(self, ctx: PlanContext) -> list[Phase]:
        return [Phase("", PseudoLabel(self.threshold), ctx.steps)]
