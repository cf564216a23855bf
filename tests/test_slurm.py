"""`zmdist submit --cluster slurm` on the real two-node test cluster (bash slurm/local-cluster.sh up):
job arrays, a 2-node gloo job, preemption + requeue + resume, and a failing task."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_launch import TEACHER, clean_env, embedded_keys, zmdist
from zmdist.cluster import jobs as jobs_db

pytestmark = pytest.mark.slurm
UP_HINT = "the SLURM test cluster is not up: run `bash slurm/local-cluster.sh up` (as root), " \
          "or set ZMDIST_SLURM_TESTS=0 to deselect the SLURM tests"
# A teacher slow enough (a few hundred ms per shard) for a signal to land mid-run.
SLOW_VIT = {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "head_width": 32, "patch_size": 4},
            "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    if shutil.which("sinfo") is None:
        pytest.fail(UP_HINT + " (sinfo not found)", pytrace=False)
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=20).stdout
    except subprocess.TimeoutExpired:
        pytest.fail(UP_HINT + " (sinfo timed out)", pytrace=False)
    up = [line.split()[0] for line in out.splitlines() if line.split()[1].startswith(("idle", "mix", "alloc"))]
    if len(up) < 2:
        pytest.fail(f"{UP_HINT} (sinfo: {out.strip() or 'no nodes'})", pytrace=False)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    """Digit shards and pseudolabels for the training jobs, made as tests/test_train.py makes them (imported
    here, so the embed jobs' tests do not need the training stage to import)."""
    from test_train import prepare_digits

    root = tmp_path_factory.mktemp("train")
    prepare_digits(root, teacher_model="zmdist-micro-vit", pretrained="random", num_workers=0)
    return root / "shards", root / "pseudolabels"


def preempt_and_release(job_id: str) -> None:
    """Send what SLURM sends on preemption (preempt_send_user_signal) or before the time limit (--signal),
    wait until the job has requeued itself, and release it: `scontrol requeue` holds a job for about two
    minutes (BeginTime)."""
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    deadline = time.monotonic() + 90
    while jobs_db.slurm_state(job_id) != "PENDING":
        assert time.monotonic() < deadline, f"job {job_id} was not requeued: {jobs_db.slurm_state(job_id)}"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)


def test_embed_array_of_two_tasks(make_shards, tmp_path):
    shards, keys = make_shards([15, 15, 15, 15])
    emb, job = tmp_path / "emb", tmp_path / "job"
    proc = zmdist("submit", "--cluster", "slurm", "--array", "2", "--time", "5", "--timeout", "150",
                  "--out", str(job), "embed", "--shards", str(shards), "--out", str(emb), *TEACHER)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = embedded_keys(emb)
    assert sorted(got) == sorted(keys) and len(got) == len(set(got))  # every key exactly once
    parts = [json.loads((emb / f"summary.task-{i}-of-2.json").read_text()) for i in range(2)]
    assert [p["shards_written"] for p in parts] == [2, 2]
    ids = [r["job_id"] for r in jobs_db.load(job)]
    assert len(ids) == 2 and ids[0].endswith("_0") and ids[1].endswith("_1")  # one SLURM array
    assert "#SBATCH --array=0-1%2" in (job / "submitit" / f"{ids[0].split('_')[0]}_submission.sh").read_text()


def test_two_nodes_one_process_group_over_gloo(make_shards, tmp_path):
    shards, keys = make_shards([10, 10, 10, 10])
    emb = tmp_path / "emb"
    proc = zmdist("submit", "--cluster", "slurm", "--nodes", "2", "--tasks-per-node", "1", "--time", "5",
                  "--timeout", "150", "--out", str(tmp_path / "job"), "embed", "--shards", str(shards),
                  "--out", str(emb), *TEACHER)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((emb / "summary.json").read_text())
    assert summary["world_size"] == 2 and all(w["shards_written"] == 2 for w in summary["per_worker"])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("job ")]
    assert len(lines) == 2 and "(n1 rank 0/2)" in lines[0] and "(n2 rank 1/2)" in lines[1], proc.stdout
    logs = "".join(p.read_text() for p in (tmp_path / "job" / "submitit").glob("*_log.err"))
    assert "rank 1/2" in logs and "backend gloo" in logs
    assert sorted(embedded_keys(emb)) == sorted(keys)


