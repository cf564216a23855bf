"""Where a training run's numbers go: ``OUT/log.jsonl``, TensorBoard (``OUT/tensorboard``) and, when asked
(``log.wandb=true``), Weights & Biases; main rank only."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zmdist.atomic import atomic_write_text
from zmdist.config import ConfigError

WANDB_ID_FILE = "wandb_run_id"


@dataclass
class WandbRun:
    """How one engine run reports to Weights & Biases: one W&B run per training phase (each phase counts its
    steps from 0, and W&B drops steps that go backwards), grouped under the ``zmdist train`` run."""

    project: str
    name: str
    group: str
    job_type: str
    mode: str | None = None  # online, offline or disabled; None: $WANDB_MODE, else online
    config: dict[str, Any] = field(default_factory=dict)


def require_wandb() -> Any:
    """The ``wandb`` module, or a config error saying how to get it (raised on every rank, before training)."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("log.wandb=true needs `pip install wandb` (or `pip install 'zmdist[wandb]'`)") from None
    return wandb


def wandb_run_id(out: Path) -> str:
    """The W&B run id of the run in ``out``: made once and kept in ``OUT/wandb_run_id``, so a requeued job
    that resumes there continues the same W&B run, while a fresh run in a new (or emptied) folder starts one."""
    path = out / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:16]
    atomic_write_text(path, run_id + "\n")
    return run_id


def _start_wandb(run: WandbRun, out: Path) -> Any:
    wandb = require_wandb()
    return wandb.init(project=run.project, name=run.name, group=run.group, job_type=run.job_type, mode=run.mode,
                      dir=str(out), config=run.config, id=wandb_run_id(out), resume="allow")


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The plotted numbers of a record (not the step, the eval flag, flags or lists)."""
    return {key: value for key, value in record.items()
            if key not in ("step", "eval") and isinstance(value, (int, float)) and not isinstance(value, bool)}


class RunLog:
    """Appends one JSON object per record to ``log.jsonl`` and mirrors the numbers to TensorBoard, and to
    Weights & Biases when ``wandb`` is given.

    Only the main rank writes; on other ranks every call is a no-op, so callers need not check."""

    def __init__(self, out: Path, enabled: bool, wandb: WandbRun | None = None):
        self.path = out / "log.jsonl"
        self._tb = None
        self._wandb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tensorboard"))
            if wandb is not None:
                self._wandb = _start_wandb(wandb, out)

    def train(self, step: int, record: dict[str, float]) -> None:
        self._write({"step": step, **record}, "train", step)

    def eval(self, step: int, record: dict[str, Any]) -> None:
        self._write({"eval": True, "step": step, **record}, "eval", step)

    def _write(self, record: dict[str, Any], group: str, step: int) -> None:
        if self._tb is None:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        scalars = _scalars(record)
        for key, value in scalars.items():
            self._tb.add_scalar(f"{group}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{group}/{key}": value for key, value in scalars.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
