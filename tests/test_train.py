"""Student training end to end on real digit shards: methods, protocol, resume, 2-process DDP and ZeRO-3."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_stages import _env
from zmdist.config import ConfigError, load_config
from zmdist.data.manifest import Manifest
from zmdist.demo.digits_pipeline import prepare_digits
from zmdist.formats import PseudolabelShard
from zmdist.models import DualHead, create_student
from zmdist.stages import train
from zmdist.train.contract import Interrupted
from zmdist.train.engine import EngineHooks
from zmdist.train.metrics import classification_metrics, confusion_matrix

FAST = ["student=cnn-tiny", "img_size=16", "batch_size=16", "hflip=false", "num_workers=0", "progress=false",
        "log_every=2", "eval_every=4", "warmup_steps=2"]
ZM = ["method.name=zeromatch", "method.stage0_steps=4"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    prepare_digits(root, teacher_model="zmdist-micro-vit", pretrained="random", num_workers=0)
    return root / "shards", root / "pseudolabels"


@pytest.fixture(scope="module")
def oracle(digits, tmp_path_factory) -> Path:
    """Sidecars of an informative teacher: the pseudolabel is the true label (confidence 0.9), so a test
    can require a student to learn something from pseudolabels alone."""
    out = tmp_path_factory.mktemp("oracle")
    for path in sorted(digits[1].glob("*.npz")):
        side = PseudolabelShard.load(path)
        n, c = len(side.keys), side.probs.shape[1]
        probs = np.full((n, c), 0.1 / (c - 1), np.float32)
        probs[np.arange(n), side.labels] = 0.9
        PseudolabelShard(side.keys, side.labels, side.labels.copy(), np.full(n, 0.9, np.float32),
                         side.margin, side.entropy, side.labels[:, None].copy(), np.full((n, 1), 0.9, np.float32),
                         probs.astype(np.float16)).save(out / path.name)
    return out


def _test_size(digits) -> int:
    return Manifest.load(digits[0]).split("test").total


def _cfg(digits, *extra: str, pl: Path | None = None) -> train.Config:
    shards, default_pl = digits
    return load_config(train.Config, None, [f"shards={shards}", f"pseudolabels={pl or default_pl}", *FAST, *extra])


@pytest.mark.parametrize("method", ["supervised", "distill", "zeromatch"])
def test_methods_train_and_record_results(digits, tmp_path, method):
    out = tmp_path / method
    extra = ZM if method == "zeromatch" else [f"method.name={method}"]
    res = train.run(_cfg(digits, *extra, "steps=8"), out)
    assert res["world_size"] == 1 and 0.0 <= res["accuracy"] <= 1.0
    assert len(res["per_class_accuracy"]) == 10
    assert sum(map(sum, res["confusion_matrix"])) == _test_size(digits)  # the whole test split, exactly once
    assert "final model" in res["best_checkpoint"]["note"]
    final = out / ("stage1" if method == "zeromatch" else "") / "final.safetensors"
    weights = load_file(str(final))
    if method == "zeromatch":
        assert any(k.startswith("aux.") for k in weights) and set(res["phases"]) == {"stage0", "stage1"}
    logs = [json.loads(line) for line in (final.parent / "log.jsonl").read_text().splitlines()]
    assert any("samples_per_s" in r and r["samples_per_s"] > 0 for r in logs)
    assert any(r.get("eval") for r in logs)
    assert list((final.parent / "tensorboard").glob("events.out.tfevents.*"))  # the same metrics in TensorBoard
    if method != "distill":
        keys = (final.parent / "labelled_keys.txt").read_text().split()
        assert len(keys) == 40 == len(set(keys))  # 4 labels per class
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and "git_commit" in summary


def test_stage0_selects_on_a_training_holdout_never_on_test_images(digits, tmp_path, monkeypatch):
    """Catches: ZeroMatch's stage-0 model selection reading the test split's images (or training on the
    images it selects on)."""
    calls: list[dict] = []
    real = train.stream_loader

    def recording(shards, split, rank, world, batch, workers, sample, *, mode, seed, positions=None, **kw):
        calls.append({"split": split, "mode": mode, "positions": positions})
        return real(shards, split, rank, world, batch, workers, sample, mode=mode, seed=seed, positions=positions, **kw)

    monkeypatch.setattr(train, "stream_loader", recording)
    res = train.run(_cfg(digits, *ZM, "steps=4", "holdout_fraction=0.1"), tmp_path / "zm")
    stage0_calls = calls[:2]
    assert [c["split"] for c in stage0_calls] == ["train", "train"]
    evaluation, stream = stage0_calls
    assert (evaluation["mode"], stream["mode"]) == ("eval", "train")
    total = Manifest.load(digits[0]).split("train").total
    for held, kept in zip(evaluation["positions"], stream["positions"]):
        assert not set(held.tolist()) & set(kept.tolist())  # never trained on what selects
    n_held = sum(len(h) for h in evaluation["positions"])
    assert n_held == round(0.1 * total) and n_held + sum(len(k) for k in stream["positions"]) == total
    stage0 = res["phases"]["stage0"]
    assert f"hold-out of {n_held} of the {total} images of split 'train'" in stage0["selected_on"]
    assert all("top1" not in h for h in stage0["history"])  # no label read to select stage 0
    assert "test" in [c["split"] for c in calls[2:]]  # stage 1 evaluates on the test split


def test_distillation_from_an_informative_teacher_beats_chance(digits, oracle, tmp_path):
    """Catches: pseudolabels not reaching the student (wrong join, wrong field, shuffled targets): with a
    teacher that is always right, distillation alone must learn the digits (chance is 0.10)."""
    res = train.run(_cfg(digits, "method.name=distill", "steps=80", "eval_every=80", "lr=3e-3", pl=oracle),
                    tmp_path / "d")
    assert res["accuracy"] > 0.5, res["accuracy"]


def test_sigterm_checkpoint_and_resume_reproduce_the_uninterrupted_run(digits, tmp_path):
    """Catches: a resume that skips restoring weights, optimizer, data position or AdaMatch's statistics:
    the final weights and the final AdaMatch marginals must equal the uninterrupted run's bit for bit."""
    args = [*ZM, "steps=10", "checkpoint_every=0"]
    train.run(_cfg(digits, *args), tmp_path / "whole")

    def term(phase: str, step: int) -> None:
        if phase == "stage1" and step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="at step 6"):
        train.run(_cfg(digits, *args), tmp_path / "cut", EngineHooks(on_step_end=term))
    state = json.loads((tmp_path / "cut/stage1/checkpoints/step-0000006/state.json").read_text())
    assert state["step"] == 6 and state["algorithm"]["p_model"]  # AdaMatch statistics are checkpointed
    resumed = train.run(_cfg(digits, *args), tmp_path / "cut")
    assert resumed["phases"]["stage1"]["resumed"] and resumed["phases"]["stage0"]["resumed"]
    a = load_file(str(tmp_path / "whole/stage1/final.safetensors"))
    b = load_file(str(tmp_path / "cut/stage1/final.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # same weights, bit for bit, on CPU with fixed seeds
    last_a = json.loads((tmp_path / "whole/stage1/checkpoints/step-0000010/state.json").read_text())
    last_b = json.loads((tmp_path / "cut/stage1/checkpoints/step-0000010/state.json").read_text())
    assert last_a["algorithm"] == last_b["algorithm"]  # AdaMatch marginals restored, not restarted
    sa = json.loads((tmp_path / "whole/summary.json").read_text())
    sb = json.loads((tmp_path / "cut/summary.json").read_text())
    assert sa["accuracy"] == sb["accuracy"]


@pytest.mark.parametrize("backend", ["accelerate", "deepspeed"])
def test_two_processes(digits, tmp_path, backend):
    """Catches: per-rank batches that are not batch_size / W, evaluation that is not exact-once across
    ranks, and (ZeRO-3) exported weights taken from a rank's partition instead of gathered."""
    out = tmp_path / backend
    shards, pl = digits
    stage = ["backend.zero_stage=3"] if backend == "deepspeed" else []
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "zmdist",
               "train", "--out", str(out), f"shards={shards}", f"pseudolabels={pl}", *FAST, "method.name=fixmatch",
               "steps=6", f"backend.name={backend}", *stage, "checkpoint_every=3"]
    env = {**_env(), "TORCH_SHOW_CPP_STACKTRACES": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0 and _aborted_at_start_up(proc.stderr, out):
        # About 1 run in 10 under pytest on 2 cores (never outside it in 16 tries), one rank of the
        # accelerate (gloo) group dies in C++ before the first step with "terminate called without an active
        # exception" (a std::thread destroyed while joinable; not in zmdist's Python). It is retried once,
        # from an empty folder, and said so; any other failure, or a second abort, fails the test.
        print(f"two-process {backend} run aborted at start-up (SIGABRT), retried once:\n{proc.stderr[-1500:]}")
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["phases"]["main"]["batch_sizes_per_rank"] == [[[8, 8]], [[8, 8]]]  # 16 global = 8 + 8
    assert sum(map(sum, summary["confusion_matrix"])) == _test_size(digits)  # exact-once across the two ranks
    assert "rank 1/2" in proc.stderr
    assert (out / "checkpoints" / "step-0000003").is_dir()
    reference = create_student("cnn-tiny", 10).state_dict()
    for name in ("final.safetensors", "best.safetensors"):
        exported = load_file(str(out / name))
        assert {k: tuple(v.shape) for k, v in exported.items()} == {k: tuple(v.shape) for k, v in reference.items()}


def _aborted_at_start_up(stderr: str, out: Path) -> bool:
    """A rank killed by libstdc++'s terminate (SIGABRT) before any step was checkpointed."""
    return ("terminate called without an active exception" in stderr and "SIGABRT" in stderr
            and not list((out / "checkpoints").glob("step-*")))


def test_config_errors_name_the_plugin(digits):
    """Catches: a key of another method silently accepted, or FSDP shipped untested."""
    with pytest.raises(ConfigError, match="method.lambda_p' for method 'fixmatch'. It is an option of zeromatch"):
        _cfg(digits, "method.name=fixmatch", "method.lambda_p=2")
    with pytest.raises(ConfigError, match="unknown backend 'deepspeedd'. Did you mean 'deepspeed'"):
        _cfg(digits, "backend.name=deepspeedd")
    with pytest.raises(ValueError, match="FSDP is untested"):
        _cfg(digits, "backend.fsdp=true").backend.build(micro_batch=8)


def test_missing_or_corrupt_sidecar_is_a_clear_error(digits, tmp_path):
    shards, pl = digits
    broken = tmp_path / "pl"
    broken.mkdir()
    for f in pl.iterdir():
        if f.suffix == ".npz" and f.name != "train-000001.npz":
            shutil.copy(f, broken / f.name)
    cfg = _cfg(digits, "method.name=distill", "steps=40", pl=broken)
    with pytest.raises(FileNotFoundError, match="no pseudolabel sidecar for shard train-000001.tar"):
        train.run(cfg, tmp_path / "out1")
    (broken / "train-000001.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="train-000001.npz is unreadable"):
        train.run(cfg, tmp_path / "out2")
    no_pl = load_config(train.Config, None, [f"shards={shards}", *FAST, "method.name=distill"])
    with pytest.raises(ValueError, match="set pseudolabels=DIR"):
        train.run(no_pl, tmp_path / "out3")


def test_a_sidecar_missing_keys_is_refused_before_training(digits, tmp_path):
    """Catches: a sidecar that lacks some of its shard's keys found only at the step that meets them."""
    shards, pl = digits
    partial = tmp_path / "pl"
    shutil.copytree(pl, partial)
    side = PseudolabelShard.load(partial / "test-000000.npz")
    fields = {k: getattr(side, k) for k in ("keys", "labels", "pseudolabel", "confidence", "margin", "entropy",
                                           "topk_classes", "topk_probs", "probs")}
    PseudolabelShard(**{k: v[:-1] for k, v in fields.items()}).save(partial / "test-000000.npz")
    last = str(side.keys[-1])
    with pytest.raises(ValueError, match=rf"test-000000.tar .*1 of its {len(side.keys)} keys are missing .*{last}"):
        train.run(_cfg(digits, "method.name=distill", "steps=2", pl=partial), tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before any step


def test_deepspeed_runs_as_one_process_without_a_launcher(digits, tmp_path):
    """Catches: `backend.name=deepspeed` failing on `RANK expected, but not set` when started without
    torchrun (a one-process group is set up instead)."""
    shards, pl = digits
    proc = subprocess.run([sys.executable, "-m", "zmdist", "train", "--out", str(tmp_path / "ds"), f"shards={shards}",
                           f"pseudolabels={pl}", *FAST, "method.name=supervised", "steps=2",
                           "backend.name=deepspeed", "backend.zero_stage=1"],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ds" / "summary.json").read_text())["world_size"] == 1


def test_dual_head_wraps_any_classifier_and_metrics_by_hand():
    for name in ("cnn-tiny", "torchvision:resnet18"):
        model = DualHead(create_student(name, 5))
        main, aux = model(torch.randn(2, 3, 32, 32))
        assert main.shape == aux.shape == (2, 5)
        assert model.aux is not model.main and model.aux.in_features == model.main.in_features
    # targets [0, 0, 1, 2], preds [0, 1, 1, 1]: class 0 1/2, class 1 1/1, class 2 0/1 -> top1 2/4
    cm = confusion_matrix(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 2]), 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    m = classification_metrics(cm)
    assert m["top1"] == 0.5 and m["class_weighted_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["per_class_accuracy"] == [0.5, 1.0, 0.0, None]
