"""Student training end to end on real digit shards: methods, resume, 2-process DDP and DeepSpeed ZeRO-2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_stages import _env, zmdist_cli
from zmdist.config import load_config
from zmdist.data.manifest import Manifest
from zmdist.models import DualHead, create_student
from zmdist.stages import train
from zmdist.stages.quickstart import prepare_digits
from zmdist.train.metrics import classification_metrics, confusion_matrix

FAST = ["student=cnn-tiny", "img_size=16", "batch_size=16", "hflip=false", "num_workers=0", "progress=false",
        "log_every=2", "eval_every=4", "warmup_steps=2"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    prepare_digits(root, teacher_model="zmdist-micro-vit", num_workers=0)
    return root / "shards", root / "pseudolabels"


def _test_size(digits) -> int:
    return Manifest.load(digits[0]).split("test").total


def _args(digits, *extra: str) -> list[str]:
    shards, pl = digits
    return [f"shards={shards}", f"pseudolabels={pl}", *FAST, *extra]


@pytest.mark.parametrize("method", ["supervised", "distill", "zeromatch"])
def test_methods_train_and_record_results(digits, tmp_path, method):
    out = tmp_path / method
    res = train.run(load_config(train.Config, None, _args(digits, f"method={method}", "steps=8", "stage0_steps=4")),
                    out)
    assert res["world_size"] == 1 and 0.0 <= res["accuracy"] <= 1.0
    assert len(res["per_class_accuracy"]) == 10
    assert sum(map(sum, res["confusion_matrix"])) == _test_size(digits)  # the whole test split, exactly once
    final = out / ("stage1" if method == "zeromatch" else "") / "final.safetensors"
    weights = load_file(str(final))
    if method == "zeromatch":
        assert any(k.startswith("aux.") for k in weights) and set(res["stages"]) == {"stage0", "stage1"}
    logs = [json.loads(line) for line in (final.parent / "log.jsonl").read_text().splitlines()]
    assert any("samples_per_s" in r and r["samples_per_s"] > 0 for r in logs)
    assert any(r.get("eval") for r in logs)
    assert list((final.parent / "tensorboard").glob("events.out.tfevents.*"))  # the same metrics in TensorBoard
    if method != "distill":
        keys = (final.parent / "labelled_keys.txt").read_text().split()
        assert len(keys) == 40 == len(set(keys))  # 4 labels per class
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and "git_commit" in summary


def test_signal_checkpoint_and_resume_reproduce_the_uninterrupted_run(digits, tmp_path):
    args = ["train", *_args(digits, "method=zeromatch", "steps=10",
                                                                           "stage0_steps=4", "checkpoint_every=0")]
    whole = zmdist_cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    env = _env() | {"ZMDIST_SIGNAL_AT_STEP": "6"}  # SIGTERM to ourselves in stage 1 (stage 0 has 4 steps)
    cut = zmdist_cli(*args, "--out", str(tmp_path / "cut"), env=env)
    assert cut.returncode == 75, cut.stderr[-3000:]
    assert "stopped by a signal at step 6" in cut.stderr
    state = json.loads((tmp_path / "cut/stage1/checkpoints/step-0000006/state.json").read_text())
    assert state["step"] == 6 and state["algorithm"]["p_model"]  # AdaMatch statistics are checkpointed
    resumed = zmdist_cli(*args, "--out", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a = load_file(str(tmp_path / "whole/stage1/final.safetensors"))
    b = load_file(str(tmp_path / "cut/stage1/final.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # same weights, bit for bit, on CPU with fixed seeds
    sa = json.loads((tmp_path / "whole/summary.json").read_text())
    sb = json.loads((tmp_path / "cut/summary.json").read_text())
    assert sa["accuracy"] == sb["accuracy"] and sb["stages"]["stage1"]["resumed"]


@pytest.mark.parametrize("backend", ["accelerate", "deepspeed"])
def test_two_processes(digits, tmp_path, backend):
    out = tmp_path / backend
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "zmdist",
         "train", "--out", str(out), *_args(digits, "method=fixmatch", "steps=6", f"backend={backend}",
                                             "zero_stage=2", "checkpoint_every=3")],
        capture_output=True, text=True, env=_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert sum(map(sum, summary["confusion_matrix"])) == _test_size(digits)  # exact-once across the two ranks
    assert "rank 1/2" in proc.stderr
    assert (out / "checkpoints" / "step-0000003").is_dir()


def test_missing_or_corrupt_sidecar_is_a_clear_error(digits, tmp_path):
    shards, pl = digits
    broken = tmp_path / "pl"
    broken.mkdir()
    for f in pl.iterdir():
        if f.suffix == ".npz" and f.name != "train-000001.npz":
            (broken / f.name).write_bytes(f.read_bytes())
    cfg = load_config(train.Config, None, [f"shards={shards}", f"pseudolabels={broken}", *FAST, "method=distill",
                                           "steps=40"])
    with pytest.raises(FileNotFoundError, match="no pseudolabel sidecar for shard train-000001.tar"):
        train.run(cfg, tmp_path / "out1")
    (broken / "train-000001.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="train-000001.npz is unreadable"):
        train.run(cfg, tmp_path / "out2")
    r = zmdist_cli("train", "--out", str(tmp_path / "out3"), f"shards={shards}", "method=distill", *FAST)
    assert r.returncode == 1 and "set pseudolabels=DIR" in r.stderr


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
