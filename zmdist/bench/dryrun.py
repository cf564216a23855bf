"""``zmdist bench plan SWEEP``: what a sweep would run, what is already done, and its GPU-hours.

GPU-hours are the compute bound of ``zmdist.bench.cost`` (FLOPs counted on CPU / peak x MFU): the embed
steps (training images x the teacher's FLOPs per image) and the student training cells (steps x images
per step x the student's training FLOPs); cells on cached embeddings (prompt tuning with textual prompts,
active learning, transfer scores) and zero-shot reads cost next to nothing and are not counted.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from zmdist.bench import cost
from zmdist.bench.plan import Plan, Step
from zmdist.bench.runner import is_done
from zmdist.bench.spec import Sweep
from zmdist.config import load_config
from zmdist.data.manifest import Manifest
from zmdist.models.student_init import student_kwargs


def dataset_images(sweep: Sweep, plan: Plan, dataset: str) -> int | None:
    """Images in the dataset (every split): the sweep's ``images``, else the shard set's manifest if present."""
    if sweep.datasets[dataset].images:
        return sweep.datasets[dataset].images
    shard_steps = [s for s in plan.shared if s.stage == "shard" and s.meta.get("dataset") == dataset]
    folder = Path(shard_steps[0].out) if shard_steps else Path(sweep.datasets[dataset].shards)
    if not (folder / "manifest.json").is_file():
        return None
    manifest = Manifest.load(folder)
    return sum(sum(manifest.counts(split)) for split in manifest.splits)


def embed_flops(sweep: Sweep, plan: Plan, step: Step) -> float | None:
    images = dataset_images(sweep, plan, step.meta["dataset"])
    if images is None:
        return None
    return images * cost.teacher_image_flops(sweep.teachers[step.meta["teacher"]].model)


def train_flops(step: Step) -> float:
    from zmdist.stages import load_stage

    cfg = load_config(load_stage("train").Config, None, [a for a in step.argv[4:]])
    per_step = cfg.batch_size * (1 + 2 * cfg.uratio)  # labelled + weak and strong unlabelled views (upper bound)
    steps = cfg.steps + getattr(cfg.method, "stage0_steps", 0)
    options = json.dumps(student_kwargs(cfg.student), sort_keys=True)
    return steps * per_step * cost.student_train_flops(cfg.student.name, cfg.img_size, options)


def describe(sweep: Sweep, plan: Plan) -> str:
    """The plan as text: the grid, each shared step, the cells per method and the GPU-hours estimate."""
    n = Counter(s.meta.get("kind") for s in plan.cells)
    budgets = sorted({c.meta["budget"] for c in plan.cells if c.meta["budget"] is not None})
    lines = [f"sweep {sweep.name}: {len(sweep.teachers)} teacher(s) x {len(sweep.datasets)} dataset(s) x "
             f"{len(sweep.methods)} method(s) x labels per class {budgets} x seeds {sweep.seeds} = "
             f"{len(plan.cells)} cells ({', '.join(f'{v} {k}' for k, v in sorted(n.items()))}), into {plan.out}",
             "", "shared steps (each runs once for every cell that reads it):"]
    hours = {"embed": 0.0, "train": 0.0}
    unknown = []
    for step in plan.shared:
        note = ""
        if step.stage == "embed":
            flops = embed_flops(sweep, plan, step)
            if flops is None:
                unknown.append(step.meta["dataset"])
                note = "  GPU-h: ? (set datasets.%s.images)" % step.meta["dataset"]
            else:
                h = cost.gpu_hours(flops, sweep.gpu, sweep.mfu)
                hours["embed"] += h
                note = f"  GPU-h {h:.3g}"
        state = "done" if is_done(step) else "to run"
        command = f"zmdist {step.stage}" if step.stage else f"python -m {step.argv[0]}"
        lines.append(f"  {step.id:<36} {state:<7} {command}{note}")
    lines += ["", "cells (to run / done):"]
    per_method: dict[str, Counter] = {}
    for cell in plan.cells:
        counts = per_method.setdefault(cell.meta["method"], Counter())
        counts["done" if is_done(cell) else "todo"] += 1
        if cell.stage == "train" and not is_done(cell):
            hours["train"] += cost.gpu_hours(train_flops(cell), sweep.gpu, sweep.mfu)
    for method, counts in per_method.items():
        stage = sweep.methods[method].stage
        lines.append(f"  {method:<24} {stage:<12} {counts['todo']:>4} / {counts['done']}")
    total = hours["embed"] + hours["train"]
    lines += ["", f"estimated GPU-hours still to spend ({sweep.gpu}, MFU {sweep.mfu:.2f}, compute bound only): "
              f"embed {hours['embed']:.3g}, student training {hours['train']:.3g}, total {total:.3g}"
              + (f"; embed of {', '.join(unknown)} unknown" if unknown else "")]
    return "\n".join(lines)