def test_preempted_job_requeues_and_resumes(make_shards, tmp_path):
    shards, keys = make_shards([30] * 8)
    model_cfg = tmp_path / "zmdist-slow-vit.json"
    model_cfg.write_text(json.dumps(SLOW_VIT))
    emb, job = tmp_path / "emb", tmp_path / "job"
    submitter = subprocess.Popen(
        [sys.executable, "-m", "zmdist", "submit", "--cluster", "slurm", "--time", "10", "--timeout", "240",
         "--out", str(job), "embed", "--shards", str(shards), "--out", str(emb), "teacher.model=zmdist-slow-vit",
         "teacher.pretrained=random", f"teacher.model_config={model_cfg}", "num_workers=0", "progress=false", "batch_size=5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        deadline = time.monotonic() + 120
        while not list(emb.glob("*.npz")):  # wait until the job is mid-run: its first shard is written
            assert time.monotonic() < deadline and submitter.poll() is None, "the job never wrote a shard"
            time.sleep(0.05)
        job_id = jobs_db.load(job)[0]["job_id"]
        preempt_and_release(job_id)
        done_at_signal = len(list(emb.glob("*.npz")))
        stdout, stderr = submitter.communicate(timeout=240)
    finally:
        if submitter.poll() is None:
            submitter.kill()
    assert submitter.returncode == 0, stdout + stderr
    assert done_at_signal < 8, "the job finished before the signal: make SLOW_VIT slower"
    log = "".join(p.read_text() for p in (job / "submitit").glob(f"{job_id}_0_log.*"))
    assert "Caught signal SIGUSR2" in log and f"Requeued job {job_id}" in log
    summary = json.loads((emb / "summary.json").read_text())
    assert summary["complete"] and summary["shards_skipped_done"] >= 1
    assert summary["shards_skipped_done"] + summary["shards_written"] == 8
    got = embedded_keys(emb)
    assert sorted(got) == sorted(keys) and len(got) == len(set(got))  # every key exactly once
    assert "scontrol" not in stderr


def test_failing_task_reports_the_remote_traceback(tmp_path):
    start = time.monotonic()
    proc = zmdist("submit", "--cluster", "slurm", "--time", "5", "--timeout", "120", "--out", str(tmp_path / "job"),
                  "embed", "--shards", str(tmp_path / "no-such-shards"), "--out", str(tmp_path / "emb"), *TEACHER)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stderr and "Traceback (most recent call last)" in proc.stderr
    assert "FileNotFoundError: no manifest.json" in proc.stderr
    assert time.monotonic() - start < 120
    status = zmdist("submit", "--status", str(tmp_path / "job"))
    assert "FAILED" in status.stdout


def _train_args(digits, *extra: str) -> list[str]:
    shards, pl = digits
    return ["train", f"shards={shards}", f"pseudolabels={pl}", "student=cnn-tiny", "img_size=16", "batch_size=16",
            "hflip=false", "num_workers=0", "progress=false", "log_every=1", "warmup_steps=2", *extra]


def test_two_node_training_job(digits, tmp_path):
    out = tmp_path / "train"
    proc = zmdist("submit", "--cluster", "slurm", "--nodes", "2", "--tasks-per-node", "1", "--time", "10",
                  "--timeout", "300", "--out", str(tmp_path / "job"),
                  *_train_args(digits, "method.name=fixmatch", "steps=6", "eval_every=6"), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["phases"]["main"]["history"][-1]["step"] == 6
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("job ")]
    assert "(n1 rank 0/2)" in lines[0] and "(n2 rank 1/2)" in lines[1], proc.stdout


def test_preempted_training_job_checkpoints_requeues_and_finishes(digits, tmp_path):
    out, job = tmp_path / "train", tmp_path / "job"
    submitter = subprocess.Popen(
        [sys.executable, "-m", "zmdist", "submit", "--cluster", "slurm", "--time", "10", "--timeout", "300",
         "--out", str(job), *_train_args(digits, "method.name=adamatch", "steps=200", "eval_every=200",
                                         "checkpoint_every=0"), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        deadline = time.monotonic() + 180
        log = out / "log.jsonl"
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3):  # mid-run: a few steps done
            assert time.monotonic() < deadline and submitter.poll() is None, "the job never started training"
            time.sleep(0.1)
        job_id = jobs_db.load(job)[0]["job_id"]
        preempt_and_release(job_id)
        stdout, stderr = submitter.communicate(timeout=300)
    finally:
        if submitter.poll() is None:
            submitter.kill()
    assert submitter.returncode == 0, stdout + stderr
    logs = "".join(p.read_text() for p in (job / "submitit").glob(f"{job_id}_0_log.*"))
    assert "received SIGUSR2: checkpointing" in logs and "resumed from" in logs, logs[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phases"]["main"]["resumed"] and summary["phases"]["main"]["history"][-1]["step"] == 200
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if "eval" not in line]
    assert steps[-1] == 200 and sorted(set(steps)) == list(range(1, 201))  # no step lost across the requeue
