"""zmdist bench for real: the offline mini-benchmark killed midway and rerun, a failing cell that does not
stop the others, and the report of a finished sweep (real stages in child processes, real shards)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from test_launch import ROOT, clean_env

OFFLINE = ROOT / "configs" / "bench" / "offline.yaml"
# a random-weight micro teacher: the pipeline's mechanics in seconds (numbers are near chance)
SMALL = {
    "name": "small",
    "teachers": {"micro": {"model": "zmdist-micro-vit", "pretrained": "random"}},
    "datasets": {"digits": {"source": "sklearn-digits", "shard": {"test_fraction": 0.25, "shard_size": 500}}},
    "methods": {"zero-shot": {"stage": "zero-shot"},
                "supervised": {"stage": "train", "options": {"method.name": "supervised"}}},
    "budgets": [2],
    "seeds": [0],
    "embed": {"num_workers": 0},
    "defaults": {"train": {"student": "cnn-tiny", "img_size": 8, "steps": 3, "eval_every": 3, "num_workers": 0,
                           "checkpoint_every": 0}},
}


def bench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmdist", "bench", *args], capture_output=True, text=True,
                          env=clean_env(), timeout=timeout, cwd=ROOT)


def headers(log: Path) -> int:
    """Attempts recorded in a step's log (one header line each)."""
    return sum(line.startswith("===== ") for line in log.read_text().splitlines())


def cell_logs(out: Path) -> dict[str, Path]:
    return {p.name: p for p in (out / "logs").glob("cell__*.log")}


def done_cells(out: Path) -> set[str]:
    done = set()
    for path in (out / "status").glob("cell__*.json"):
        try:
            if json.loads(path.read_text())["state"] == "done":
                done.add(path.stem)
        except (json.JSONDecodeError, KeyError):  # being written
            pass
    return done


def test_offline_benchmark_killed_midway_reruns_only_missing_cells_and_reports(tmp_path):
    out = tmp_path / "bench"
    env = clean_env()
    proc = subprocess.Popen([sys.executable, "-m", "zmdist", "bench", str(OFFLINE), "--out", str(out),
                             "progress=false"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while len(done_cells(out)) < 3:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no 3 cells finished in 10 minutes"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the cell running now
        proc.wait()
    before = done_cells(out)
    mtimes = {name: (out / "status" / f"{name}.json").stat().st_mtime for name in before}

    rerun = bench(str(OFFLINE), "--out", str(out), "progress=false")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    logs = cell_logs(out)
    for name in before:  # finished before the kill: not run again
        assert headers(logs[f"{name}.log"]) == 1, name
        assert (out / "status" / f"{name}.json").stat().st_mtime == mtimes[name]
    interrupted = [n for n, p in logs.items() if headers(p) == 2]
    assert len(interrupted) <= 1  # at most the cell the kill landed in was started twice
    report = json.loads((out / "report.json").read_text())
    assert report["states"] == {"done": 18, "failed": 0, "blocked": 0, "pending": 0}
    entries = {(e["method"], e["budget"]): e for e in report["entries"]}
    assert set(entries) == {("zero-shot", None), ("grip-ul", None), ("dropquery", None),
                            *((m, b) for m in ("supervised", "fixmatch", "zeromatch") for b in (2, 4))}
    assert all(e["seeds_done"] == 2 and 0.0 <= e["mean"] <= 1.0 for e in entries.values())
    assert entries[("zero-shot", None)]["mean"] > 0.3  # the recipe teacher learnt digits (chance: 0.1)
    assert all(len(e["curves"]) == 2 and len(e["curves"][0]) == 4 for e in report["entries"] if e["method"] == "dropquery")
    text = (out / "report.md").read_text()
    assert "| teacher zero-shot |" in text and "digits 4/class" in text and "| DropQuery (centroid init) |" in text
    for plot in ("accuracy_vs_labels.png", "learning_curves.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())["states"]["done"] == 18

    again = bench("report", str(out))  # the report alone, from the folder
    assert again.returncode == 0 and "| teacher zero-shot |" in again.stdout


def test_a_failing_cell_is_reported_with_its_log_and_does_not_stop_the_others(tmp_path):
    sweep = json.loads(json.dumps(SMALL))
    sweep["methods"]["broken"] = {"stage": "train", "options": {"method.name": "supervised",
                                                                "student": "no-such-student"}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "bench"
    first = bench(str(path), "--out", str(out), "progress=false")
    assert first.returncode == 1
    assert "cell/broken/digits/micro/b2/s0 FAILED (exit status 1)" in first.stdout
    assert "1 step(s) did not finish (cell/broken/digits/micro/b2/s0)" in first.stderr
    logs = cell_logs(out)
    assert "no-such-student" in logs["cell__broken__digits__micro__b2__s0.log"].read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["states"] == {"done": 2, "failed": 1, "blocked": 0, "pending": 0}
    assert "- cell/broken/digits/micro/b2/s0: failed (exit status 1); log: " in (out / "report.md").read_text()

    second = bench(str(path), "--out", str(out), "progress=false")  # retries only the failed cell
    assert second.returncode == 1
    assert headers(logs["cell__supervised__digits__micro__b2__s0.log"]) == 1
    assert headers(logs["cell__broken__digits__micro__b2__s0.log"]) == 2
    assert headers(out / "logs" / "embed__digits__micro.log") == 1


def test_a_failed_shared_step_blocks_its_cells(tmp_path):
    sweep = json.loads(json.dumps(SMALL))
    sweep["datasets"]["digits"] = {"source": "csv:/nonexistent/images.csv"}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "bench"
    result = bench(str(path), "--out", str(out), "progress=false")
    assert result.returncode == 1
    states = json.loads((out / "report.json").read_text())["states"]
    assert states == {"done": 0, "failed": 0, "blocked": 2, "pending": 0}
    status = json.loads((out / "status" / "cell__supervised__digits__micro__b2__s0.json").read_text())
    assert status["state"] == "blocked" and "shard/digits" in status["reason"]
    assert "does not exist" in (out / "logs" / "shard__digits.log").read_text()


def test_dry_run_prints_the_plan_and_gpu_hours_without_running(tmp_path):
    out = tmp_path / "bench"
    result = bench("plan", str(OFFLINE), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "labels per class [2, 4] x seeds [0, 1] = 18 cells (2 al-sim, 2 prompt-tune, 12 train, 2 zero-shot)" in result.stdout
    assert "embed/digits/tiny" in result.stdout and "GPU-h 4.72e-09" in result.stdout
    assert "embed/digits/tiny" in result.stdout and "estimated GPU-hours" in result.stdout
    assert not (out / "plan.json").exists() and not (out / "logs").exists()
