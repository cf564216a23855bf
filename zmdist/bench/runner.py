"""Run a plan's steps in order, each in its own process with its own log; skip finished ones.

A step runs as a child process (``python -m zmdist STAGE ...``): a crash, an out-of-memory kill or a
stage's error ends that step only, and its output goes to ``DIR/logs/<step>.log`` (appended, one header
per attempt, so a rerun keeps the earlier attempt). ``DIR/status/<step>.json`` records how the last
attempt ended (done / failed with the exit status and the log's tail / blocked by a failed input). A step
whose ``done`` file exists is skipped, so rerunning a killed sweep finishes only what is missing; a cell
killed midway is rerun (the train stage resumes from its last checkpoint when it has one).

The child is a single process of a single task: the parent's RANK/WORLD_SIZE/MASTER_* are removed and it
is told it is task 0 of 1, so a job-array task running one cell does not make the cell's stage split its
work by the array's position.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from zmdist.atomic import atomic_write_text
from zmdist.bench.plan import Plan, Step, python_command
from zmdist.jsonfile import read_json
from zmdist.progress import Progress

LOG_TAIL_LINES = 30
STATES = ("done", "failed", "blocked", "pending")  # how a step stands (the report counts each)
log = logging.getLogger("zmdist")
_CHILD_ENV = {"ZMDIST_TASK_INDEX": "0", "ZMDIST_NUM_TASKS": "1"}
# what torchrun / zmdist submit set for the parent's process group: the child is a world of its own
_CHILD_ENV_DROP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _file_name(step: Step) -> str:
    return step.id.replace("/", "__")


def log_path(plan: Plan, step: Step) -> Path:
    return Path(plan.out) / "logs" / f"{_file_name(step)}.log"


def status_path(plan: Plan, step: Step) -> Path:
    return Path(plan.out) / "status" / f"{_file_name(step)}.json"


def is_done(step: Step) -> bool:
    return Path(step.done).is_file()


def read_status(plan: Plan, step: Step) -> dict[str, Any]:
    """How the step stands: ``done`` when its done file exists, else its last recorded attempt, else pending.

    A status file only records the last attempt; whether a step runs is decided by its done file alone.
    So one that cannot be read (garbled, truncated, hand-edited) is reported as pending with a warning
    naming it: the next run reruns the step, as it would anyway without a done file, and rewrites it."""
    if is_done(step):
        return {"state": "done"}
    path = status_path(plan, step)
    if not path.is_file():
        return {"state": "pending"}
    ignored = "ignored: the step counts as pending; the next `zmdist bench` run reruns it and rewrites this file"
    try:
        record = read_json(path, ignored)
        if record.get("state") not in STATES:
            raise ValueError(f"{path} records no known state ({record.get('state')!r}, known: "
                             f"{', '.join(STATES)}): {ignored}")
    except ValueError as err:
        log.warning("zmdist bench: %s", err)
        return {"state": "pending", "reason": str(err)}
    if record["state"] == "done":  # recorded done, but its done file has since been removed
        return {"state": "pending", "reason": f"{step.done} was removed after the step finished: the next run "
                                              "reruns the step"}
    return record


def _write_status(plan: Plan, step: Step, **status: Any) -> dict[str, Any]:
    record = {"step": step.id, **status, "time": time.time()}
    atomic_write_text(status_path(plan, step), json.dumps(record, indent=1) + "\n")
    return record


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
    env.update(_CHILD_ENV)
    return env


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_step(plan: Plan, step: Step) -> dict[str, Any]:
    """Run one step now (its inputs are done); return and record how it ended."""
    log = log_path(plan, step)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = python_command(step)
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {step.id}: {' '.join(command)}\n")
        fh.flush()
        rc = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, env=child_env()).returncode
    seconds = time.perf_counter() - start
    if rc == 0 and is_done(step):
        return _write_status(plan, step, state="done", seconds=seconds, log=str(log))
    why = f"exit status {rc}" if rc else f"exited 0 but {step.done} was not written"
    return _write_status(plan, step, state="failed", returncode=rc, reason=why, seconds=seconds, log=str(log),
                         tail=tail(log))


def run_steps(plan: Plan, steps: list[Step], *, progress: bool = True) -> Counter:
    """Run ``steps`` in order (the plan's order puts inputs first); return how many ended in each state
    (done, skipped, failed, blocked). Inputs outside ``steps`` must already be done (a job array's cells
    after the shared job)."""
    counts: Counter = Counter()
    with Progress(len(steps), "bench", "step", enabled=progress) as bar:
        for step in steps:
            if is_done(step):
                counts["skipped"] += 1
            else:
                missing = [d for d in step.deps if not is_done(plan.step(d))]
                if missing:
                    why = ", ".join(f"{d} ({read_status(plan, plan.step(d))['state']})" for d in missing)
                    _write_status(plan, step, state="blocked", reason=f"inputs not done: {why}")
                    counts["blocked"] += 1
                elif not step.argv:
                    counts["failed"] += 1  # deps are done but the file they should have written is not there
                    _write_status(plan, step, state="failed", reason=f"{step.done} is missing")
                else:
                    result = run_step(plan, step)
                    counts[result["state"]] += 1
                    if result["state"] == "failed":
                        print(f"zmdist bench: {step.id} FAILED ({result['reason']}); log: {result['log']}\n"
                              f"{result['tail']}", flush=True)
            bar.update(1)
    return counts
