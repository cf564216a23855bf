"""``zmdist bench report DIR``: the sweep's table (Markdown, CSV), plots and one JSON with everything.

Rows are methods (x teacher when the sweep has several), columns are dataset / labels per class, like the
papers' tables; each entry is the mean +- sample std over the seeds that finished, in percent for
accuracies, with the published number in brackets when the sweep stores one (its source, per method, listed
above the table). Train cells also show, labelled, the mean best test accuracy seen at their evaluations
(what USB's tables report) beside the final model's, which stays the headline; TRZSL prompt-tune cells are
compared on the harmonic mean of seen and unseen accuracy (GRIP's TRZSL column) with top-1 beside it
(a kind's ``aside``). An entry with missing
seeds says how many finished (``2/3 seeds``); a failed cell is listed under the table with its log.
Plots: accuracy against labels per class per dataset (methods with a budget), and active-learning
learning curves (mean over seeds, shaded +- std).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from zmdist.atomic import atomic_path, atomic_write_text
from zmdist.bench.kinds import CELL_KINDS
from zmdist.bench.plan import Plan
from zmdist.bench.runner import STATES, read_status
from zmdist.jsonfile import read_json

REPORT_FILES = ("report.md", "report.csv", "report.json")


def cell_results(plan: Plan) -> list[dict[str, Any]]:
    """Each cell with its state, its number (when done) and, for active learning, its curve."""
    rows = []
    for cell in plan.cells:
        kind = CELL_KINDS.get(cell.meta["kind"])
        status = read_status(plan, cell)
        row = {"id": cell.id, **cell.meta, "state": status["state"], "out": cell.out, "value": None, "best": None,
               "curve": None, "metric_name": None, "aside": None}
        if status["state"] == "done":
            summary = read_json(cell.done, f"delete it and rerun `zmdist bench SWEEP.yaml --out {plan.out}`: the step "
                                           "that writes it runs again")
            row["value"] = kind.metric(summary)
            row["best"] = kind.best(summary) if kind.best else None
            row["curve"] = kind.curve(summary) if kind.curve else None
            row["metric_name"] = kind.metric_name_of(summary) if kind.metric_name_of else None
            row["aside"] = kind.aside(summary) if kind.aside else None
        else:
            row.update({k: status[k] for k in ("reason", "log", "tail") if k in status})
        rows.append(row)
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _column(dataset: str, budget: int | None) -> str:
    return dataset if budget is None else f"{dataset}/{budget}"


def aggregate(plan: Plan, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (method, teacher, dataset, budget): seeds done, mean, std, published, difference."""
    sweep = plan.sweep
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        groups[(cell["method"], cell["teacher"], cell["dataset"], cell["budget"])].append(cell)
    entries = []
    for (method, teacher, dataset, budget), members in groups.items():
        kind = CELL_KINDS.get(sweep["methods"][method]["stage"])
        values = [c["value"] for c in members if c["value"] is not None]
        mean, std = mean_std(values) if values else (None, None)
        bests = [c["best"] for c in members if c["value"] is not None and c["best"] is not None]
        best_mean, best_std = mean_std(bests) if bests else (None, None)
        published = _published(sweep, method, dataset, budget, teacher)
        scale = 100.0 if kind.percent else 1.0
        asides = [c["aside"] for c in members if c["value"] is not None and c["aside"] is not None]
        aside_mean, aside_std = mean_std([v for _, v in asides]) if asides else (None, None)
        entries.append({
            "method": method, "label": sweep["methods"][method]["label"] or method, "teacher": teacher,
            "dataset": dataset, "budget": budget, "scale": scale,
            "metric": next((c["metric_name"] for c in members if c["metric_name"]), kind.metric_name),
            "aside_name": asides[0][0] if asides else None, "aside_mean": aside_mean, "aside_std": aside_std,
            "seeds_done": len(values), "seeds": len(members), "mean": mean, "std": std,
            "best_mean": best_mean, "best_std": best_std, "best_seeds": len(bests),
            "published": published,
            "published_source": (_published_source(sweep, method) if published is not None else None),
            "difference": None if published is None or mean is None else mean * scale - published,
            "curves": [c["curve"] for c in members if c["curve"]],
        })
    return entries


