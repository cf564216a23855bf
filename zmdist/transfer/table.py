"""The measured-task table (CSV) -> one line per target (gain, forgetting), saved as ``fit.json``.

Why a file format of its own: ``fit`` runs once on a few measured tasks, ``predict`` later on new tasks'
scores, possibly elsewhere; ``fit.json`` carries everything the interval needs (n, residual spread,
x mean and Sxx), so predicting never needs the table again.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from zmdist.atomic import atomic_write_text
from zmdist.jsonfile import read_json
from zmdist.methods.transfer import LineFit, fit_line

FIT_FILE = "fit.json"


def read_table(path: Path, task_column: str, columns: list[str]) -> tuple[list[str], dict[str, list[float]]]:
    """(task names, column -> values) of ``path``; a missing column or a non-number names file, row, column."""
    if not path.is_file():
        raise FileNotFoundError(f"table={path}: no such file (a CSV with a header row: {task_column}, "
                                f"{', '.join(columns)})")
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a byte-order mark (Excel's) is not a name
        reader = csv.DictReader(fh)
        try:
            header = reader.fieldnames or []
            rows = list(reader)
        except UnicodeDecodeError as err:
            raise ValueError(f"table={path} is not UTF-8 text ({err}); save it as CSV UTF-8") from None
        missing = [c for c in [task_column, *columns] if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {missing} (the header has {header}); choose the score with "
                             "score_column= and the targets with targets=[...]")
        tasks: list[str] = []
        values: dict[str, list[float]] = {c: [] for c in columns}
        for row_number, row in enumerate(rows, start=2):
            tasks.append(row[task_column])
            for column in columns:
                try:
                    value = float(row[column])
                except (TypeError, ValueError):
                    raise ValueError(f"{path} line {row_number} (task {row[task_column]!r}): column {column!r} is "
                                     f"{row[column]!r}, not a number") from None
                if not math.isfinite(value):
                    raise ValueError(f"{path} line {row_number} (task {row[task_column]!r}): column {column!r} is "
                                     f"{row[column]!r}; give a finite number or drop the row")
                values[column].append(value)
    if len(set(tasks)) != len(tasks):
        dup = sorted({t for t in tasks if tasks.count(t) > 1})
        raise ValueError(f"{path}: task names {dup} appear more than once")
    return tasks, values


def fit_table(tasks: list[str], values: dict[str, list[float]], score_column: str,
              targets: list[str]) -> dict[str, Any]:
    """``fit.json``'s content: per target, the line of that target on ``score_column`` and its errors."""
    fits = {}
    for target in targets:
        try:
            fits[target] = asdict(fit_line(values[score_column], values[target]))
        except ValueError as err:
            raise ValueError(f"fitting {target} on {score_column}: {err}") from None
    return {"score_column": score_column, "tasks": tasks, "scores": values[score_column],
            "targets": {t: values[t] for t in targets}, "fits": fits}


def write_fit(out: Path, fit: dict[str, Any], level: float) -> Path:
    path = out / FIT_FILE
    atomic_write_text(path, json.dumps({**fit, "level": level}, indent=2) + "\n")
    return path


def load_fit(path: Path) -> dict[str, Any]:
    """A ``fit.json`` (or the folder holding one), checked to hold what ``predict`` needs."""
    path = path / FIT_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"fit={path}: no such file; run `zmdist transfer fit --table FILE.csv --out DIR` "
                                f"first and pass DIR/{FIT_FILE}")
    data = read_json(path, "rerun `zmdist transfer fit --table FILE.csv --out DIR` to rebuild it")
    if not isinstance(data.get("fits"), dict) or "score_column" not in data or not data.get("scores"):
        raise ValueError(f"{path} is not a `zmdist transfer fit` result (no 'fits' / 'score_column' / 'scores')")
    return data


def line_of(fit: dict[str, Any], target: str) -> LineFit:
    return LineFit(**fit["fits"][target])


def score_of(spec: str, score_column: str) -> tuple[str, float]:
    """(name, score) of one ``predict`` input: a number, or a ``zmdist transfer score`` output (its folder or
    summary.json), whose ``score_column`` entry is read."""
    try:
        score = float(spec)
    except ValueError:
        pass
    else:
        if not math.isfinite(score):
            raise ValueError(f"scores: {spec!r} is not a finite number; give each new task's {score_column} score")
        return spec, score
    path = Path(spec)
    summary = path / "summary.json" if path.is_dir() else path
    if not summary.is_file():
        raise FileNotFoundError(f"scores: {spec!r} is neither a number nor a `zmdist transfer score` output "
                                f"folder / summary.json")
    data = read_json(summary, "rerun `zmdist transfer score` into that folder to rebuild it")
    if score_column not in data.get("scores", {}):
        raise ValueError(f"scores: {summary} has no score {score_column!r} (it has {sorted(data.get('scores', {}))}); "
                         "the fit was made on that column")
    name = str(data.get("task") or (path.name if path.is_dir() else path.parent.name))
    score = data["scores"][score_column]
    if not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"scores: task {name!r} has {score_column} {score!r} in {summary}, not a finite number: its "
                         "embeddings gave no score; check them and rerun `zmdist transfer score`")
    return name, float(score)
