"""``zmdist bench``: reproduce a paper's table, one command per table (sweeps in ``configs/bench/``).

    zmdist bench configs/bench/offline.yaml --out runs/bench-offline       # run every cell, then report
    zmdist bench plan configs/bench/zeromatch-cifar100.yaml --out DIR      # dry run: steps, GPU-hours
    zmdist bench configs/bench/zeromatch-cifar100.yaml --out DIR launcher=slurm
    zmdist bench report runs/bench-offline                                  # table, CSV, plots, JSON

A sweep is teachers x datasets x methods x label budgets x seeds (``zmdist.bench.spec``); shared stages
(teacher recipe, shard, embed, pseudolabel) run once and every cell reuses them (``zmdist.bench.plan``).
Locally the steps run in sequence, each in its own process and log; a rerun skips finished steps and a
failed cell is reported with its log without stopping the others (``zmdist.bench.runner``). With
``launcher=slurm`` the shared stages are one job and the cells a job array depending on it
(``zmdist.bench.submit``). The report puts the published numbers beside ours (``zmdist.bench.report``).
The exit status is 1 when any step failed (after the report is written).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zmdist import dist
from zmdist.bench.dryrun import describe
from zmdist.bench.plan import Plan, build_plan
from zmdist.bench.report import write_report
from zmdist.bench.runner import read_status, run_steps
from zmdist.bench.spec import Sweep, load_sweep
from zmdist.config import option, to_dict
from zmdist.provenance import provenance, write_run_files
from zmdist.stages.outdir import own_output

NAME = "bench"
HELP = "run a benchmark sweep (datasets x budgets x methods x seeds x teachers) and report it beside the papers"
DEFAULT_OUT = Path("runs/bench")
POSITIONAL = "target"  # `zmdist bench [ACTION] TARGET`: the sweep file, or for report the sweep's folder
log = logging.getLogger("zmdist")


@dataclass
class Config:
    action: Literal["run", "plan", "report"] = option("run", "run the sweep, print its plan (dry run), or report a "
                                                             "sweep folder")
    target: str = option("", "run, plan: the sweep YAML (configs/bench/); report: the sweep's folder (default --out)")
    launcher: Literal["local", "slurm"] = option("local", "local: cells in sequence here; slurm: shared stages as "
                                                          "one job, cells as a job array after it")
    only: Literal["all", "shared", "cells"] = option("all", "run only the shared stages or only the cells (what the "
                                                            "SLURM jobs run)")
    cells: list[str] = option(factory=list, help="run only these cell ids (a job array's tasks share them)")
    wait: bool = option(True, "launcher=slurm: wait for the jobs, then report")
    timeout: float | None = option(None, "launcher=slurm: seconds to wait before giving up (the jobs go on)")
    progress: bool = option(True, "show a progress line per step")


def run(cfg: Config, out: Path) -> dict[str, Any]:
    if cfg.action == "report":
        return report(Path(cfg.target) if cfg.target else out)
    if not cfg.target:
        raise ValueError("bench: name the sweep file, e.g. `zmdist bench configs/bench/offline.yaml --out DIR`")
    sweep = load_sweep(cfg.target)
    plan = build_plan(sweep, out)
    if cfg.action == "plan":
        text = describe(sweep, plan)
        print(text)
        return {"stage": NAME, "action": "plan", "steps": len(plan.steps), "cells": len(plan.cells), "text": text}
    # only=shared/cells: the jobs of a run whose submitting command holds the folder (array tasks run at once)
    with own_output(out, NAME, main=cfg.only == "all"):
        return _run(cfg, sweep, plan, out)


def _run(cfg: Config, sweep: Sweep, plan: Plan, out: Path) -> dict[str, Any]:
    plan.save()
    if cfg.launcher == "slurm" and cfg.only == "all":
        from zmdist.bench.submit import submit_plan

        jobs = submit_plan(plan, cfg.target, to_dict(sweep.slurm), wait=cfg.wait, timeout=cfg.timeout)
        if not cfg.wait or jobs["still_running"]:
            print(f"zmdist bench: submitted {len(jobs['jobs'])} job(s); follow with `zmdist submit --status {out}`, "
                  f"then `zmdist bench report {out}`")
            return {"stage": NAME, "action": "run", "launcher": "slurm", **jobs}
        return _finish(cfg, plan, out, {"launcher": "slurm", **jobs})
    steps = _selected(cfg, plan)
    counts = run_steps(plan, steps, progress=cfg.progress)
    log.info("bench: %s", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to do")
    if cfg.only != "all":
        return {"stage": NAME, "action": "run", "only": cfg.only, "steps": len(steps), **counts}
    return _finish(cfg, plan, out, {"launcher": "local", **counts})


def _selected(cfg: Config, plan: Plan) -> list:
    """The steps this process runs: shared and/or cells, ``cells`` if given (its share of them in an array)."""
    steps = plan.shared if cfg.only == "shared" else plan.cells if cfg.only == "cells" else plan.steps
    if cfg.cells:
        known = {s.id for s in plan.cells}
        missing = [c for c in cfg.cells if c not in known]
        if missing:
            raise ValueError(f"cells: {', '.join(missing)} not in the plan of {cfg.target} (was the sweep edited "
                             "after submitting?)")
        info = dist.detect()
        mine = set(cfg.cells[info.task_index::info.num_tasks])
        steps = [s for s in steps if s.id in mine]
    return steps


def _finish(cfg: Config, plan: Plan, out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Report, write the sweep's summary, and fail (exit 1) when a step failed."""
    result = report(out, plan)
    failed = [s.id for s in plan.steps if read_status(plan, s)["state"] in ("failed", "blocked")]
    results = {"stage": NAME, "action": "run", **extra, "states": result["states"], "failed": failed,
               "report": result["files"]}
    write_run_files(out, to_dict(cfg), {**results, **provenance()})
    if failed:
        raise ValueError(f"{len(failed)} step(s) did not finish ({', '.join(failed[:5])}"
                         f"{', ...' if len(failed) > 5 else ''}); see {out / 'report.md'} and the logs in {out / 'logs'}; "
                         "rerun the same command to retry only those")
    return results


def report(folder: Path, plan: Plan | None = None) -> dict[str, Any]:
    plan = plan or Plan.load(folder)
    result = write_report(plan, folder)
    print(result["markdown"])
    return {"stage": NAME, "action": "report", "states": result["states"], "files": result["files"],
            "plots": result["plots"]}
