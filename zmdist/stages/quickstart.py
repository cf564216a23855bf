"""``zmdist quickstart``: the whole pipeline offline on real data, in minutes on a CPU.

1. Pretrain a tiny open_clip teacher contrastively on synthetic captioned digits rendered from fonts
   (cached under ``OUT/cache``), saved as an open_clip checkpoint and loaded through the same
   ``pretrained=<path>`` path real weights use. It never sees the real digits or their labels.
2. ``shard`` scikit-learn's 1,797 real handwritten digits (shipped with the package) into tar shards.
3. ``embed`` them with the teacher, 4. ``pseudolabel`` them zero-shot from class-name prompts.
5. ``train`` students with a few labels per class: ``supervised``, ``distill``, ``fixmatch``, ``zeromatch``.
6. Print one table: the teacher's zero-shot accuracy, its confident pseudolabels, and each student's
   test accuracy (mean and spread over ``seeds``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmdist.config import load_config, option, to_dict
from zmdist.provenance import provenance, write_run_files
from zmdist.stages import embed, pseudolabel, shard, train

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
    from zmdist.teacher.pretrain import pretrain_digit_teacher

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


def prepare_digits(
    out: Path, *, teacher_model: str, pretrained: str = "", templates: str = "digits", shard_size: int = 300,
    test_fraction: float = 0.25, seed: int = 0, batch_size: int = 256, num_workers: int = 1, progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """shard -> embed -> pseudolabel of the real digits into ``out/{shards,embeddings,pseudolabels}``.

    Shared by quickstart, the tests and the benchmarks; returns each stage's results plus its ``seconds``.
    Embeddings and pseudolabels are rebuilt from scratch: a new teacher must not meet an old run's files.
    """
    results: dict[str, dict[str, Any]] = {}
    for name, module, overrides, folder in [
        ("shard", shard, ["source=sklearn-digits", f"shard_size={shard_size}", f"seed={seed}",
                          f"test_fraction={test_fraction}", "overwrite=true", f"progress={progress}"], "shards"),
        ("embed", embed, [f"shards={out / 'shards'}", f"teacher.model={teacher_model}",
                          f"teacher.pretrained={pretrained}", f"batch_size={batch_size}",
                          f"num_workers={num_workers}", f"progress={progress}"], "embeddings"),
        ("pseudolabel", pseudolabel, [f"embeddings={out / 'embeddings'}", f"templates={templates}"],
         "pseudolabels"),
    ]:
        if name != "shard":
            _fresh(out / folder)
        t0 = time.perf_counter()
        results[name] = module.run(load_config(module.Config, None, overrides), out / folder)
        results[name]["seconds"] = time.perf_counter() - t0
    return results


def train_student(cfg: Config, out: Path, method: str, seed: int) -> dict[str, Any]:
    """One student run, in its own folder (a rerun starts it afresh: the teacher may have changed)."""
    folder = out / "students" / f"{method}-seed{seed}"
    _fresh(folder)
    overrides = [
        f"shards={out / 'shards'}", f"pseudolabels={out / 'pseudolabels'}", f"method={method}",
        f"student={cfg.student}", f"img_size={cfg.student_img_size}", "hflip=false",
        f"labels_per_class={cfg.labels_per_class}", f"steps={cfg.train_steps}", f"stage0_steps={cfg.stage0_steps}",
        f"seed={seed}", f"eval_every={cfg.train_steps}", "checkpoint_every=0", "num_workers=1",
        f"progress={cfg.progress}",
    ]
    return train.run(load_config(train.Config, None, overrides), folder)


def summarise_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    accs = [r["accuracy"] for r in runs]
    mean = sum(accs) / len(accs)
    std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
    return {"accuracy_mean": mean, "accuracy_std": std, "accuracy_per_seed": accs,
            "class_weighted_accuracy_mean": sum(r["class_weighted_accuracy"] for r in runs) / len(runs)}


def _fresh(folder: Path) -> None:
    """Quickstart reruns from scratch: a new teacher checkpoint must not meet the old run's files."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "",
        "zmdist quickstart: zero-shot teacher on 1,797 real handwritten digits (10 classes, chance 0.10)",
        f"  teacher zero-shot accuracy   {results['teacher_zero_shot_accuracy']:.3f}"
        f"   (ECE {results['ece']:.3f})",
        "  confident pseudolabels:",
        "    threshold   coverage   accuracy",
    ]
    for row in results["accuracy_at_thresholds"]:
        acc = f"{row['accuracy']:.3f}" if row["count"] else "  -  "
        lines.append(f"    >= {row['threshold']:.2f}     {row['coverage']:6.3f}     {acc}")
    n_seeds = len(next(iter(results["students"].values()))["accuracy_per_seed"]) if results["students"] else 0
    lines += [
        f"  students on the {results.get('labels_per_class')}-labels-per-class task, test split"
        f" (mean +- std over {n_seeds} seed{'s' * (n_seeds != 1)}):",
        f"    {'teacher zero-shot':<20}{results['teacher_test_accuracy']:.3f}",
    ]
    for method, row in results["students"].items():
        lines.append(f"    {method:<20}{row['accuracy_mean']:.3f} +- {row['accuracy_std']:.3f}")
    t = results["timings_s"]
    lines.append(
        f"  time: teacher {t['teacher_pretrain_s']:.0f}s, shard {t['shard_s']:.1f}s, embed {t['embed_s']:.1f}s, "
        f"pseudolabel {t['pseudolabel_s']:.1f}s, students {t['train_s']:.0f}s, total {t['total_s']:.0f}s"
    )
    return "\n".join(lines)
