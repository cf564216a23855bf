"""``method.name=supervised``: cross-entropy on the labelled subset only, the baseline every table needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zmdist.algorithms.forward import forward_parts
from zmdist.algorithms.registry import METHODS, PlanContext
from zmdist.methods import ssl
from zmdist.train.contract import Batch, DataNeeds, Phase, ReduceMean


class Supervised:
    """``CE(f(weak(x_lb)), y_lb)``."""

    needs = DataNeeds(labelled=True)

    def loss(self, model: torch.nn.Module, batch: Batch, step: int, total: int, reduce_mean: ReduceMean):
        (logits,), _ = forward_parts(model, batch.x_lb)
        loss = ssl.cross_entropy(logits, batch.y_lb)
        return loss, {"loss": loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        pass


@METHODS.register("supervised")
@dataclass
class SupervisedConfig:
    name: str = "supervised"

    def phases(self, ctx: PlanContext) -> list[Phase]:
        return [Phase("", Supervised(), ctx.steps)]
