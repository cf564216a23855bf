"""A sweep on SLURM: one job for the shared stages, then the cells as a job array that waits for it.

Both are ``zmdist bench run`` again, pickled as ``zmdist.cluster.task.StageTask`` like any ``zmdist
submit`` job (so they requeue on preemption, and the requeued run skips what finished): the shared job
with ``only=shared``, each array task with ``only=cells`` and the id of the one cell it runs. The array
depends on the shared job with ``afterany``: if a shared step failed, its cells end at once as
``blocked`` instead of waiting forever on a dependency SLURM can never satisfy. Only steps not done at
submission are submitted; cells that read a shared step's number (``zero-shot``) need no job.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from zmdist.bench.plan import Plan
from zmdist.bench.runner import is_done
from zmdist.cluster import jobs as jobs_db
from zmdist.cluster.report import job_record, wait_for
from zmdist.cluster.slurm import SubmitError, choose_cluster, make_executor
from zmdist.cluster.submit import CONFIG_KEYS, DEFAULTS
from zmdist.cluster.task import StageTask

log = logging.getLogger("zmdist")
STAGE = "bench"


def submit_options(options: dict[str, Any], what: str) -> dict[str, Any]:
    """``zmdist submit``'s defaults with the sweep's ``slurm.shared``/``slurm.cells`` options on top."""
    unknown = sorted(set(options) - CONFIG_KEYS)
    if unknown:
        raise SubmitError(f"sweep slurm.{what}: unknown submit option(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(CONFIG_KEYS))}")
    merged = {**DEFAULTS, "cluster": "slurm", "job_name": f"zmdist-bench-{what}", **options}
    merged["slurm"] = dict(merged.get("slurm") or {})
    return merged


def submit_plan(plan: Plan, sweep_file: str, slurm: dict[str, dict[str, Any]], *, wait: bool = True,
                timeout: float | None = None) -> dict[str, Any]:
    """Submit what is not done; with ``wait``, return when every job is over. Returns the job ids."""
    out = Path(plan.out)
    base = ["run", str(Path(sweep_file).resolve()), "--out", str(out), "launcher=local"]  # jobs may start elsewhere
    shared_todo = [s for s in plan.shared if not is_done(s)]
    cells_todo = [c for c in plan.cells if c.argv and not is_done(c)]
    submitted, records = [], []
    dependency = None
    if shared_todo:
        options = submit_options(slurm.get("shared", {}), "shared")
        executor = make_executor(choose_cluster(options), options, STAGE, out / "submitit")
        argv = [*base, "only=shared"]
        job = executor.submit(StageTask(STAGE, argv))
        submitted.append(job)
        records.append(job_record(job, STAGE, argv, "slurm", 1, None))
        dependency = f"afterany:{job.job_id}"
        log.info("bench: %d shared step(s) as SLURM job %s", len(shared_todo), job.job_id)
    if cells_todo:
        options = submit_options(slurm.get("cells", {}), "cells")
        if dependency:
            options["slurm"]["dependency"] = dependency
        executor = make_executor(choose_cluster(options), options, STAGE, out / "submitit")
        argv = [*base, "only=cells", f"cells={[c.id for c in cells_todo]}"]
        jobs = executor.map_array(StageTask(STAGE, argv), list(range(len(cells_todo))), [len(cells_todo)] * len(cells_todo))
        submitted += jobs
        records += [job_record(j, STAGE, argv, "slurm", 1, (i, len(jobs))) for i, j in enumerate(jobs)]
        log.info("bench: %d cell(s) as SLURM job array %s (after %s)", len(jobs), jobs[0].job_id,
                 dependency or "nothing")
    jobs_db.add(out, records)
    left = wait_for(submitted, "slurm", timeout) if wait and submitted else []
    return {"jobs": [r["job_id"] for r in records], "shared_job": records[0]["job_id"] if shared_todo else None,
            "array_size": len(cells_todo), "still_running": left}
