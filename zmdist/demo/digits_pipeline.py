"""The quickstart's pipeline on scikit-learn's real digits: shard -> embed -> pseudolabel, students, the table.

Each step calls a stage's ``run`` with ``key=value`` overrides, exactly as ``zmdist <stage>`` would, so
the demo exercises the real pipeline. Every run starts afresh in its folder: a new teacher checkpoint
must not meet an old run's embeddings, pseudolabels or student checkpoints.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from zmdist.config import load_config
from zmdist.stages import embed, pseudolabel, shard, train


class StudentSettings(Protocol):
    """What a student run needs from the quickstart config."""

    student: str
    student_img_size: int
    labels_per_class: int
    train_steps: int
    stage0_steps: int
    progress: bool


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
            fresh(out / folder)
        t0 = time.perf_counter()
        results[name] = module.run(load_config(module.Config, None, overrides), out / folder)
        results[name]["seconds"] = time.perf_counter() - t0
    return results


def student_overrides(cfg: StudentSettings, method: str, seed: int, shards: Path | None,
                      pl: Path | None) -> list[str]:
    """The ``train`` stage's ``key=value`` overrides for one student run (the only place that knows its keys);
    ``shards``/``pl`` None leaves those keys out (a quickstart part sets its own)."""
    method_keys = [f"method.stage0_steps={cfg.stage0_steps}"] if method == "zeromatch" else []
    data_keys = [f"shards={shards}"] * (shards is not None) + [f"pseudolabels={pl}"] * (pl is not None)
    return [
        *data_keys, f"method.name={method}", *method_keys,
        f"student={cfg.student}", f"img_size={cfg.student_img_size}", "hflip=false",
        f"labels_per_class={cfg.labels_per_class}", f"steps={cfg.train_steps}",
        f"seed={seed}", f"eval_every={cfg.train_steps}", "checkpoint_every=0", "num_workers=1",
        f"progress={cfg.progress}",
    ]


def train_student(cfg: StudentSettings, out: Path, method: str, seed: int) -> dict[str, Any]:
    """One student run on ``out/{shards,pseudolabels}``, in ``out/students/<method>-seed<seed>`` (started afresh)."""
    folder = out / "students" / f"{method}-seed{seed}"
    fresh(folder)
    overrides = student_overrides(cfg, method, seed, out / "shards", out / "pseudolabels")
    return train.run(load_config(train.Config, None, overrides), folder)


def summarise_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample standard deviation and per-seed values of the students' test accuracy."""
    accs = [r["accuracy"] for r in runs]
    mean = sum(accs) / len(accs)
    std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
    return {"accuracy_mean": mean, "accuracy_std": std, "accuracy_per_seed": accs,
            "class_weighted_accuracy_mean": sum(r["class_weighted_accuracy"] for r in runs) / len(runs)}


def fresh(folder: Path) -> None:
    """Remove ``folder`` if it exists, so a rerun starts from scratch."""
    if folder.exists():
        shutil.rmtree(folder)


def format_table(results: dict[str, Any], extra_rows: list[str] | None = None) -> str:
    """The quickstart's printed summary: teacher zero-shot accuracy, confident pseudolabels, students, the
    parts' ``extra_rows``, timings."""
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
    if results["students"]:
        n_seeds = len(next(iter(results["students"].values()))["accuracy_per_seed"])
        lines.append(f"  students on the {results.get('labels_per_class')}-labels-per-class task, test split"
                     f" (mean +- std over {n_seeds} seed{'s' * (n_seeds != 1)}):")
    else:
        lines.append("  test split:")
    lines.append(f"    {'teacher zero-shot':<20}{results['teacher_test_accuracy']:.3f}")
    for method, row in results["students"].items():
        lines.append(f"    {method:<20}{row['accuracy_mean']:.3f} +- {row['accuracy_std']:.3f}")
    lines += list(extra_rows or [])
    t = results["timings_s"]
    part_times = "".join(f", {key[:-len('_part_s')]} {value:.0f}s" for key, value in t.items()
                         if key.endswith("_part_s"))
    lines.append(
        f"  time: teacher {t['teacher_pretrain_s']:.0f}s, shard {t['shard_s']:.1f}s, embed {t['embed_s']:.1f}s, "
        f"pseudolabel {t['pseudolabel_s']:.1f}s, students {t['train_s']:.0f}s{part_times}, total {t['total_s']:.0f}s"
    )
    return "\n".join(lines)
