"""``zmdist quickstart``: the whole pipeline offline on real data, in minutes on a CPU.

1. Pretrain a tiny open_clip teacher contrastively on synthetic captioned digits rendered from fonts
   (cached under ``OUT/cache``), saved as an open_clip checkpoint and loaded through the same
   ``pretrained=<path>`` path real weights use. It never sees the real digits or their labels.
2. ``shard`` scikit-learn's 1,797 real handwritten digits (shipped with the package) into tar shards.
3. ``embed`` them with the teacher, 4. ``pseudolabel`` them zero-shot from class-name prompts.
5. ``train`` students with a few labels per class: ``supervised``, ``distill``, ``fixmatch``, ``zeromatch``.
6. Run the extra ``parts`` on the same data (``zmdist.demo.parts``: prompt tuning of the teacher, label
   selection), each adding rows to the table.
7. Print one table: the teacher's zero-shot accuracy, its confident pseudolabels, each student's test
   accuracy (mean and spread over ``seeds``) and the parts' rows.

``--part NAME`` runs one piece alone (``students`` or a part) after the shared preparation.
The parts live in ``zmdist.demo`` (``teacher_pretrain``, ``digits_pipeline``, ``parts``); this module only wires them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zmdist.config import option, to_dict
from zmdist.demo.digits_pipeline import (
    format_table,
    prepare_digits,
    student_overrides,
    summarise_seeds,
    train_student,
)
from zmdist.demo.parts import PART_MODULES, PartContext, load_part
from zmdist.demo.teacher_pretrain import pretrain_digit_teacher
from zmdist.provenance import provenance, write_run_files
from zmdist.stages.outdir import own_output

NAME = "quickstart"
HELP = "run the offline embedded default: synthetic-digit teacher -> real digits -> shard/embed/pseudolabel -> students"
DEFAULT_OUT = Path("runs/quickstart")
log = logging.getLogger("zmdist")


@dataclass
class Config:
    teacher_model: str = option("zmdist-tiny-vit", "tiny open_clip config the teacher is pretrained with")
    teacher_steps: int = option(800, "steps of the teacher's contrastive pretraining on synthetic digits")
    templates: str = option("digits", "prompt template set for the zero-shot classifier")
    shard_size: int = option(300, "samples per shard (small, so the data spans several shards)")
    test_fraction: float = option(0.25, "held-out test share of the real digits (stratified)")
    batch_size: int = option(256, "embedding batch size")
    num_workers: int = option(1, "DataLoader workers for embedding")
    seed: int = option(0, "seed of the teacher pretraining, the shuffle and the split")
    methods: list[str] = option(factory=lambda: ["supervised", "distill", "fixmatch", "zeromatch"],
                                help="student training methods compared in the table")
    seeds: list[int] = option(factory=lambda: [0, 1, 2], help="student seeds (labelled subset + init); mean and spread")
    labels_per_class: int = option(4, "labelled digits per class for the students")
    student: str = option("cnn-tiny", "student model")
    student_img_size: int = option(16, "student input size")
    train_steps: int = option(300, "student training steps (zeromatch: stage 1)")
    stage0_steps: int = option(150, "zeromatch stage-0 distillation steps")
    parts: list[str] = option(factory=lambda: list(PART_MODULES),
                              help=f"extra parts run after the students ({', '.join(PART_MODULES)})")
    part: Literal["all", "students", "prompt", "select", "transfer"] = option(
        "all", "run only this piece after the shared preparation: the student table or one part")
    progress: bool = option(True, "show progress bars")


def run(cfg: Config, out: Path) -> dict[str, Any]:
    part_names = parts_to_run(cfg)  # an unknown part is refused before minutes of preparation
    with own_output(out, NAME):  # the stages it runs each own their subfolder of `out`
        return _run(cfg, out, part_names)


def _run(cfg: Config, out: Path, part_names: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    checkpoint = pretrain_digit_teacher(
        out / "cache", model=cfg.teacher_model, steps=cfg.teacher_steps, seed=cfg.seed, progress=cfg.progress
    )
    timings["teacher_pretrain_s"] = time.perf_counter() - t0

    stage_results = prepare_digits(
        out, teacher_model=cfg.teacher_model, pretrained=str(checkpoint), templates=cfg.templates,
        shard_size=cfg.shard_size, test_fraction=cfg.test_fraction, seed=cfg.seed, batch_size=cfg.batch_size,
        num_workers=cfg.num_workers, progress=cfg.progress,
    )
    timings.update({f"{name}_s": r["seconds"] for name, r in stage_results.items()})

    t0 = time.perf_counter()
    methods = cfg.methods if cfg.part in ("all", "students") else []
    students = {m: [train_student(cfg, out, m, seed) for seed in cfg.seeds] for m in methods}
    timings["train_s"] = time.perf_counter() - t0

    context = dict(
        shards=out / "shards", embeddings=out / "embeddings", pseudolabels=out / "pseudolabels",
        teacher_model=cfg.teacher_model, teacher_checkpoint=str(checkpoint), templates=cfg.templates,
        seeds=list(cfg.seeds), labels_per_class=cfg.labels_per_class, progress=cfg.progress,
        student_overrides=lambda method, seed: student_overrides(cfg, method, seed, None, None),
    )
    parts: dict[str, dict[str, Any]] = {}
    rows: list[str] = []
    for name in part_names:
        module = load_part(name)
        (out / name).mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        parts[name] = module.run_part(PartContext(out=out / name, **context))
        timings[f"{name}_part_s"] = time.perf_counter() - t0
        rows += module.format_rows(parts[name])

    pl = stage_results["pseudolabel"]
    results = {
        "stage": NAME,
        "teacher_checkpoint": str(checkpoint),
        "teacher_zero_shot_accuracy": pl["teacher_zero_shot_accuracy"],
        "zero_shot_accuracy_per_split": pl["zero_shot_accuracy_per_split"],
        "accuracy_at_thresholds": pl["accuracy_at_thresholds"],
        "ece": pl["ece"],
        "samples": pl["samples"],
        "teacher_test_accuracy": pl["zero_shot_accuracy_per_split"].get("test"),
        "images_per_second": stage_results["embed"]["images_per_second"],
        "labels_per_class": cfg.labels_per_class,
        "students": {m: summarise_seeds(runs) for m, runs in students.items()},
        "parts": parts,
        "timings_s": {**timings, "total_s": time.perf_counter() - start},
    }
    write_run_files(out, to_dict(cfg), {**results, **provenance(seed=cfg.seed)})
    print(format_table(results, extra_rows=rows))
    return results


def parts_to_run(cfg: Config) -> list[str]:
    """The parts this run executes: ``cfg.parts`` for ``part=all``, the one named by ``part``, or none."""
    if cfg.part == "students":
        return []
    names = cfg.parts if cfg.part == "all" else [cfg.part]
    for name in names:
        if name not in PART_MODULES:
            raise ValueError(f"quickstart parts: unknown part {name!r}; known parts: {', '.join(PART_MODULES)}")
    return names
