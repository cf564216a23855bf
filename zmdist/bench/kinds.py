"""What a sweep cell can run, and how its number is read back: one ``CellKind`` per stage.

A kind says which shared outputs the stage takes (and under which option names), which option receives
the label budget and the seed, and how the cell's headline number (and, for active learning, its learning
curve) is read from the stage's ``summary.json``. Adding a kind is one ``CELL_KINDS.register`` call here;
the runner and the report know no stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from zmdist.registry import Registry

Curve = list[tuple[int, float]]  # (labelled samples, value) per round


@dataclass(frozen=True)
class CellKind:
    stage: str | None  # the zmdist stage a cell runs; None: nothing runs, the number is read from a shared step
    inputs: dict[str, str]  # stage option -> shared output ("shards", "embeddings", "pseudolabels")
    metric: Callable[[dict[str, Any]], float]  # the headline number from the summary
    metric_name: str
    budget_key: str | None = None  # the option that takes labels per class (None: the method runs once)
    seed_key: str | None = "seed"  # the option that takes the seed (None: the stage is deterministic)
    seed_as_list: bool = False  # the stage takes ``seeds: [s]`` instead of ``seed: s``
    dataset_key: str | None = None  # an option that takes the dataset's name (e.g. the task name of a score)
    fixed: dict[str, Any] = field(default_factory=dict)  # options every cell of the kind gets
    curve: Callable[[dict[str, Any]], Curve] | None = None
    reads: str | None = None  # stage None: the shared step whose summary holds the number
    percent: bool = True  # the number is an accuracy: the report shows it (and published ones) in %
    best: Callable[[dict[str, Any]], float | None] | None = None  # the best evaluation during the run (None: not
    # recorded); shown beside the headline, never instead of it: USB's tables report it, the sweep the final model
    metric_name_of: Callable[[dict[str, Any]], str] | None = None  # the headline's name when it depends on the
    # cell (a TRZSL prompt-tune cell: the harmonic mean); None: metric_name
    aside: Callable[[dict[str, Any]], tuple[str, float] | None] | None = None  # (name, value) shown beside the
    # headline (a TRZSL cell's top-1 over all classes), or None


CELL_KINDS: Registry[CellKind] = Registry("cell kind")


def _al_curve(summary: dict[str, Any]) -> Curve:
    (points,) = summary["class_weighted_accuracy"].values()  # one (init, strategy, seed) per cell
    return [(int(p["labelled"]), float(p["mean"])) for p in points]


def _train_best(summary: dict[str, Any]) -> float | None:
    """The best test accuracy a train run saw at its evaluations (USB's headline): its best checkpoint's
    score when that was chosen by top-1 on the eval split; None when chosen otherwise (pseudolabel
    agreement is not an accuracy) or not recorded."""
    best = summary.get("best_checkpoint") or {}
    if best.get("selection") != "top1" or best.get("top1") is None or best["top1"] < 0:
        return None
    return float(best["top1"])


def _zero_shot(summary: dict[str, Any]) -> float:
    per_split = summary["zero_shot_accuracy_per_split"]
    return float(per_split["test"] if "test" in per_split else summary["teacher_zero_shot_accuracy"])


CELL_KINDS.register("train")(CellKind(
    stage="train", inputs={"shards": "shards", "pseudolabels": "pseudolabels"}, budget_key="labels_per_class",
    metric=lambda s: float(s["accuracy"]), metric_name="test accuracy", best=_train_best))
def _is_trzsl(summary: dict[str, Any]) -> bool:
    return summary.get("setting") == "trzsl"


def _prompt_tune_metric(summary: dict[str, Any]) -> float:
    """Top-1 on the test split; TRZSL: the harmonic mean of seen and unseen test accuracy, the number GRIP's
    TRZSL column reports (the released code stores nothing else for TRZSL: utils/compute_metrics.py:54-78 of
    BatsResearch/menghini-neurips23-code at 2094fa5)."""
    final = summary["final"]
    return float(final["harmonic_mean"] if _is_trzsl(summary) else final["accuracy"])


CELL_KINDS.register("prompt-tune")(CellKind(
    stage="prompt-tune", inputs={"embeddings": "embeddings"}, budget_key="labels_per_class",
    metric=_prompt_tune_metric, metric_name="test accuracy",
    metric_name_of=lambda s: "harmonic mean of seen / unseen test accuracy" if _is_trzsl(s) else "test accuracy",
    aside=lambda s: ("top-1", float(s["final"]["accuracy"])) if _is_trzsl(s) else None))
CELL_KINDS.register("al-sim")(CellKind(
    stage="al-sim", inputs={"embeddings": "embeddings"}, budget_key="start_per_class", seed_key="seeds",
    seed_as_list=True,
    fixed={"task_index": 0, "num_tasks": 1}, metric=lambda s: _al_curve(s)[-1][1], curve=_al_curve,
    metric_name="class-weighted accuracy, last round"))
CELL_KINDS.register("transfer")(CellKind(
    stage="transfer", inputs={"embeddings": "embeddings"}, fixed={"action": "score"}, seed_key=None,
    dataset_key="task",
    metric=lambda s: float(s["scores"]["iimm"]), metric_name="IIMM", percent=False))
CELL_KINDS.register("zero-shot")(CellKind(
    stage=None, inputs={}, reads="pseudolabels", metric=_zero_shot, metric_name="test accuracy"))
