"""The worked example: does IIMM predict fine-tuning gain and forgetting on tasks built offline?

Tasks are made from scikit-learn's real digits (subsets, relabellings, inverted / rotated / mirrored
ink), each written as PNGs + a CSV and run through the real pipeline: ``zmdist shard`` (``csv:``),
``zmdist embed`` with the demo teacher (pretrained on synthetic digits only), ``zmdist transfer score``.
Then each task is fine-tuned and measured:

- fine-tuning: the teacher's IMAGE tower is trained for ``steps`` AdamW steps with cross-entropy on the
  task's training split, against the task's zero-shot head (class-prompt text embeddings, frozen), so
  the model stays a zero-shot classifier whose image tower moved (the paper's "full" mode, text frozen);
- gain = test-split accuracy after fine-tuning minus the zero-shot accuracy before (in-domain);
- forgetting = zero-shot accuracy on a fixed reference task (synthetic rendered digits, 10 classes,
  never trained on) before minus after fine-tuning (positive = forgotten).

The table (one row per task, every score) goes through ``zmdist transfer fit`` once per score column;
the report compares each score's R^2 and leave-one-out error with a predictor that knows nothing (the
mean of the other tasks).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from zmdist.config import load_config
from zmdist.data.sklearn_digits import DIGIT_CLASSNAMES, digits_array_to_image

SCORE_COLUMNS = ("iimm", "inter", "intra", "h_score", "logme", "gbc")
TEMPLATES = "digits"


@dataclass(frozen=True)
class Task:
    """Images (n, 8, 8) of ink 0..16, their class NAMES, and which are in the training split."""

    name: str
    images: np.ndarray
    names: list[str]
    train: np.ndarray  # bool (n,)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.names))  # the order the csv: source gives the classes

    @property
    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[n] for n in self.names], dtype=np.int64)


def digit_tasks(seed: int = 0, test_fraction: float = 0.25) -> list[Task]:
    """The offline tasks, all from the 1,797 real digits (a fixed stratified train/test split)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, digit = digits.images, digits.target
    train_idx, _ = train_test_split(np.arange(len(digit)), test_size=test_fraction, stratify=digit, random_state=seed)
    train = np.zeros(len(digit), bool)
    train[train_idx] = True
    names = np.array(DIGIT_CLASSNAMES)[digit]

    def subset(name: str, keep: np.ndarray, labels: np.ndarray, pixels: np.ndarray = images) -> Task:
        return Task(name, pixels[keep], [str(v) for v in labels[keep]], train[keep])

    every = np.ones(len(digit), bool)
    parity = np.where(digit % 2 == 0, "even number", "odd number")
    size = np.where(digit < 5, "small number", "large number")
    return [
        subset("digits-all", every, names),
        subset("digits-0to4", digit < 5, names),
        subset("digits-5to9", digit >= 5, names),
        subset("pair-3-8", np.isin(digit, [3, 8]), names),
        subset("pair-1-7", np.isin(digit, [1, 7]), names),
        subset("pair-4-9", np.isin(digit, [4, 9]), names),
        subset("parity", every, parity),
        subset("small-large", every, size),
        subset("inverted", every, names, 16 - images),
        subset("rotated90", every, names, np.rot90(images, 1, axes=(1, 2))),
        subset("mirrored", every, names, images[:, :, ::-1]),
    ]


def write_task_csv(task: Task, folder: Path) -> Path:
    """PNGs + ``images.csv`` (path, label, split) for the ``csv:`` source."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (pixels, name, is_train) in enumerate(zip(task.images, task.names, task.train)):
        digits_array_to_image(pixels).save(folder / f"{i:05d}.png")
        rows.append((f"{i:05d}.png", name, "train" if is_train else "test"))
    path = folder / "images.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return path


def score_task(task: Task, root: Path, model: str, checkpoint: str) -> dict[str, Any]:
    """shard -> embed -> transfer score of one task, through the stages (as the CLI runs them)."""
    from zmdist.demo.digits_pipeline import fresh
    from zmdist.stages import embed, shard, transfer

    fresh(root)
    table = write_task_csv(task, root / "images")
    shard.run(load_config(shard.Config, None, [f"source=csv:{table}", "shard_size=400", "progress=false"]),
              root / "shards")
    embed.run(load_config(embed.Config, None, [f"shards={root / 'shards'}", f"teacher.model={model}",
                                               f"teacher.pretrained={checkpoint}", "num_workers=0",
                                               "progress=false"]), root / "embeddings")
    return transfer.run(load_config(transfer.Config, None, [f"embeddings={root / 'embeddings'}", f"task={task.name}",
                                                            f"templates={TEMPLATES}", "baselines=[h_score, logme, gbc]",
                                                            "progress=false"]),
                        root / "score")


def _pixels(teacher: Any, images: np.ndarray) -> torch.Tensor:
    return torch.stack([teacher.preprocess(digits_array_to_image(a).convert("RGB")) for a in images])


@torch.no_grad()
def _accuracy(model: torch.nn.Module, head: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    feats = torch.cat([model.encode_image(x[i:i + 512], normalize=True) for i in range(0, len(x), 512)])
    return float(((feats @ head.T).argmax(1) == y).float().mean())


def finetune_task(task: Task, model_name: str, checkpoint: str, reference: tuple[np.ndarray, np.ndarray], *,
                  steps: int, lr: float, batch_size: int, seed: int) -> dict[str, float]:
    """Zero-shot accuracy before / after fine-tuning the image tower, in-domain and on the reference."""
    from zmdist.teacher import build_zeroshot_classifier, get_templates, load_teacher

    torch.manual_seed(seed)
    teacher = load_teacher(model_name, checkpoint)
    model, templates = teacher.model, get_templates(TEMPLATES)
    head = build_zeroshot_classifier(model, teacher.tokenizer, task.classes, templates)
    ref_head = build_zeroshot_classifier(model, teacher.tokenizer, DIGIT_CLASSNAMES, templates)
    x, y = _pixels(teacher, task.images), torch.from_numpy(task.labels)
    train, test = torch.from_numpy(task.train), ~torch.from_numpy(task.train)
    ref_x, ref_y = _pixels(teacher, reference[0]), torch.from_numpy(reference[1])
    before = _accuracy(model, head, x[test], y[test]), _accuracy(model, ref_head, ref_x, ref_y)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.visual.parameters())
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    xtr, ytr = x[train], y[train]
    gen = torch.Generator().manual_seed(seed)
    scale = teacher.logit_scale
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(xtr), (batch_size,), generator=gen)
        logits = scale * model.encode_image(xtr[idx], normalize=True) @ head.T
        loss = F.cross_entropy(logits, ytr[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    after = _accuracy(model, head, x[test], y[test]), _accuracy(model, ref_head, ref_x, ref_y)
    return {"zero_shot_acc": before[0], "finetuned_acc": after[0], "gain": after[0] - before[0],
            "reference_before": before[1], "reference_after": after[1], "forgetting": before[1] - after[1]}


def loo_rmse_of_mean(values: list[float]) -> float:
    """The leave-one-out error of predicting each task by the mean of the others (a score that knows
    nothing): the bar a useful score's line must beat."""
    y = np.asarray(values, dtype=np.float64)
    others = (y.sum() - y) / (len(y) - 1)
    return float(np.sqrt(np.mean((y - others) ** 2)))


