"""zmdist bench launcher=slurm on the real two-node test cluster: the shared stages as one job, the cells
as a job array that depends on it, then the report; a rerun submits nothing."""

from __future__ import annotations

import json

import pytest
import yaml

from test_bench_run import SMALL, bench
from test_slurm import cluster  # noqa: F401  (the autouse fixture that fails when the cluster is not up)

pytestmark = pytest.mark.slurm


def test_sweep_as_shared_job_then_cell_array(tmp_path):
    sweep = json.loads(json.dumps(SMALL))
    sweep["seeds"] = [0, 1]
    sweep["slurm"] = {"shared": {"time": 10}, "cells": {"time": 10, "cpus_per_task": 1}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "bench"
    result = bench(str(path), "--out", str(out), "launcher=slurm", "timeout=600", "progress=false", timeout=700)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    jobs = json.loads((out / "jobs.json").read_text())["jobs"]
    shared, *cells = jobs
    assert shared["array_size"] is None and "only=shared" in shared["argv"]
    assert [c["array_task"] for c in cells] == [0, 1] and {c["array_size"] for c in cells} == {2}
    array_id = cells[0]["job_id"].split("_")[0]
    assert [c["job_id"] for c in cells] == [f"{array_id}_0", f"{array_id}_1"]
    scripts = {p.name: p.read_text() for p in (out / "submitit").glob("*_submission.sh")}
    waits = [name for name, text in scripts.items() if f"--dependency=afterany:{shared['job_id']}" in text]
    assert waits == [f"{array_id}_submission.sh"], sorted(scripts)  # the array, and only it, waits for the shared job
    summary = json.loads((out / "summary.json").read_text())
    assert summary["launcher"] == "slurm" and summary["array_size"] == 2
    assert summary["states"] == {"done": 4, "failed": 0, "blocked": 0, "pending": 0}
    # each array task ran exactly its one cell, in a SLURM job of its own
    for seed in (0, 1):
        log = (out / "logs" / f"cell__supervised__digits__micro__b2__s{seed}.log").read_text()
        assert log.count("===== ") == 1
    task_logs = sorted((out / "submitit").glob(f"{array_id}_*_0_log.out"))
    assert len(task_logs) == 2
    assert "| supervised |" in (out / "report.md").read_text()

    again = bench(str(path), "--out", str(out), "launcher=slurm", "timeout=300", "progress=false", timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(json.loads((out / "jobs.json").read_text())["jobs"]) == 3  # nothing left to submit
