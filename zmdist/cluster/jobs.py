"""The record of jobs submitted from a run folder (``OUT/jobs.json``) and their live state.

``zmdist submit`` appends one entry per job (an array task is a job ``ARRAYID_i``); ``zmdist submit
--status OUT`` reads them back and asks where each stands: submitit's result file when the job has
finished, else SLURM (``squeue``, then ``scontrol show job``: no accounting database needed) or, for
``--cluster local``, whether the job's process is alive.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from zmdist.atomic import atomic_write_text

JOBS_FILE = "jobs.json"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED", "FINISHED", "DIED", "INTERRUPTED"}


def load(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / JOBS_FILE
    if not path.is_file():
        return []
    return json.loads(path.read_text())["jobs"]


def save(out: Path, jobs: list[dict[str, Any]]) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / JOBS_FILE, json.dumps({"format": "zmdist-jobs/1", "jobs": jobs}, indent=2))


def add(out: Path, entries: list[dict[str, Any]]) -> None:
    save(out, load(out) + entries)


def update(out: Path, job_id: str, **fields: Any) -> None:
    jobs = load(out)
    for job in jobs:
        if job["job_id"] == job_id:
            job.update(fields)
    save(out, jobs)


def _result_outcome(folder: Path, job_id: str, tasks: int) -> str | None:
    """"COMPLETED"/"FAILED" from submitit's result pickles once every task has written one."""
    outcomes = []
    for task in range(tasks):
        path = folder / f"{job_id}_{task}_result.pkl"
        if not path.is_file():
            return None
        try:
            with path.open("rb") as fh:
                outcomes.append(pickle.load(fh)[0])
        except Exception:  # a half-written pickle: not done yet
            return None
    return "COMPLETED" if all(o == "success" for o in outcomes) else "FAILED"


def slurm_state(job_id: str) -> str | None:
    """SLURM's state for a job (``123`` or ``123_4``), or None when SLURM no longer knows it."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                             timeout=30).stdout.split()
        if out:
            return out[0]
        show = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                              timeout=30).stdout
    except (subprocess.TimeoutExpired, OSError):
        return None
    for field in show.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return None


def live_state(job: dict[str, Any]) -> str:
    folder = Path(job["folder"])
    done = _result_outcome(folder, job["job_id"], int(job.get("tasks", 1)))
    if done:
        return done
    if job["cluster"] == "slurm":
        return slurm_state(job["job_id"]) or job.get("state") or "UNKNOWN"
    pid = int(str(job["job_id"]).split("_")[0])
    try:
        os.kill(pid, 0)
        return "RUNNING"
    except ProcessLookupError:
        return "DIED"  # the local controller is gone without a result
    except PermissionError:
        return "RUNNING"


def status_lines(out: Path) -> list[str]:
    jobs = load(out)
    if not jobs:
        return [f"no jobs recorded in {Path(out) / JOBS_FILE}"]
    lines = [f"{'job':<14} {'stage':<12} {'cluster':<7} {'tasks':>5} {'state':<12} submitted  logs"]
    for job in jobs:
        state = live_state(job)
        when = time.strftime("%m-%d %H:%M", time.localtime(job.get("submitted", 0)))
        lines.append(f"{job['job_id']:<14} {job['stage']:<12} {job['cluster']:<7} {job.get('tasks', 1):>5} "
                     f"{state:<12} {when}  {job['stdout']}")
        lines.append(f"{'':<14} {'':<12} {'':<7} {'':>5} {'':<12} {'':<11} {job['stderr']}")
    return lines
