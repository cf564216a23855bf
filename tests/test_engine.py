"""The engine alone, with a fake backend, algorithm and evaluator: checkpoints, pruning, best weights,
early stop, signals and resume after a real SIGKILL. No method, no shard, no distributed backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine_fakes import FakeBackend, make_engine
from zmdist.train.contract import Interrupted
from zmdist.train.engine import EngineHooks

HERE = Path(__file__).parent


def _steps(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step-*"))


def test_checkpoint_files_and_pruning(tmp_path):
    """Catches: a checkpoint folder missing a file the resume needs, `latest` not pointing at the newest
    folder, or pruning that keeps too many / deletes the newest."""
    engine, algorithm, _ = make_engine(tmp_path, steps=8, scores=[0.1], checkpoint_every=2, keep=2)
    result = engine.fit(resume=False)
    assert result["steps_run"] == 8
    assert _steps(tmp_path) == ["step-0000006", "step-0000008"]  # keep=2: 2 and 4 pruned
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000008"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-0000006", "step-0000008"]
    files = {p.name for p in (tmp_path / "checkpoints" / "step-0000008").iterdir()}
    assert files == {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}
    state = json.loads((tmp_path / "checkpoints" / "step-0000008" / "state.json").read_text())
    assert state["step"] == 8 and state["algorithm"] == {"calls": 8} and state["finished"] is False
    assert state["epoch"] == 3 and state["batch_in_epoch"] == 2  # 2 batches per epoch of 8 samples / 4


def test_best_weights_follow_the_select_metric(tmp_path):
    """Catches: best.safetensors written at a worse evaluation (e.g. `<` flipped) or never updated."""
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(phase: str, step: int) -> None:
        seen[step] = {k: v.clone() for k, v in engine.backend.model.state_dict().items()}

    engine, _, _ = make_engine(tmp_path, steps=8, scores=[0.2, 0.9, 0.5, 0.7],
                               hooks=EngineHooks(on_step_end=snapshot))
    result = engine.fit(resume=False)
    assert result["best"] == 0.9 and result["best_step"] == 4
    best = load_file(str(tmp_path / "best.safetensors"))
    for k, v in best.items():
        assert torch.equal(v, seen[4][k])
    final = load_file(str(tmp_path / "final.safetensors"))
    assert any(not torch.equal(final[k], best[k]) for k in best)  # final is the last step's, not the best
    evals = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["step"] for e in evals] == [2, 4, 6, 8]


def test_early_stop_and_a_finished_run_is_not_retrained(tmp_path):
    """Catches: early stop ignored (all steps run), or a rerun of a finished run training again / rewriting
    its checkpoint (a requeued job must find it done)."""
    engine, algorithm, _ = make_engine(tmp_path, steps=20, scores=[0.5, 0.99], early_stop=0.99)
    result = engine.fit(resume=False)
    assert result["steps_run"] == 4 and algorithm.calls == 4
    before = (tmp_path / "checkpoints" / "step-0000004" / "state.json").stat().st_mtime_ns
    again, algorithm2, _ = make_engine(tmp_path, steps=20, scores=[0.5])
    again.fit(resume=True)
    assert algorithm2.calls == 4  # restored from the checkpoint, not one step more
    assert (tmp_path / "checkpoints" / "step-0000004" / "state.json").stat().st_mtime_ns == before


def test_signal_checkpoints_then_raises_and_restores_handlers(tmp_path):
    """Catches: a SIGTERM that kills the run without a checkpoint, a checkpoint at the wrong step, or the
    engine's handler left installed after fit (it would swallow the next SIGTERM)."""
    before = signal.getsignal(signal.SIGTERM)

    def term(phase: str, step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    engine, _, _ = make_engine(tmp_path, steps=8, scores=[0.5], checkpoint_every=0,
                               hooks=EngineHooks(on_step_end=term))
    with pytest.raises(Interrupted, match="at step 3"):
        engine.fit(resume=False)
    assert _steps(tmp_path) == ["step-0000003"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_after_sigkill_from_a_periodic_checkpoint_matches_uninterrupted(tmp_path):
    """Catches: resume skipping the restore of weights, optimizer, scheduler, data position or algorithm
    state (each changes the final weights or the call count)."""
    whole, algorithm, _ = make_engine(tmp_path / "whole", steps=9, scores=[0.5])
    whole.fit(resume=False)
    run = [sys.executable, str(HERE / "engine_fakes.py"), str(tmp_path / "cut"), "9", "5"]
    killed = subprocess.run(run, cwd=HERE, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    resumed, algorithm2, items = make_engine(tmp_path / "cut", steps=9, scores=[0.5])
    resumed.fit(resume=True)
    assert algorithm2.calls == algorithm.calls == 9
    assert items.epochs[:2] == [1, 2]  # the saved position: end of epoch 1 (its 2 batches skipped), then epoch 2
    a, b = load_file(str(tmp_path / "whole" / "final.safetensors")), load_file(str(tmp_path / "cut" / "final.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _DiesWhileSaving(FakeBackend):
    """Writes part of a checkpoint, then dies (as a kill in the middle of `save` would)."""

    def save(self, folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed while writing the checkpoint")


def test_rewriting_a_checkpoint_never_leaves_a_half_one_under_latest(tmp_path):
    """Catches: a checkpoint written in place, so that a kill while a requeued run rewrites step-N leaves
    a truncated file under `latest` and every later resume fails."""
    engine, _, _ = make_engine(tmp_path, steps=4, scores=[0.5], checkpoint_every=2)
    engine.fit(resume=False)
    again, _, _ = make_engine(tmp_path, steps=4, scores=[0.5])
    again.backend = _DiesWhileSaving()
    again.backend.setup(again._model, again._optimizer(again._model), lambda step: 1.0)
    again.pos.step = 4
    with pytest.raises(KeyboardInterrupt):
        again.save_checkpoint()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    load_file(str(tmp_path / "checkpoints" / "step-0000004" / "model.safetensors"))  # still whole
    resumed, algorithm, _ = make_engine(tmp_path, steps=4, scores=[0.5])
    assert resumed.fit(resume=True)["resumed"] and algorithm.calls == 4
    assert not list((tmp_path / "checkpoints").glob(".partial-*"))  # the leftover is cleared at the next start


def test_resume_falls_back_to_an_older_checkpoint_when_the_newest_is_unreadable(tmp_path, caplog):
    """Catches: resume failing for good (or silently restarting from step 0) when the newest checkpoint is
    damaged although an older complete one exists."""
    engine, _, _ = make_engine(tmp_path, steps=6, scores=[0.5], checkpoint_every=2, keep=3)
    with pytest.raises(Interrupted):
        def term(phase: str, step: int) -> None:
            if step == 6:
                os.kill(os.getpid(), signal.SIGTERM)
        engine.hooks = EngineHooks(on_step_end=term)
        engine.fit(resume=False)
    (tmp_path / "checkpoints" / "step-0000006" / "model.safetensors").write_bytes(b"truncated")
    resumed, algorithm, _ = make_engine(tmp_path, steps=6, scores=[0.5], checkpoint_every=2, keep=3)
    with caplog.at_level("WARNING", logger="zmdist"):
        result = resumed.fit(resume=True)
    assert "step-0000006 is unreadable" in caplog.text
    assert result["resumed"] and algorithm.calls == 6  # restored the 4 calls of step 4, then ran 5 and 6
