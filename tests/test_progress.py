"""Logs that suit batch jobs: progress lines (not bars) in files, and Weights & Biases beside TensorBoard."""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from engine_fakes import make_engine
from zmdist.config import ConfigError, load_config
from zmdist.progress import INTERVAL_ENV, Progress, default_interval
from zmdist.stages import train
from zmdist.train.contract import Phase
from zmdist.train.run_log import WANDB_ID_FILE, RunLog, WandbRun, require_wandb


class FakeClock:
    """``time.monotonic`` stand-in that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_a_line_per_interval_with_rate_and_eta_and_a_final_line(tmp_path):
    """Catches: a bar's carriage-return redraws in an sbatch log, lines more often than the interval, or a
    wrong rate/ETA."""
    clock, log = FakeClock(), tmp_path / "slurm-1.out"
    with open(log, "w") as fh:
        bar = Progress(100, "embed", "img", interval=10, stream=fh, clock=clock)
        for now, n in [(5, 10), (10, 10), (15, 10), (20, 20)]:
            clock.now = now
            bar.update(n)
        bar.close()
    text = log.read_text()
    assert "\r" not in text
    assert text.splitlines() == [
        "embed: 20/100 img (20%) 2.0 img/s, ETA 0:00:40",
        "embed: 50/100 img (50%) 2.5 img/s, ETA 0:00:20",
        "embed: stopped at 50/100 img (50%) in 0:00:20, 2.5 img/s mean",
    ]


def test_a_resumed_count_is_done_but_not_speed():
    """Catches: work done before a resume inflating the rate (and shrinking the ETA)."""
    clock, out = FakeClock(), io.StringIO()
    with Progress(100, "train", "step", initial=40, interval=0, stream=out, clock=clock) as bar:
        clock.now = 10
        bar.update(20)
        bar.set_postfix(loss="0.412")
        clock.now = 30
        bar.update(40)
    assert out.getvalue().splitlines() == [
        "train: 60/100 step (60%) 2.0 step/s, ETA 0:00:20",
        "train: 100/100 step (100%) 2.0 step/s, ETA 0:00:00, loss=0.412",
        "train: done 100/100 step (100%) in 0:00:30, 2.0 step/s mean, loss=0.412",
    ]


def test_a_rerun_with_nothing_left_says_so_without_a_rate():
    out = io.StringIO()
    Progress(3, "pseudolabel", "shard", initial=3, stream=out).close()
    assert out.getvalue() == "pseudolabel: done 3/3 shard (100%) in 0:00:00, no new shard\n"


def test_stderr_is_the_default_and_the_interval_comes_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with Progress(3, "pseudolabel", "shard") as bar:
        for _ in bar.iterate(range(3)):
            pass
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" shard")[0] for line in lines] == ["pseudolabel: 1/3", "pseudolabel: 2/3", "pseudolabel: 3/3",
                                                            "pseudolabel: done 3/3"]
    assert "ETA" in lines[0] and "mean" in lines[-1]


def test_the_interval_defaults_to_30_seconds_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert default_interval() == 30
    monkeypatch.setenv(INTERVAL_ENV, "often")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        default_interval()


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_disabled_prints_nothing(stream):
    out = stream()
    with Progress(10, "shard train", "img", enabled=False, interval=0, stream=out) as bar:
        bar.update(10)
    assert out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    out = Terminal()
    with Progress(10, "embed", "img", interval=0, stream=out) as bar:
        bar.update(10)
    assert "\r" in out.getvalue() and "10/10" in out.getvalue() and "ETA" not in out.getvalue()


def test_training_prints_progress_lines_in_a_file(tmp_path, capsys, monkeypatch):
    """Catches: the engine still drawing a tqdm bar into a log file."""
    monkeypatch.setenv(INTERVAL_ENV, "0")
    engine, _, _ = make_engine(tmp_path, steps=4, scores=[0.5])
    engine.cfg.progress = True
    engine.fit(resume=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train")]
    assert lines[0].startswith("train: 1/4 step (25%)") and "ETA" in lines[0]
    assert lines[-1].startswith("train: done 4/4 step (100%)") and "loss=" in lines[-1]


# ---- Weights & Biases -------------------------------------------------------------------------------

@pytest.fixture
def wandb_offline(tmp_path, monkeypatch) -> Any:
    """wandb in offline mode with every file it writes under ``tmp_path``: no network, no login."""
    wandb = pytest.importorskip("wandb")
    for name, value in [("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_DIR", tmp_path / "wandb-dir"),
                        ("WANDB_CONFIG_DIR", tmp_path / "wandb-config"), ("WANDB_CACHE_DIR", tmp_path / "wandb-cache"),
                        ("WANDB_DATA_DIR", tmp_path / "wandb-data")]:
        monkeypatch.setenv(name, str(value))
    return wandb


def _records(path: Path) -> Iterator[bytes]:
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then LevelDB log blocks of 32 KiB
    (each chunk: crc32, length, type; FULL=1 and LAST=4 end a record)."""
    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while True:
        if block - pos % block < 7:
            pos += block - pos % block
        if pos + 7 > len(data):
            return
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield parts
            parts = b""


