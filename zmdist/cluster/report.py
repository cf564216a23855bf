"""After submitting: wait for the jobs, then print each task's result or the failed task's remote traceback.

A job is over when every task has written submitit's result file, or when SLURM (or, for the local
executor, submitit) says it is; a job SLURM calls over without a result gets a short grace period for
the shared file system. Every outcome is recorded in ``OUT/jobs.json`` (``zmdist.cluster.jobs``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from zmdist.cluster import jobs as jobs_db

PROG = "zmdist submit"


def job_record(job, stage: str, argv: list[str], cluster: str, tasks: int, array: tuple[int, int] | None) -> dict:
    """The ``jobs.json`` entry of a just-submitted job (``array``: (task index, array size))."""
    return {
        "job_id": str(job.job_id), "stage": stage, "argv": argv, "cluster": cluster, "tasks": tasks,
        "array_task": None if array is None else array[0], "array_size": None if array is None else array[1],
        "submitted": time.time(), "folder": str(job.paths.folder), "state": "SUBMITTED",
        "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
    }


def final_state(job, cluster: str) -> str | None:
    """A terminal state when the job is over (result written, or SLURM/the local process says so)."""
    if all(job.task(i).paths.result_pickle.exists() for i in range(job.num_tasks)):
        return "DONE"
    if cluster == "slurm":
        state = jobs_db.slurm_state(str(job.job_id))
        if state is None or state.split()[0] in jobs_db.TERMINAL:
            return state or "GONE"
        return None
    return "DONE" if job.done() else None


def wait_for(jobs: list, cluster: str, timeout: float | None, grace_s: float = 20.0) -> list[str]:
    """Wait until every job is over; return the ids still running when ``timeout`` ran out."""
    deadline = None if timeout is None else time.monotonic() + timeout
    over_since: dict[str, float] = {}
    pending = list(jobs)
    while pending:
        still = []
        for job in pending:
            state = final_state(job, cluster)
            if state == "DONE":
                continue
            if state is not None:  # SLURM says over but no result yet: give the file system a moment
                first = over_since.setdefault(str(job.job_id), time.monotonic())
                if time.monotonic() - first > grace_s:
                    continue
            still.append(job)
        pending = still
        if not pending:
            break
        if deadline is not None and time.monotonic() > deadline:
            return [str(j.job_id) for j in pending]
        time.sleep(0.5)
    return []


def _short(result: Any) -> str:
    text = json.dumps(result, default=str)
    return text if len(text) < 400 else text[:400] + "..."


def report(jobs: list, records: list[dict], out: Path, stage: str) -> int:
    """Print each task's result, or the failure with the remote traceback; 0 when all succeeded."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    failed = 0
    for job, rec in zip(jobs, records):
        try:
            results = job.results()
        except (FailedJobError, UncompletedJobError) as err:
            failed += 1
            jobs_db.update(out, rec["job_id"], state="FAILED")
            print(f"{PROG}: job {job.job_id} ({stage}) FAILED. Remote error and traceback:\n"
                  f"{'-' * 72}\n{err}\n{'-' * 72}\nlogs: {rec['stdout']}\n      {rec['stderr']}", file=sys.stderr)
            continue
        jobs_db.update(out, rec["job_id"], state="COMPLETED")
        for task, res in enumerate(results):
            where = f"{res.get('node')} rank {res.get('rank')}/{res.get('world_size')}" if isinstance(res, dict) else ""
            print(f"job {job.job_id} task {task} ({where}): {_short(res.get('result') if isinstance(res, dict) else res)}")
    return 1 if failed else 0
