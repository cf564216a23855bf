"""ZeroMatch's stage-0 selection: ``holdout`` (zmdist's default) vs ``train_sample`` (the released code's:
agreement with the pseudolabels on a seeded sample of the very images stage 0 trains on, with its early stop),
and stage 0's own warm-up and evaluation cadence."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine_fakes import make_engine
from test_train import _cfg, digits, oracle  # noqa: F401 (fixtures)
from zmdist.algorithms import METHODS, PlanContext
from zmdist.config import ConfigError
from zmdist.data.manifest import Manifest
from zmdist.stages import train
from zmdist.train.data import split_train_sample, train_sample_size
from zmdist.train.schedule import warmup_cosine

LR = 3e-3


def test_train_sample_size_is_the_released_rule():
    """Catches: a sample size other than the released code's (all up to 9,000 images, int(20%) above,
    int(10%) above 90,000), e.g. an off-by-one at the boundaries."""
    assert [train_sample_size(n) for n in (1, 1346, 9000)] == [1, 1346, 9000]
    assert [train_sample_size(n) for n in (9001, 50000, 90000)] == [1800, 10000, 18000]
    assert [train_sample_size(n) for n in (90001, 1_281_167)] == [9000, 128116]


def test_split_train_sample_draws_distinct_positions_once_per_seed():
    """Catches: a sample that repeats a position, reaches past a shard, has the wrong size or changes between
    calls with the same seed (the selection must look at the same images at every evaluation)."""
    counts = [6000, 4000, 1001]
    sample = split_train_sample(counts, seed=3)
    assert sum(len(s) for s in sample) == 2200 == train_sample_size(11001)
    for positions, count in zip(sample, counts):
        assert len(set(positions.tolist())) == len(positions) and (0 <= positions).all() and (positions < count).all()
        assert len(positions) > 0.1 * count  # uniform over the split, not one shard's
    assert all(np.array_equal(a, b) for a, b in zip(sample, split_train_sample(counts, seed=3)))
    assert any(not np.array_equal(a, b) for a, b in zip(sample, split_train_sample(counts, seed=4)))
    assert [s.tolist() for s in split_train_sample([3, 2], seed=0)] == [[0, 1, 2], [0, 1]]  # n <= 9000: all


def test_zeromatch_plans_stage0_by_its_selection_option():
    """Catches: the default drifting from the hold-out, ``train_sample`` not reaching the phase, the released
    strict check (> early_stop) lost, or stage 0's warm-up / cadence not reaching it (stage 1 keeps the run's)."""
    ctx = PlanContext(num_classes=3, steps=7)
    default = METHODS.get("zeromatch")()
    assert default.stage0_selection == "holdout"
    stage0, stage1 = default.phases(ctx)
    assert (stage0.selection, stage0.early_stop_strict, stage0.warmup_steps, stage0.eval_every) == (
        "holdout_agreement", False, None, None)
    stage0, stage1 = METHODS.get("zeromatch")(stage0_selection="train_sample", stage0_warmup_steps=5120,
                                              stage0_eval_every=2048, stage0_steps=204800).phases(ctx)
    assert (stage0.selection, stage0.early_stop, stage0.early_stop_strict) == ("train_sample_agreement", 0.9999, True)
    assert (stage0.steps, stage0.warmup_steps, stage0.eval_every) == (204800, 5120, 2048)
    assert (stage1.warmup_steps, stage1.eval_every) == (None, None)


def test_a_bad_stage0_selection_is_a_config_error(digits):
    """Catches: a misspelt selection silently falling back to the hold-out."""
    with pytest.raises(ConfigError, match="stage0_selection"):
        _cfg(digits, "method.name=zeromatch", "method.stage0_selection=train")


def test_strict_early_stop_waits_for_agreement_above_the_threshold(tmp_path):
    """Catches: the released check (stop once the best EXCEEDS early_stop) flipped to >=: a sample of
    10,000 images at 9,999 agreeing would stop where the released code trains on."""
    engine, algorithm, _ = make_engine(tmp_path, steps=20, scores=[0.5, 0.99, 0.995], early_stop=0.99)
    engine.cfg = dataclasses.replace(engine.cfg, early_stop_strict=True)
    result = engine.fit(resume=False)
    assert result["steps_run"] == 6 and algorithm.calls == 6  # not at step 4, where it equals 0.99
    assert (result["best"], result["best_step"]) == (0.995, 6)


def test_train_sample_trains_on_all_images_selects_on_them_and_stops_early(digits, oracle, tmp_path, monkeypatch,
                                                                           one_torch_thread):
    """Catches: ``train_sample`` holding its images out of training, evaluating elsewhere than the training
    split (or on test images), reading labels to select, its early stop not firing on a run that reaches it,
    weights kept from another step than the best, or stage 0's own warm-up / cadence not reaching the engine."""
    calls: list[dict] = []
    real = train.stream_loader

    def recording(shards, split, rank, world, batch, workers, sample, *, mode, seed, positions=None, **kw):
        calls.append({"split": split, "mode": mode, "positions": positions})
        return real(shards, split, rank, world, batch, workers, sample, mode=mode, seed=seed, positions=positions, **kw)

    monkeypatch.setattr(train, "stream_loader", recording)
    steps0, every0, warmup0 = 200, 20, 10
    out = tmp_path / "zm"
    res = train.run(_cfg(digits, "method.name=zeromatch", f"method.stage0_steps={steps0}",
                         "method.stage0_selection=train_sample", "method.early_stop=0.5",
                         f"method.stage0_eval_every={every0}", f"method.stage0_warmup_steps={warmup0}",
                         "steps=2", f"lr={LR}", pl=oracle), out)

    evaluation, stream = calls[:2]  # stage 0: its evaluator, then its training stream
    assert (evaluation["split"], evaluation["mode"], stream["split"], stream["mode"]) == (
        "train", "eval", "train", "train")
    counts = Manifest.load(digits[0]).counts("train")
    assert stream["positions"] is None  # trains on every training image, the sample included
    assert [p.tolist() for p in evaluation["positions"]] == [list(range(c)) for c in counts]  # n <= 9000: all
    stage0 = res["phases"]["stage0"]
    assert f"sample of {sum(counts)} of the {sum(counts)} images of split 'train'" in stage0["selected_on"]
    assert all("top1" not in h for h in stage0["history"])  # no label read to select

    # early stop: the first evaluation above 0.5 ends stage 0 well before its 200 steps, and it is the best
    history = stage0["history"]
    agreements = [h["pseudolabel_agreement"] for h in history]
    assert [h["step"] for h in history] == [every0 * (i + 1) for i in range(len(history))]  # stage 0's cadence
    assert agreements[-1] > 0.5 and all(a <= 0.5 for a in agreements[:-1])
    assert stage0["steps_run"] == history[-1]["step"] < steps0
    assert (stage0["best"], stage0["best_step"]) == (max(agreements), stage0["steps_run"])
    best, final = (load_file(str(out / "stage0" / f"{name}.safetensors")) for name in ("best", "final"))
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)
    assert stage0["final"]["pseudolabel_agreement"] == stage0["best"]  # those weights, re-evaluated on the sample

    # stage 0's warm-up (10 steps) reached its schedule, not the run's (warmup_steps=2); stage 1 keeps the run's
    log0 = [json.loads(x) for x in (out / "stage0" / "log.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in log0 if "lr" in r}
    schedule = warmup_cosine(warmup0, steps0)
    assert lrs[2] == pytest.approx(LR * schedule(2)) and lrs[2] < 0.5 * LR
    assert [r["step"] for r in log0 if r.get("eval")] == [h["step"] for h in history]
    stage1 = res["phases"]["stage1"]
    assert [h["step"] for h in stage1["history"]] == [2]
