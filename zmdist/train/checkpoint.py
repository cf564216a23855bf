"""Checkpoint folders and the ``latest`` pointer, written so a kill at any moment leaves a usable state.

``OUT/checkpoints/step-000120/`` holds the backend's files (model.safetensors, optimizer/scheduler
states, or DeepSpeed's shards) and ``state.json`` (step, data position, best metric, algorithm
statistics such as AdaMatch's distribution-alignment EMAs). ``OUT/checkpoints/latest`` names the newest
COMPLETE folder; it is replaced atomically only after the folder is fully written, so ``resume=auto``
never meets a half checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from zmdist.atomic import atomic_write_text

LATEST = "latest"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:07d}"


def write_state(folder: Path, state: dict[str, Any]) -> None:
    atomic_write_text(folder / "state.json", json.dumps(state, indent=1))


def mark_latest(out: Path, folder: Path, keep: int) -> None:
    """Point ``latest`` at ``folder`` and delete all but the ``keep`` newest step folders."""
    root = out / "checkpoints"
    atomic_write_text(root / LATEST, folder.name + "\n")
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def find_latest(out: Path) -> Path | None:
    pointer = out / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    folder = out / "checkpoints" / pointer.read_text().strip()
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(f"{pointer} names {folder}, which has no state.json: the checkpoint is damaged")
    return folder


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "state.json").read_text())
