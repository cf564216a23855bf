"""``zmdist quickstart``: the whole pipeline offline on real data, in minutes on a CPU.

1. Pretrain a tiny open_clip teacher contrastively on synthetic captioned digits rendered from fonts
   (cached under ``OUT/cache``), saved as an open_clip checkpoint and loaded through the same
   ``pretrained=<path>`` path real weights use. It never sees the real digits or their labels.
2. ``shard`` scikit-learn's 1,797 real handwritten digits (shipped with the package) into tar shards.
3. ``embed`` them with the teacher, 4. ``pseudolabel`` them zero-shot from class-name prompts.
5. ``train`` students with a few labels per class: ``supervised``, ``distill``, ``fixmatch``, ``zeromatch``.
6. Print one table: the teacher's zero-shot accuracy, its confident pseudolabels, and each student's
   test accuracy (mean and spread over ``seeds``).

The parts live in ``zmdist.demo`` (``teacher_pretrain``, ``digits_pipeline``); this module only wires them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmdist.config import option, to_dict
from zmdist.demo.digits_pipeline import format_table, prepare_digits, summarise_seeds, train_student
from zmdist.demo.teacher_pretrain import pretrain_digit_teacher
from zmdist.provenance import provenance, write_run_files

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
    progress: bool = option(True, "show progress bars")


def run(cfg: Config, out: Path) -> dict[str, Any]:
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
    students = {m: [train_student(cfg, out, m, seed) for seed in cfg.seeds] for m in cfg.methods}
    timings["train_s"] = time.perf_counter() - t0

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
        "timings_s": {**timings, "total_s": time.perf_counter() - start},
    }
    write_run_files(out, to_dict(cfg), {**results, **provenance(seed=cfg.seed)})
    print(format_table(results))
    return results