def _published(sweep: dict[str, Any], method: str, dataset: str, budget: int | None, teacher: str) -> float | None:
    numbers = sweep["published"].get(method, {})
    key = _column(dataset, budget)
    return numbers.get(f"{key}/{teacher}", numbers.get(key))


def _published_source(sweep: dict[str, Any], method: str) -> str:
    """Where a method's published numbers come from: its ``published_source``, else the sweep's reference."""
    return sweep.get("published_source", {}).get(method) or sweep["reference"] or "the paper"


def _fmt(entry: dict[str, Any]) -> str:
    if entry["mean"] is None:
        text = "-"
    else:
        digits = 1 if entry["scale"] == 100.0 else 3
        text = f"{entry['mean'] * entry['scale']:.{digits}f} ± {entry['std'] * entry['scale']:.{digits}f}"
        if entry["seeds_done"] < entry["seeds"]:
            text += f" ({entry['seeds_done']}/{entry['seeds']} seeds)"
        if entry["best_mean"] is not None:
            text += f"; best {entry['best_mean'] * entry['scale']:.{digits}f} ± {entry['best_std'] * entry['scale']:.{digits}f}"
            if entry["best_seeds"] < entry["seeds_done"]:
                text += f" ({entry['best_seeds']}/{entry['seeds_done']} seeds)"
        if entry["aside_mean"] is not None:
            text += (f"; {entry['aside_name']} {entry['aside_mean'] * entry['scale']:.{digits}f} ± "
                     f"{entry['aside_std'] * entry['scale']:.{digits}f}")
    if entry["published"] is not None:
        text += f" [{entry['published']:g}]"
    return text


