"""``zmdist quickstart``: the whole pipeline offline on real data, in minutes on a CPU.

1. Pretrain a tiny open_clip teacher contrastively on synthetic captioned digits rendered from fonts
   (cached under ``OUT/cache``), saved as an open_clip checkpoint and loaded through the same
   ``pretrained=<path>`` path real weights use. It never sees the real digits or their labels.
2. ``shard`` scikit-learn's 1,797 real handwritten digits (shipped with the package) into tar shards.
3. ``embed`` them with the teacher, 4. ``pseudolabel`` them zero-shot from class-name prompts.
5. Print the teacher's zero-shot accuracy and the accuracy/coverage of its confident pseudolabels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmdist.config import load_config, option, to_dict
from zmdist.provenance import provenance, write_run_files
from zmdist.stages import embed, pseudolabel, shard

NAME = "quickstart"
HELP = "run the offline embedded default: synthetic-digit teacher -> real digits -> shard/embed/pseudolabel"
DEFAULT_OUT = Path("runs/quickstart")
log = logging.getLogger("zmdist")


@dataclass
class Config:
    teacher_model: str = option("zmdist-tiny-vit", "tiny open_clip config the teacher is pretrained with")
    teacher_seconds: float = option(120.0, "wall-clock budget of the teacher's synthetic pretraining")
    templates: str = option("digits", "prompt template set for the zero-shot classifier")
    shard_size: int = option(300, "samples per shard (small, so the data spans several shards)")
    test_fraction: float = option(0.25, "held-out test share of the real digits (stratified)")
    batch_size: int = option(256, "embedding batch size")
    num_workers: int = option(1, "DataLoader workers for embedding")
    seed: int = option(0, "seed of the teacher pretraining, the shuffle and the split")
    progress: bool = option(True, "show progress bars")


def run(cfg: Config, out: Path) -> dict[str, Any]:
    from zmdist.teacher.pretrain import pretrain_digit_teacher

    start = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    checkpoint = pretrain_digit_teacher(
        out / "cache", model=cfg.teacher_model, seconds=cfg.teacher_seconds, seed=cfg.seed, progress=cfg.progress
    )
    timings["teacher_pretrain_s"] = time.perf_counter() - t0

    stage_results = {}
    for name, module, overrides, folder in [
        ("shard", shard, [f"source=sklearn-digits", f"shard_size={cfg.shard_size}", f"seed={cfg.seed}",
                          f"test_fraction={cfg.test_fraction}", "overwrite=true", f"progress={cfg.progress}"], "shards"),
        ("embed", embed, [f"shards={out / 'shards'}", f"teacher.model={cfg.teacher_model}",
                          f"teacher.pretrained={checkpoint}", f"batch_size={cfg.batch_size}",
                          f"num_workers={cfg.num_workers}", f"progress={cfg.progress}"], "embeddings"),
        ("pseudolabel", pseudolabel, [f"embeddings={out / 'embeddings'}", f"templates={cfg.templates}"],
         "pseudolabels"),
    ]:
        if name != "shard":
            _fresh(out / folder)
        t0 = time.perf_counter()
        stage_results[name] = module.run(load_config(module.Config, None, overrides), out / folder)
        timings[f"{name}_s"] = time.perf_counter() - t0

    pl = stage_results["pseudolabel"]
    results = {
        "stage": NAME,
        "teacher_checkpoint": str(checkpoint),
        "teacher_zero_shot_accuracy": pl["teacher_zero_shot_accuracy"],
        "zero_shot_accuracy_per_split": pl["zero_shot_accuracy_per_split"],
        "accuracy_at_thresholds": pl["accuracy_at_thresholds"],
        "ece": pl["ece"],
        "samples": pl["samples"],
        "images_per_second": stage_results["embed"]["images_per_second"],
        "timings_s": {**timings, "total_s": time.perf_counter() - start},
    }
    write_run_files(out, to_dict(cfg), {**results, **provenance(seed=cfg.seed)})
    print(format_table(results))
    return results


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
    t = results["timings_s"]
    lines.append(
        f"  time: teacher {t['teacher_pretrain_s']:.0f}s, shard {t['shard_s']:.1f}s, embed {t['embed_s']:.1f}s, "
        f"pseudolabel {t['pseudolabel_s']:.1f}s, total {t['total_s']:.0f}s"
    )
    return "\n".join(lines)
