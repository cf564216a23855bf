"""``method.name=zeromatch``: ZeroMatch (Chung & Chen, TMLR; ``../shared/notes/METHODS.md`` section 1).

Phase ``stage0``: distil the teacher's hard pseudolabels into the student over the training split (CE,
true labels unused); the kept weights are those that agree best with the teacher on a seeded hold-out
slice of the TRAINING split (no test image, no label), stopping early once agreement reaches
``early_stop`` (the official code: 0.9999). Phase ``stage1`` starts from those weights, adds the auxiliary
head and trains ``CE(main(x_lb), y_lb) + lambda_p * alpha_t * CE(aux([x_lb; w(x_ulb)]), [yp_lb; yp_ulb])
+ lambda_u * L_u`` with ``L_u`` AdaMatch's (or FixMatch's) consistency on the main head. Pseudolabels
reach the model only through the auxiliary head; evaluation uses the main head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from zmdist.algorithms.adamatch import AdaMatchConfig
from zmdist.algorithms.fixmatch import FixMatch
from zmdist.algorithms.forward import forward_parts
from zmdist.algorithms.pseudolabel import PseudoLabel
from zmdist.algorithms.registry import METHODS, PlanContext
from zmdist.config import option
from zmdist.methods import ssl
from zmdist.train.contract import Batch, DataNeeds, Phase, ReduceMean


class ZeroMatch:
    """Stage 1 of ZeroMatch around a consistency method (``ssl_method``: AdaMatch or FixMatch)."""

    needs = DataNeeds(labelled=True, stream=True, strong=True)

    def __init__(self, ssl_method: FixMatch, lambda_p: float = 1.0, anneal: ssl.Anneal = "linear"):
        self.ssl_method, self.lambda_p, self.anneal = ssl_method, lambda_p, anneal

    def loss(self, model: torch.nn.Module, batch: Batch, step: int, total: int, reduce_mean: ReduceMean):
        (lb, w, s), aux = forward_parts(model, batch.x_lb, batch.x_ulb_w, batch.x_ulb_s)
        if aux is None:
            raise TypeError("zeromatch needs a model with an auxiliary head (zmdist.models.DualHead)")
        unsup, mask = self.ssl_method.unsup(lb, w, s, reduce_mean)
        alpha = ssl.zeromatch_alpha(step, total, self.anneal)
        terms = ssl.zeromatch_loss(
            lb, batch.y_lb, torch.cat([aux[0], aux[1]]), torch.cat([batch.yp_lb, batch.yp_ulb]), unsup, alpha,
            self.lambda_p, self.ssl_method.lambda_u,
        )
        logs = {("loss" if k == "total" else k): v.detach() for k, v in terms.items()}
        return terms["total"], {**logs, "alpha": torch.tensor(alpha), "mask": mask.mean()}

    def state_dict(self) -> dict[str, Any]:
        return self.ssl_method.state_dict()

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.ssl_method.load_state_dict(state, device)


@METHODS.register("zeromatch")
@dataclass
class ZeroMatchConfig(AdaMatchConfig):
    """AdaMatch's options (used when ``ssl_method=adamatch``; ``p_cutoff``/``lambda_u`` also for FixMatch)
    plus ZeroMatch's own."""

    name: str = "zeromatch"
    stage0_steps: int = option(500, "stage-0 distillation steps (0 skips stage 0)", min=0)
    early_stop: float | None = option(0.9999, "stop stage 0 once hold-out agreement reaches this (null = never)")
    lambda_p: float = option(1.0, "weight of the auxiliary pseudolabel term", min=0)
    anneal: Literal["linear", "none"] = option("linear", "alpha_t from 0 to 1 over stage 1 (linear) or fixed 1 (none)")
    ssl_method: Literal["adamatch", "fixmatch"] = option("adamatch", "consistency term of stage 1")

    def phases(self, ctx: PlanContext) -> list[Phase]:
        consistency = (self.build()
                       if self.ssl_method == "adamatch" else FixMatch(self.p_cutoff, self.lambda_u))
        stage1 = Phase("stage1", ZeroMatch(consistency, self.lambda_p, self.anneal), ctx.steps, dual_head=True,
                       init_from="stage0" if self.stage0_steps else None)
        if not self.stage0_steps:
            return [stage1]
        stage0 = Phase("stage0", PseudoLabel(0.0), self.stage0_steps, selection="holdout_agreement",
                       early_stop=self.early_stop)
        return [stage0, stage1]