def _history(run_dir: Path) -> list[dict[str, Any]]:
    """Every ``wandb.log`` row of an offline run, read back from its ``run-ID.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for raw in _records(next(run_dir.glob("run-*.wandb"))):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def _offline_runs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


def _run_id(run_dir: Path) -> str:
    return next(run_dir.glob("run-*.wandb")).stem.removeprefix("run-")


def test_run_log_sends_train_and_eval_records_to_wandb(tmp_path, wandb_offline):
    """Catches: W&B missing records TensorBoard gets, keys without their train/eval group, or wrong steps."""
    out = tmp_path / "run"
    out.mkdir()
    run_log = RunLog(out, True, WandbRun(project="zmdist-test", name="run", group="run", job_type="train",
                                         mode="offline", config={"lr": 0.1, "method": {"name": "fixmatch"}}))
    run_log.train(1, {"loss": 2.0, "lr": 0.1})
    run_log.train(2, {"loss": 1.5, "lr": 0.1})
    run_log.eval(2, {"top1": 0.5})
    run_log.close()
    (run_dir,) = _offline_runs(out)
    rows = [{k: v for k, v in row.items() if not k.startswith("_") or k == "_step"} for row in _history(run_dir)]
    assert rows == [{"_step": 1, "train/loss": 2.0, "train/lr": 0.1},
                    {"_step": 2, "train/loss": 1.5, "train/lr": 0.1, "eval/top1": 0.5}]
    assert _run_id(run_dir) == (out / WANDB_ID_FILE).read_text().strip()
    assert len((out / "log.jsonl").read_text().splitlines()) == 3  # log.jsonl and TensorBoard as before
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_a_resumed_engine_continues_the_same_wandb_run(tmp_path, wandb_offline):
    """Catches: a requeued job starting a second W&B run instead of continuing the first."""
    run = WandbRun(project="zmdist-test", name="run", group="run", job_type="train")  # mode from WANDB_MODE
    for steps in (4, 8):
        engine, _, _ = make_engine(tmp_path, steps=steps, scores=[0.5], checkpoint_every=4)
        engine.cfg.wandb = run
        engine.fit(resume=True)
    first, second = _offline_runs(tmp_path)
    assert _run_id(first) == _run_id(second) == (tmp_path / WANDB_ID_FILE).read_text().strip()
    assert [row["_step"] for row in _history(first)] == [1, 2, 3, 4]
    assert [row["_step"] for row in _history(second)] == [5, 6, 7, 8]


def test_train_config_names_wandb_runs_after_the_run_folder(tmp_path):
    cfg = load_config(train.Config, None, ["shards=s", "log.wandb=true", "log.wandb_mode=offline",
                                           "log.wandb_project=digits"])
    run = train._wandb_run(cfg, tmp_path / "zeromatch-seed0", Phase("stage0", algorithm=None, steps=4))
    assert (run.project, run.name, run.group, run.job_type, run.mode) == (
        "digits", "zeromatch-seed0/stage0", "zeromatch-seed0", "stage0", "offline")
    assert run.config["log"]["wandb"] is True and run.config["method"]["name"] == "zeromatch"
    assert train._wandb_run(load_config(train.Config, None, ["shards=s"]), tmp_path, Phase("", None, 4)) is None
    with pytest.raises(ConfigError, match="log.wandb_mode"):
        load_config(train.Config, None, ["shards=s", "log.wandb_mode=ofline"])


def test_wandb_not_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"log.wandb=true needs `pip install wandb`"):
        require_wandb()
