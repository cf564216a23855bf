"""Checkpoint folders and the ``latest`` pointer, written so a kill at any moment leaves a usable state.

``OUT/checkpoints/step-000120/`` holds the backend's files (model.safetensors, optimizer/scheduler
states, or DeepSpeed's shards) and ``state.json`` (step, data position, best metric, algorithm
statistics such as AdaMatch's distribution-alignment EMAs). A checkpoint is written into
``.partial-step-000120/`` and renamed to ``step-000120`` only when every rank has finished writing; an
existing folder of that name (a requeued run rewriting its last checkpoint) is swapped out by rename, never
overwritten in place. ``latest`` names the newest folder and is replaced atomically after the rename. So a
``step-*`` folder is always complete, and ``resume=auto`` never meets a half checkpoint; if the newest
one cannot be read all the same (a damaged disk), resume falls back to the next newest and says so.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from zmdist.atomic import atomic_write_text, clean_temp_dir

LATEST = "latest"
PARTIAL = ".partial-"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:07d}"


def partial_dir(folder: Path) -> Path:
    """Where ``folder`` is written before it is renamed into place."""
    return folder.with_name(PARTIAL + folder.name)


def publish(out: Path, partial: Path, folder: Path, keep: int) -> None:
    """Rename the fully written ``partial`` to ``folder`` (swapping an old one out), point ``latest`` at
    it, and delete all but the ``keep`` newest step folders."""
    old = folder.with_name(f".old-{folder.name}")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(partial, folder)
    root = out / "checkpoints"
    atomic_write_text(root / LATEST, folder.name + "\n")
    shutil.rmtree(old, ignore_errors=True)
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for stale in steps[:-keep] if keep > 0 else []:
        if stale != folder:
            shutil.rmtree(stale, ignore_errors=True)


def clean_leftovers(out: Path) -> int:
    """Remove partial or swapped-out folders (never resume candidates) and the temp file of a ``latest``
    being replaced that a killed run left; return how many."""
    root = out / "checkpoints"
    stale = [p for p in root.glob(".partial-step-*")] + [p for p in root.glob(".old-step-*")] if root.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return len(stale) + clean_temp_dir(root)


def write_state(folder: Path, state: dict[str, Any]) -> None:
    atomic_write_text(folder / "state.json", json.dumps(state, indent=1))


def candidates(out: Path) -> Iterator[Path]:
    """Checkpoint folders to resume from, best first: the one ``latest`` names, then every other
    ``step-*`` folder from the newest down."""
    root = out / "checkpoints"
    pointer = root / LATEST
    first = root / pointer.read_text().strip() if pointer.is_file() else None
    if first is not None and first.is_dir():
        yield first
    for folder in sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True):
        if folder != first:
            yield folder


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "state.json").read_text())
