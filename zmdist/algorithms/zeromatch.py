"""``method.name=zeromatch``: ZeroMatch (Chung & Chen, TMLR; ``docs/methods.md`` section 1).

Phase ``stage0``: distil the teacher's hard pseudolabels into the student over the training split (CE,
true labels unused); the kept weights are those that agree best with the teacher's pseudolabels on
training images (no test image, no label), chosen by ``stage0_selection``:

- ``holdout`` (default; this project's design, not the released code's): a seeded hold-out slice of the
  training split that stage 0 does not train on. Agreement there estimates how well the student
  generalises the teacher, so the selection means something; it rarely reaches 0.9999, so ``early_stop``
  seldom fires and stage 0 mostly runs its ``stage0_steps``.
- ``train_sample``: what the released code does (jichan3751/zeromatch @8ca4079, under train_zeromatch/).
  Stage 0 trains on ALL training images (semilearn/datasets/cv_datasets/cifar.py:99-102) and is evaluated,
  eval transform, on a sample of those same images drawn once with the seed: all when n <= 9,000, 20% above,
  10% above 90,000 (cifar.py:152-179, framed.py:140-167; ``zmdist.train.data.train_sample_size``). The
  metric is top-1 agreement with the pseudolabels (core/algorithmbase.py:372-395); the best is kept on a
  strict improvement (core/hooks/evaluation.py:21-23, saved as model_best.pth by core/hooks/checkpoint.py:24-25,
  which stage 1 loads: scripts_zm/train_cifar.sh:59) and training stops once the best EXCEEDS 0.9999
  (algorithms/fullysupervised/fullysupervised.py:63), reachable because it measures fit. The released check
  runs at the next epoch start; its configs evaluate on an epoch's last step (1,024 steps an epoch,
  core/utils/build.py:169-171), so stopping at the evaluation, as here, is the same run.
  Released stage-0 cadence (config/usb_cv_paper/fullysupervised/fullysupervised_cifar100_400_paper_0.yaml:10-15;
  config/usb_cv_framed_paper/fullysupervised/fullysupervised_{flowers,resisc}_400_paper_0.yaml:10-15):
  CIFAR-100 204,800 steps, warm-up 5,120, evaluation every 2,048; Flowers102 and RESISC45 102,400, 2,560,
  1,024 (``stage0_steps``, ``stage0_warmup_steps``, ``stage0_eval_every``).

Phase ``stage1`` starts from those weights, adds the auxiliary head and trains ``CE(main(x_lb), y_lb) +
lambda_p * alpha_t * CE(aux([x_lb; w(x_ulb)]), [yp_lb; yp_ulb]) + lambda_u * L_u`` with ``L_u`` AdaMatch's
(or FixMatch's) consistency on the main head. Pseudolabels reach the model only through the auxiliary
head; evaluation uses the main head.
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
    stage0_steps: int = option(500, "stage-0 distillation steps (0 skips stage 0; the released configs: 204800 "
                                    "CIFAR-100, 102400 Flowers102/RESISC45)", min=0)
    stage0_selection: Literal["holdout", "train_sample"] = option(
        "holdout", "stage 0's kept weights: best pseudolabel agreement on a hold-out of the train split it does not "
                   "train on (holdout), or on a seeded sample of the images it trains on, as the released code "
                   "(train_sample: all up to 9000 images, else 20%, above 90000 10%)")
    stage0_warmup_steps: int | None = option(None, "stage 0's warm-up steps (null = the run's warmup_steps; "
                                                   "released: 5120 CIFAR-100, 2560 Flowers102/RESISC45)", min=0)
    stage0_eval_every: int | None = option(None, "stage 0 evaluates every N steps (null = the run's eval_every; "
                                                 "released: 2048 CIFAR-100, 1024 Flowers102/RESISC45)", min=1)
    early_stop: float | None = option(0.9999, "stop stage 0 once agreement reaches this (holdout) or exceeds it "
                                              "(train_sample, the released check); null = never")
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
        train_sample = self.stage0_selection == "train_sample"
        stage0 = Phase("stage0", PseudoLabel(0.0), self.stage0_steps,
                       selection="train_sample_agreement" if train_sample else "holdout_agreement",
                       early_stop=self.early_stop, early_stop_strict=train_sample,
                       warmup_steps=self.stage0_warmup_steps, eval_every=self.stage0_eval_every)
        return [stage0, stage1]
