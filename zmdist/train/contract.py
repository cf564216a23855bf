"""The training contract: the types that data, algorithms and the engine exchange, and nothing else.

Data loaders yield ``StreamItem`` (one unlabelled or evaluation sample, collated field by field) and
``LabelledBatch``; the engine packs them into a ``Batch`` on the device and hands it to an ``Algorithm``,
which turns it into a loss. A method with several phases (ZeroMatch's distillation warm start, then
SSL) describes them as ``Phase`` objects; the train stage runs them in order. Keeping these in one small
module means no positional tuples travel between modules, and none of the three sides imports another.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Literal, NamedTuple, Protocol

import torch

ReduceMean = Callable[[torch.Tensor], torch.Tensor]
Selection = Literal["top1", "holdout_agreement", "train_sample_agreement"]


class Interrupted(RuntimeError):
    """Training stopped on a signal after writing a checkpoint; ``resume=auto`` continues it."""


class StreamItem(NamedTuple):
    """One sample of the unlabelled (train) or evaluation stream; a DataLoader collates it field-wise.

    ``strong`` is an empty tensor when the method needs no strong view; ``label`` is -1 without ground
    truth; ``pseudolabel`` -1, ``confidence`` 0 and ``probs`` zeros without pseudolabels."""

    weak: torch.Tensor
    strong: torch.Tensor
    label: int
    pseudolabel: int
    confidence: float
    probs: torch.Tensor


class LabelledBatch(NamedTuple):
    """One step's labelled batch on one rank: weak views, true labels, the teacher's pseudolabels."""

    x: torch.Tensor
    y: torch.Tensor
    pseudolabel: torch.Tensor


@dataclass
class Batch:
    """One step's data on this rank, on the device; fields a method does not use are None."""

    x_lb: torch.Tensor | None = None
    y_lb: torch.Tensor | None = None
    yp_lb: torch.Tensor | None = None
    x_ulb_w: torch.Tensor | None = None
    x_ulb_s: torch.Tensor | None = None
    yp_ulb: torch.Tensor | None = None
    conf_ulb: torch.Tensor | None = None
    probs_ulb: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        return Batch(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})

    def size(self) -> int:
        """Samples in this step (labelled + unlabelled weak), for throughput logging."""
        return sum(len(v) for v in (self.x_lb, self.x_ulb_w) if v is not None)


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


@dataclass(frozen=True)
class DataNeeds:
    """Which data an algorithm consumes: the labelled subset, the unlabelled stream, its strong view."""

    labelled: bool = False
    stream: bool = False
    strong: bool = False


class Algorithm(Protocol):
    """How a batch becomes a loss. Stateful statistics (AdaMatch's marginals) are checkpointed through
    ``state_dict``/``load_state_dict``; ``load_state_dict`` puts them on ``device``."""

    needs: DataNeeds

    def loss(self, model: torch.nn.Module, batch: Batch, step: int, total: int,
             reduce_mean: ReduceMean) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None: ...


@dataclass
class Phase:
    """One training run of a method. ``name`` is its sub-folder of OUT ("" = OUT itself); ``selection`` is
    how ``best.safetensors`` is chosen: ``top1`` on the eval split (USB's convention: it looks at test
    labels, so the headline figure is the final model's), ``holdout_agreement``: agreement with the
    teacher's pseudolabels on a seeded hold-out slice of the training split that the phase does not train
    on, or ``train_sample_agreement``: the same agreement on a seeded sample of the training images the
    phase DOES train on (a measure of fit; no test image and no label in either).
    ``init_from`` names an earlier phase whose best weights start this one; ``dual_head`` adds ZeroMatch's
    auxiliary head. ``early_stop`` ends the phase once the selection metric reaches it (``early_stop_strict``:
    once it exceeds it). ``warmup_steps`` / ``eval_every`` replace the run's for this phase (None: the run's)."""

    name: str
    algorithm: Algorithm
    steps: int
    selection: Selection = "top1"
    init_from: str | None = None
    dual_head: bool = False
    early_stop: float | None = None
    early_stop_strict: bool = False
    warmup_steps: int | None = None
    eval_every: int | None = None
