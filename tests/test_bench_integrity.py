"""zmdist bench counts only what it ran: repeated grid values and names are refused, a step that exits 0
without its done file failed, and garbled sweep, plan, status and summary files are one clear line naming
the file (real files on disk, real child processes; no stage runs, so these take seconds)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from test_bench_plan import SWEEP, write_sweep
from zmdist.bench.plan import Plan, Step, build_plan
from zmdist.bench.report import write_report
from zmdist.bench.runner import read_status, run_steps, status_path
from zmdist.bench.spec import load_sweep
from zmdist.config import ConfigError

# SWEEP's teachers, datasets and methods as YAML text, to write what yaml.safe_dump cannot: a key twice
SWEEP_TEXT = """\
name: t
teachers:
  micro: {model: zmdist-micro-vit}
datasets:
  digits: {source: sklearn-digits, templates: digits}
methods:
  zero-shot: {stage: zero-shot}
  fixmatch: {stage: train, options: {method.name: fixmatch}}
budgets: [2, 4]
seeds: [0, 1]
"""


@pytest.mark.parametrize("change, message", [
    ({"seeds": [0, 1, 0]}, "seeds: 0 listed more than once in [0, 1, 0]; list each value once"),
    ({"budgets": [2, 4, 4, 2]}, "budgets: 2, 4 listed more than once in [2, 4, 4, 2]"),
    ({"datasets": {"digits": {"source": "sklearn-digits", "budgets": [1, 1]}}},
     "datasets.digits.budgets: 1 listed more than once"),
    ({"methods": {"fixmatch": {"stage": "train", "budgets": [8, 8]}}}, "methods.fixmatch.budgets: 8 listed more than once"),
])
def test_a_repeated_grid_value_is_refused_naming_it(tmp_path, change, message):
    """Catches a grid value listed twice becoming the same cell twice: the report would count its seed
    twice (more seeds done than were run)."""
    path = write_sweep(tmp_path, **change)
    with pytest.raises(ConfigError, match=re.escape(f"sweep {path}: {message}")):
        load_sweep(path)


@pytest.mark.parametrize("section, entry, line, first", [
    ("teachers", "  micro: {model: zmdist-micro-vit, pretrained: x}\n", 4, 3),
    ("datasets", "  digits: {source: sklearn-digits}\n", 6, 5),
    ("methods", "  fixmatch: {stage: train, options: {method.name: supervised}}\n", 9, 8),
])
def test_a_name_given_twice_is_refused_with_its_line(tmp_path, section, entry, line, first):
    """Catches YAML's silent last-one-wins: the second `fixmatch:` replacing the first, one method run."""
    lines = SWEEP_TEXT.splitlines(keepends=True)
    at = next(i for i, text in enumerate(lines) if text == f"{section}:\n") + 2  # after the section's first entry
    path = tmp_path / "sweep.yaml"
    path.write_text("".join(lines[:at] + [entry] + lines[at:]))
    name = entry.split(":")[0].strip()
    expected = f"sweep {path}: line {line}, column 3: key '{name}' appears twice (first at line {first}): keep one"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_sweep(path)


def test_an_option_given_dotted_and_nested_and_a_label_given_twice_are_refused(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP_TEXT.replace("options: {method.name: fixmatch}",
                                       "options: {method.name: fixmatch, method: {name: supervised}}"))
    with pytest.raises(ConfigError, match=re.escape(f"sweep {path}: methods.fixmatch.options.method.name: given "
                                                    "twice (a dotted key beside its section")):
        load_sweep(path)
    methods = json.loads(json.dumps(SWEEP["methods"]))
    methods["supervised"]["label"] = "FixMatch"  # fixmatch's label: one row of the report would hide the other
    path = write_sweep(tmp_path, methods=methods)
    with pytest.raises(ConfigError, match="methods.supervised: label 'FixMatch' is also the label of methods.fixmatch"):
        load_sweep(path)
    with pytest.raises(ConfigError, match=re.escape("methods.a/b: a name cannot contain '/'")):
        load_sweep(write_sweep(tmp_path, methods={"a/b": {"stage": "zero-shot"}}))


