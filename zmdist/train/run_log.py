"""Where a training run's numbers go: ``OUT/log.jsonl`` and TensorBoard (``OUT/tensorboard``), main rank only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunLog:
    """Appends one JSON object per record to ``log.jsonl`` and mirrors the numbers to TensorBoard.

    Only the main rank writes; on other ranks every call is a no-op, so callers need not check."""

    def __init__(self, out: Path, enabled: bool):
        self.path = out / "log.jsonl"
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tensorboard"))

    def train(self, step: int, record: dict[str, float]) -> None:
        self._write({"step": step, **record}, "train", step)

    def eval(self, step: int, record: dict[str, Any]) -> None:
        self._write({"eval": True, "step": step, **record}, "eval", step)

    def _write(self, record: dict[str, Any], group: str, step: int) -> None:
        if self._tb is None:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "eval") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{group}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
