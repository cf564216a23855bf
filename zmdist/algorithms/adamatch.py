"""``method.name=adamatch``: labelled CE + AdaMatch consistency (distribution alignment, relative threshold)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from zmdist.algorithms.fixmatch import FixMatch, FixMatchConfig
from zmdist.algorithms.registry import METHODS, PlanContext
from zmdist.config import option
from zmdist.methods import ssl
from zmdist.train.contract import Phase, ReduceMean


class AdaMatch(FixMatch):
    """FixMatch's loss with AdaMatch's ``L_u``: weak-view probabilities aligned by the running class
    marginals (EMA, averaged across ranks so every rank holds the same state, checkpointed) and a threshold
    relative to the labelled batch's mean confidence. The state lives on the device of the logits, also
    after a resume (``load_state_dict(state, device)``)."""

    def __init__(self, p_cutoff: float = 0.95, lambda_u: float = 1.0, momentum: float = 0.999,
                 da_init: ssl.DAInit = "first_batch"):
        super().__init__(p_cutoff, lambda_u)
        self.momentum, self.da_init = momentum, da_init
        self.state: ssl.AdaMatchState | None = None

    def unsup(self, lb: torch.Tensor, w: torch.Tensor, s: torch.Tensor,
              reduce_mean: ReduceMean) -> tuple[torch.Tensor, torch.Tensor]:
        loss, mask, self.state = ssl.adamatch_unsup(w, s, lb, self.state, self.p_cutoff, self.momentum,
                                                    reduce_mean=reduce_mean, init=self.da_init)
        return loss, mask

    def state_dict(self) -> dict[str, Any]:
        if self.state is None:
            return {}
        return {k: v.cpu().tolist() for k, v in self.state.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.state = None
        if state:
            self.state = ssl.AdaMatchState(torch.tensor(state["p_model"], device=device),
                                           torch.tensor(state["p_target"], device=device))


@METHODS.register("adamatch")
@dataclass
class AdaMatchConfig(FixMatchConfig):
    """FixMatch's options (``p_cutoff`` is the relative factor: mask = max p~ >= p_cutoff * mean(max p_lb))
    plus the distribution alignment's."""

    name: str = "adamatch"
    momentum: float = option(0.999, "EMA momentum of the class marginals", min=0, max=1)
    da_init: Literal["first_batch", "uniform"] = option(
        "first_batch", "distribution alignment start: model marginal from the first unlabelled batch (USB) or uniform")

    def build(self) -> AdaMatch:
        return AdaMatch(self.p_cutoff, self.lambda_u, self.momentum, self.da_init)

    def phases(self, ctx: PlanContext) -> list[Phase]:
        return [Phase("", self.build(), ctx.steps)]