def markdown(plan: Plan, entries: list[dict[str, Any]], cells: list[dict[str, Any]]) -> str:
    sweep = plan.sweep
    several_teachers = len(sweep["teachers"]) > 1
    columns = sorted({(e["dataset"], e["budget"]) for e in entries},
                     key=lambda c: (list(sweep["datasets"]).index(c[0]), -1 if c[1] is None else c[1]))
    rows: dict[str, dict[tuple, dict[str, Any]]] = defaultdict(dict)
    for e in entries:
        name = e["label"] + (f" ({e['teacher']})" if several_teachers else "")
        rows[name][(e["dataset"], e["budget"])] = e
    header = ["method", *(_column_title(d, b) for d, b in columns)]
    lines = [f"# {sweep['name']}", ""]
    if sweep["description"]:
        lines += [sweep["description"].strip(), ""]
    metrics = sorted({e["metric"] for e in entries})
    best = any(e["best_mean"] is not None for e in entries)
    lines += [f"Mean ± std over seeds ({', '.join(metrics)}; accuracies in %)"
              + ("; best: the best test accuracy at the run's evaluations (USB's tables report that one; the "
                 "headline is the final model)" if best else "") + ".", ""]
    sources: dict[str, list[str]] = defaultdict(list)  # published source -> the rows' labels it gives numbers of
    for e in entries:
        if e["published_source"] is not None and e["label"] not in sources[e["published_source"]]:
            sources[e["published_source"]].append(e["label"])
    if sources:
        lines += [f"- [published] {', '.join(labels)}: {source}" for source, labels in sources.items()] + [""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for name, by_column in rows.items():
        lines.append("| " + " | ".join([name, *(_fmt(by_column[c]) if c in by_column else "" for c in columns)]) + " |")
    problems = [c for c in cells if c["state"] != "done"]
    if problems:
        lines += ["", f"{len(problems)} of {len(cells)} cells not done:", ""]
        for c in problems:
            where = f"; log: {c['log']}" if c.get("log") else ""
            lines.append(f"- {c['id']}: {c['state']}" + (f" ({c['reason']})" if c.get("reason") else "") + where)
    return "\n".join(lines) + "\n"


def _column_title(dataset: str, budget: int | None) -> str:
    return dataset if budget is None else f"{dataset} {budget}/class"


def to_csv(entries: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["method", "label", "teacher", "dataset", "budget", "metric", "seeds_done", "seeds", "mean", "std",
              "best_mean", "best_std", "published", "published_source", "difference"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for e in entries:
        scaled = {k: "" if e[k] is None else round(e[k] * e["scale"], 6)
                  for k in ("mean", "std", "best_mean", "best_std")}
        writer.writerow({**e, **scaled, "difference": "" if e["difference"] is None else round(e["difference"], 6)})
    return buf.getvalue()


def plot_budgets(entries: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy against labels per class, one panel per dataset, one line per method (+- std bars)."""
    by_dataset: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for e in entries:
        if e["budget"] is not None and e["mean"] is not None:
            by_dataset[e["dataset"]][f"{e['label']} ({e['teacher']})"].append(e)
    if not by_dataset:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(by_dataset), figsize=(4.5 * len(by_dataset), 3.6), squeeze=False)
    for ax, (dataset, lines) in zip(axes[0], by_dataset.items()):
        for name, points in lines.items():
            points = sorted(points, key=lambda e: e["budget"])
            ax.errorbar([p["budget"] for p in points], [p["mean"] * p["scale"] for p in points],
                        yerr=[p["std"] * p["scale"] for p in points], marker="o", capsize=3, label=name)
        for e in entries:  # label-free rows of the same dataset (the zero-shot teacher): a level line
            if (e["dataset"] == dataset and e["budget"] is None and e["mean"] is not None and e["scale"] == 100.0
                    and not e["curves"]):
                ax.axhline(e["mean"] * 100, linestyle="--", linewidth=1, color="gray")
                ax.annotate(f"{e['label']} ({e['teacher']})", (0.01, e["mean"] * 100), xycoords=("axes fraction", "data"),
                            fontsize=7, color="gray", va="bottom")
        ax.set_xticks(sorted({p["budget"] for points in lines.values() for p in points}))
        ax.set_title(dataset)
        ax.set_xlabel("labels per class")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7)
    return _save(fig, plt, path)


def plot_learning_curves(entries: list[dict[str, Any]], path: Path) -> Path | None:
    """Active-learning curves: accuracy against labelled samples, mean over seeds, shaded +- std."""
    import numpy as np

    curves = [e for e in entries if e["curves"]]
    if not curves:
        return None
    datasets = sorted({e["dataset"] for e in curves})
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for e in (e for e in curves if e["dataset"] == dataset):
            rounds = min(len(c) for c in e["curves"])
            x = [e["curves"][0][r][0] for r in range(rounds)]
            y = np.array([[c[r][1] for r in range(rounds)] for c in e["curves"]]) * 100
            mean, std = y.mean(0), (y.std(0, ddof=1) if len(y) > 1 else np.zeros(rounds))
            ax.plot(x, mean, label=f"{e['label']} ({e['teacher']})")
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_title(dataset)
        ax.set_xlabel("labelled samples")
        ax.set_ylabel("class-weighted accuracy (%)")
        ax.legend(fontsize=7)
    return _save(fig, plt, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_report(plan: Plan, folder: Path | None = None) -> dict[str, Any]:
    """Write report.md, report.csv, report.json and the plots into ``folder`` (default: the sweep's)."""
    folder = Path(folder or plan.out)
    cells = cell_results(plan)
    entries = aggregate(plan, cells)
    text = markdown(plan, entries, cells)
    plots = {name: str(p) for name, p in (
        ("accuracy_vs_labels", plot_budgets(entries, folder / "accuracy_vs_labels.png")),
        ("learning_curves", plot_learning_curves(entries, folder / "learning_curves.png"))) if p is not None}
    if plots:
        text += "\n" + "\n".join(f"![{name}]({Path(p).name})" for name, p in plots.items()) + "\n"
    atomic_write_text(folder / "report.md", text)
    atomic_write_text(folder / "report.csv", to_csv(entries))
    states = {s: sum(c["state"] == s for c in cells) for s in STATES}
    everything = {"name": plan.name, "cells": cells, "entries": entries, "plots": plots, "states": states}
    atomic_write_text(folder / "report.json", json.dumps(everything, indent=1) + "\n")
    return {"markdown": text, "entries": entries, "cells": cells, "plots": plots, "states": states,
            "files": [str(folder / f) for f in REPORT_FILES]}
