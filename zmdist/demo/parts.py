"""Optional parts of ``zmdist quickstart`` beyond the student table (prompt tuning, label selection, ...).

The quickstart always prepares the real digits (shards, embeddings, zero-shot pseudolabels); each part then
runs one more piece of the pipeline on that data and adds rows to the printed table. A part is one module
``zmdist/demo/<name>_part.py`` defining ``run_part(ctx: PartContext) -> dict`` (its results, stored under
``summary.json["parts"][name]``) and ``format_rows(results) -> list[str]`` (its lines of the table), plus one
entry in ``PART_MODULES``. Parts are imported only when they run, so a part's dependencies never slow the others.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from zmdist.config import load_config
from zmdist.stages import train as train_stage

# part name -> module; the order is the order in the printed table
PART_MODULES: dict[str, str] = {
    "prompt": "zmdist.demo.prompt_part",
    "select": "zmdist.demo.select_part",
    "transfer": "zmdist.demo.transfer_part",
}


@dataclass(frozen=True)
class PartContext:
    """What a part gets from the quickstart: the prepared data and the student recipe."""

    out: Path  # the part's own folder, OUT/<part>/ (created before the part runs)
    shards: Path
    embeddings: Path
    pseudolabels: Path  # the zero-shot pseudolabels
    teacher_model: str
    teacher_checkpoint: str  # passed as teacher.pretrained
    templates: str
    seeds: list[int]
    labels_per_class: int
    # (method, seed) -> the quickstart's `zmdist train` overrides for that student, without
    # shards=, pseudolabels= and labelled_keys= (a part adds its own)
    student_overrides: Callable[[str, int], list[str]] = field(repr=False)
    progress: bool = False


def load_part(name: str) -> ModuleType:
    """The module of part ``name``; an unknown name lists the known parts."""
    if name not in PART_MODULES:
        raise KeyError(f"unknown quickstart part {name!r}; known parts: {', '.join(PART_MODULES)}")
    module = importlib.import_module(PART_MODULES[name])
    for attr in ("run_part", "format_rows"):
        if not hasattr(module, attr):
            raise TypeError(f"quickstart part module {module.__name__} lacks {attr}()")
    return module


def train(ctx: PartContext, folder: Path, overrides: list[str]) -> dict[str, Any]:
    """One ``zmdist train`` run in ``folder`` (started afresh: a part's rerun must not resume an old student)."""
    if folder.exists():
        shutil.rmtree(folder)
    return train_stage.run(load_config(train_stage.Config, None, overrides), folder)