@pytest.mark.parametrize("content, message", [
    (SWEEP_TEXT.encode()[:-40] + b"\xff\xfe\x00\x13", "not UTF-8 text (byte 0xff at offset"),
    (SWEEP_TEXT.encode().replace(b"seeds: [0, 1]", b"seeds: [0, 1"), "line 11, column 1: YAML syntax error"),
])
def test_a_garbled_sweep_file_is_one_error_naming_it(tmp_path, content, message):
    """Catches a bare UnicodeDecodeError (no file name) from a sweep file that is not text."""
    path = tmp_path / "sweep.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    text = str(caught.value)
    assert text.startswith(f"sweep {path}: ") and message in text and "\n" not in text


def _one_step_plan(tmp_path: Path, argv: list[str]) -> Plan:
    out = tmp_path / "out"
    cell = out / "cells" / "c"
    step = Step("cell/m/d/t/s0", "train", argv, str(cell), str(cell / "summary.json"), [],
                {"dataset": "d", "teacher": "t", "method": "m", "budget": None, "seed": 0, "kind": "train"})
    return Plan("t", str(out), [step], {})


def test_a_step_that_exits_0_without_its_done_file_failed(tmp_path):
    """Catches a step recorded done because its process exited 0 (`python -m platform` prints and exits
    0, writing nothing): the report would count a cell that has no result."""
    plan = _one_step_plan(tmp_path, ["platform"])
    (step,) = plan.steps
    counts = run_steps(plan, plan.steps, progress=False)
    assert counts == {"failed": 1}
    status = read_status(plan, step)
    assert status["state"] == "failed" and status["returncode"] == 0
    assert status["reason"] == f"exited 0 but {step.done} was not written"


def test_garbled_plan_status_and_summary_files_name_themselves(tmp_path, caplog):
    plan = build_plan(load_sweep(write_sweep(tmp_path)), tmp_path / "out")
    plan_file = plan.save()
    good = plan_file.read_text()
    plan_file.write_text(good[:len(good) // 2])  # cut short
    with pytest.raises(ValueError, match=re.escape(f"{plan_file} is not valid JSON, it is truncated or garbled")
                       + r".*rerun `zmdist bench SWEEP.yaml --out"):
        Plan.load(plan.out)
    plan_file.write_text(good)

    # a status file records the last attempt only: unreadable, the step is pending (and rerun), with a warning
    cell = plan.cells[0]
    status = status_path(plan, cell)
    status.parent.mkdir(parents=True)
    status.write_bytes(b'{"state": "fail')
    with caplog.at_level(logging.WARNING, logger="zmdist"):
        got = read_status(plan, cell)
    assert got["state"] == "pending" and f"{status} is not valid JSON" in got["reason"]
    assert f"{status} is not valid JSON" in caplog.text and "reruns it" in caplog.text
    status.write_text(json.dumps({"step": cell.id}))
    assert read_status(plan, cell)["state"] == "pending" and "records no known state" in read_status(plan, cell)["reason"]
    status.write_text(json.dumps({"step": cell.id, "state": "done"}))  # its done file was removed since
    assert read_status(plan, cell) == {"state": "pending", "reason": f"{cell.done} was removed after the step "
                                                                     "finished: the next run reruns the step"}
    assert write_report(Plan.load(plan.out))["states"]["pending"] == len(plan.cells)

    done = Path(cell.done)
    done.parent.mkdir(parents=True)
    done.write_text('{"accuracy": 0.')
    with pytest.raises(ValueError, match=re.escape(f"{done} is not valid JSON") + r".*delete it and rerun"):
        write_report(Plan.load(plan.out))
