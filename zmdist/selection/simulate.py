"""The active-learning simulation behind ``zmdist al-sim``: oracle labels, a budget schedule, a probe per round.

A *cell* is one (initial strategy, query strategy, seed). Round 0 labels ``start_per_class x C`` samples
chosen by the initial strategy, every later round ``step_per_class x C`` more chosen by the query
strategy from the labels so far; the oracle is the ground truth in the embedding files. After each
round a fresh dropout linear probe (the DropQuery paper's classifier) is trained on the labelled set
and scored on the test split: top-1 and class-weighted accuracy. Cells are independent, so workers
(ranks, array tasks) take disjoint shares and each cell is saved on its own when finished.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zmdist.atomic import atomic_path
from zmdist.selection.pool import Pool
from zmdist.selection.probe import ProbeConfig, accuracy_report, predict, train_probe
from zmdist.selection.strategies import RuleConfig, choose
from zmdist.selection.updp import UpdpConfig

CSV_FIELDS = ("init", "query", "seed", "round", "labelled", "classes_covered", "accuracy", "class_weighted_accuracy")


@dataclass(frozen=True)
class Cell:
    init: str
    query: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.init}+{self.query}-seed{self.seed}"

    @property
    def curve(self) -> str:
        return f"{self.init}+{self.query}"


def plan_cells(inits: list[str], queries: list[str], seeds: list[int]) -> list[Cell]:
    """Every (init, query, seed) once, in a fixed order (the same on every worker and rerun)."""
    return [Cell(i, q, s) for i in dict.fromkeys(inits) for q in dict.fromkeys(queries) for s in dict.fromkeys(seeds)]


def my_cells(cells: list[Cell], worker: int, workers: int) -> list[Cell]:
    """Worker ``worker`` of ``workers`` takes cells ``worker, worker + workers, ...`` (disjoint, covering)."""
    return cells[worker::workers]


def run_cell(cell: Cell, train: Pool, test: Pool, *, rounds: int, start_per_class: int, step_per_class: int,
             rules: RuleConfig, probe: ProbeConfig, updp: UpdpConfig, device: torch.device) -> list[dict[str, Any]]:
    """The learning curve of one cell: one row per round."""
    classes = len(train.classes)
    labels = torch.from_numpy(train.labels)
    test_labels = torch.from_numpy(test.labels)
    labelled = torch.empty(0, dtype=torch.long)
    rows = []
    for r in range(rounds):
        strategy, budget = (cell.init, start_per_class * classes) if r == 0 else (cell.query, step_per_class * classes)
        round_seed = cell.seed * 100003 + r
        picked, _ = choose(strategy, train.features, labelled, labels[labelled], classes, budget, rules=rules,
                           probe=probe, updp=updp, seed=round_seed, device=device)
        labelled = torch.sort(torch.cat([labelled, picked])).values
        model = train_probe(train.features[labelled], labels[labelled], classes, probe, seed=round_seed, device=device)
        probs, _ = predict(model, test.features, device=device)
        rows.append({"init": cell.init, "query": cell.query, "seed": cell.seed, "round": r, "labelled": len(labelled),
                     "classes_covered": int(torch.unique(labels[labelled]).numel()),
                     **accuracy_report(probs, test_labels, classes)})
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def curves(rows: list[dict[str, Any]], metric: str) -> dict[str, list[dict[str, float]]]:
    """Per ``init+query`` curve, per round: labelled count, mean and sample std of ``metric`` over seeds."""
    grouped: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[f"{row['init']}+{row['query']}"][row["round"]].append(row)
    result = {}
    for name, by_round in grouped.items():
        result[name] = []
        for r in sorted(by_round):
            values = np.array([row[metric] for row in by_round[r]], dtype=float)
            result[name].append({"round": r, "labelled": by_round[r][0]["labelled"], "mean": float(values.mean()),
                                 "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                 "seeds": len(values)})
    return result


def plot_curves(table: dict[str, list[dict[str, float]]], path: Path, metric: str) -> Path:
    """Learning curves (mean over seeds, shaded +- std) against the number of labels; one colour per
    query strategy, one line style per initial pool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    inits = sorted({name.split("+")[0] for name in table})
    queries = sorted({name.split("+")[1] for name in table})
    colours = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-.", (0, (5, 1))]
    for name, points in sorted(table.items()):
        init, query = name.split("+")
        x = [p["labelled"] for p in points]
        mean = np.array([p["mean"] for p in points])
        std = np.array([p["std"] for p in points])
        colour = colours(queries.index(query) % 10)  # colour = query strategy, line style = initial pool
        ax.plot(x, mean, linestyle=styles[inits.index(init) % len(styles)], color=colour, marker="o", markersize=3,
                label=name)
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.08)
    ax.set_xlabel("labelled samples")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title("active learning on teacher embeddings (linear probe)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def headline(table: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """First-round, last-round and mean-over-rounds (area under the curve / rounds) value of each curve."""
    return {name: {"first": pts[0]["mean"], "last": pts[-1]["mean"],
                   "mean_over_rounds": math.fsum(p["mean"] for p in pts) / len(pts)} for name, pts in table.items()}
