"""``method.name=fixmatch``: labelled CE + FixMatch consistency (fixed threshold on the weak view)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zmdist.algorithms.forward import forward_parts
from zmdist.algorithms.registry import METHODS, PlanContext
from zmdist.algorithms.supervised import Supervised
from zmdist.config import option
from zmdist.methods import ssl
from zmdist.train.contract import Batch, DataNeeds, Phase, ReduceMean


class FixMatch(Supervised):
    """``CE(f(w(x_lb)), y_lb) + lambda_u * mean(1[max p >= p_cutoff] * CE(f(s(x_ulb)), argmax p))``.

    ``unsup`` is the consistency term alone, so ZeroMatch can put it under its own objective."""

    needs = DataNeeds(labelled=True, stream=True, strong=True)

    def __init__(self, p_cutoff: float = 0.95, lambda_u: float = 1.0):
        self.p_cutoff, self.lambda_u = p_cutoff, lambda_u

    def unsup(self, lb: torch.Tensor, w: torch.Tensor, s: torch.Tensor,
              reduce_mean: ReduceMean) -> tuple[torch.Tensor, torch.Tensor]:
        return ssl.fixmatch_unsup(w, s, self.p_cutoff)

    def loss(self, model: torch.nn.Module, batch: Batch, step: int, total: int, reduce_mean: ReduceMean):
        (lb, w, s), _ = forward_parts(model, batch.x_lb, batch.x_ulb_w, batch.x_ulb_s)
        sup = ssl.cross_entropy(lb, batch.y_lb)
        unsup, mask = self.unsup(lb, w, s, reduce_mean)
        loss = sup + self.lambda_u * unsup
        return loss, {"loss": loss.detach(), "sup": sup.detach(), "unsup": unsup.detach(), "mask": mask.mean()}


@METHODS.register("fixmatch")
@dataclass
class FixMatchConfig:
    name: str = "fixmatch"
    p_cutoff: float = option(0.95, "confidence threshold on the weak view", min=0, max=1)
    lambda_u: float = option(1.0, "weight of the consistency term", min=0)

    def phases(self, ctx: PlanContext) -> list[Phase]:
        return [Phase("", FixMatch(self.p_cutoff, self.lambda_u), ctx.steps)]