def run_example(out: Path, model: str, checkpoint: str, *, steps: int = 60, lr: float = 1e-4, batch_size: int = 64,
                seed: int = 0, reference_size: int = 1000, tasks: list[Task] | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score, fine-tune and measure every task; write ``tasks.csv``, the fits and ``report.json``."""
    from zmdist.demo.synth_digits import render_digit_corpus
    from zmdist.stages import transfer

    out.mkdir(parents=True, exist_ok=True)
    ref_images, _, ref_labels = render_digit_corpus(reference_size, seed + 1000)
    rows = []
    for task in tasks if tasks is not None else digit_tasks(seed):
        t0 = time.perf_counter()
        scored = score_task(task, out / "tasks" / task.name, model, checkpoint)
        t1 = time.perf_counter()
        measured = finetune_task(task, model, checkpoint, (ref_images, ref_labels), steps=steps, lr=lr,
                                 batch_size=batch_size, seed=seed)
        row = {"task": task.name, "classes": len(task.classes), "train_images": scored["num_images"],
               **{k: scored["scores"][k] for k in SCORE_COLUMNS}, **measured,
               "score_s": t1 - t0, "finetune_s": time.perf_counter() - t1}
        rows.append(row)
        log(f"{task.name:<12} iimm {row['iimm']:.4f}  zero-shot {row['zero_shot_acc']:.3f} -> "
            f"{row['finetuned_acc']:.3f} (gain {row['gain']:+.3f})  reference {row['reference_before']:.3f} -> "
            f"{row['reference_after']:.3f} (forgetting {row['forgetting']:+.3f})  [{row['score_s']:.0f}s + "
            f"{row['finetune_s']:.0f}s]")
    table = out / "tasks.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fits = {}
    for column in SCORE_COLUMNS:
        result = transfer.run(load_config(transfer.Config, None, ["action=fit", f"table={table}",
                                                                  f"score_column={column}"]), out / f"fit-{column}")
        fits[column] = {t: {k: result["fits"][t][k] for k in ("slope", "intercept", "r2", "pearson_r", "loo_rmse")}
                        for t in ("gain", "forgetting")}
    baseline = {t: loo_rmse_of_mean([r[t] for r in rows]) for t in ("gain", "forgetting")}
    report = {"tasks": rows, "fits": fits, "loo_rmse_of_mean": baseline, "steps": steps, "lr": lr,
              "batch_size": batch_size, "seed": seed, "model": model, "checkpoint": checkpoint,
              "figure": str(out / "fit-iimm" / "fit.png")}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict[str, Any]) -> list[str]:
    """The comparison table: per score, R^2 / Pearson r / LOO RMSE of its line, for gain and forgetting."""
    base = report["loo_rmse_of_mean"]
    lines = [f"{len(report['tasks'])} tasks; fine-tuning {report['steps']} steps; LOO RMSE of the mean predictor: "
             f"gain {base['gain']:.4f}, forgetting {base['forgetting']:.4f}",
             f"{'score':<9}{'gain R^2':>10}{'r':>8}{'LOO RMSE':>10}   {'forget R^2':>10}{'r':>8}{'LOO RMSE':>10}"]
    for column, fit in report["fits"].items():
        g, f = fit["gain"], fit["forgetting"]
        fmt = lambda v: "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
        lines.append(f"{column:<9}{fmt(g['r2']):>10}{fmt(g['pearson_r']):>8}{g['loo_rmse']:>10.4f}   "
                     f"{fmt(f['r2']):>10}{fmt(f['pearson_r']):>8}{f['loo_rmse']:>10.4f}")
    return lines
