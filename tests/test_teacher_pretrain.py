"""Contrastive pretraining of the tiny digit teacher on synthetic captions."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from zmdist.data.sklearn_digits import digits_array_to_image
from zmdist.demo.synth_digits import render_digit_corpus
from zmdist.demo.teacher_pretrain import (
    clip_contrastive_loss,
    digit_arrays_to_tensor,
    evaluate_zero_shot_on_sklearn_digits,
    pretrain_digit_teacher,
    read_pretrain_metadata,
)
from zmdist.teacher.loading import load_teacher


def test_clip_loss_hand_computed_2x2():
    eye = torch.eye(2)
    # matching pairs: logits [[2, 0], [0, 2]]; each row/column CE = -log(e^2 / (e^2 + e^0)) = log(1 + e^-2)
    expected = math.log(1 + math.exp(-2))
    assert clip_contrastive_loss(eye, eye, 2.0).item() == pytest.approx(expected, abs=1e-6)
    # swapped texts: logits [[0, 2], [2, 0]]; CE = -log(e^0 / (e^0 + e^2)) = log(1 + e^2)
    swapped = eye.flip(0)
    assert clip_contrastive_loss(eye, swapped, torch.tensor(2.0)).item() == pytest.approx(
        math.log(1 + math.exp(2)), abs=1e-6
    )
    # orthogonal-but-asymmetric case: image->text and text->image halves differ, loss is their mean
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    txt = torch.eye(2)  # logits [[1, 0], [1, 0]] at scale 1
    row = 0.5 * (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1)))
    col = 0.5 * (math.log(2) + math.log(2))  # both columns are constant
    assert clip_contrastive_loss(img, txt, 1.0).item() == pytest.approx(0.5 * (row + col), abs=1e-6)


def test_clip_loss_soft_targets_identity_equals_standard():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    hard = clip_contrastive_loss(a, b, 7.0)
    soft = clip_contrastive_loss(a, b, 7.0, targets=torch.eye(5))
    assert soft.item() == pytest.approx(hard.item(), abs=1e-6)


def test_batched_tensor_path_matches_teacher_preprocess():
    teacher = load_teacher("zmdist-tiny-vit", "random")
    arrays, _, _ = render_digit_corpus(40, seed=1)
    arrays[0] = 16  # saturated and empty inputs exercise clipping in the bicubic resize
    arrays[1] = 0
    ref = torch.stack([teacher.preprocess(digits_array_to_image(a).convert("RGB")) for a in arrays])
    mine = digit_arrays_to_tensor(arrays)
    assert mine.shape == ref.shape == (40, 3, 32, 32)
    assert (mine - ref).abs().max().item() < 1e-5


def test_short_pretrain_saves_loadable_cached_checkpoint(tmp_path):
    kw = dict(steps=30, batch_size=64, corpus_size=1000, seed=0, progress=False)
    path = pretrain_digit_teacher(tmp_path, **kw)
    assert path.is_file() and path.parent == tmp_path
    assert path.name.startswith("zmdist-tiny-vit-synthdigits-") and path.suffix == ".safetensors"
    assert not list(tmp_path.glob(".tmp-*"))  # the atomic write left no temp file

    meta = read_pretrain_metadata(path)
    assert meta["steps_done"] == 30
    assert meta["loss_last"] < meta["loss_first"] - 0.05

    teacher = load_teacher("zmdist-tiny-vit", pretrained=str(path))
    from safetensors.torch import load_file

    saved = load_file(str(path))
    state = teacher.model.state_dict()
    assert set(saved) == set(state)
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    random_init = load_teacher("zmdist-tiny-vit", "random")
    assert not torch.equal(random_init.model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"])

    # same settings: the cached file comes back without training
    mtime = path.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = pretrain_digit_teacher(tmp_path, **kw)
    assert again == path
    assert time.perf_counter() - t0 < 1.0
    assert path.stat().st_mtime_ns == mtime
    # a different setting is a different file
    other = pretrain_digit_teacher(tmp_path, **{**kw, "steps": 2})
    assert other != path and other.is_file()

    acc = evaluate_zero_shot_on_sklearn_digits(path, "zmdist-tiny-vit")
    assert 0.0 <= acc <= 1.0


def test_pretrain_is_deterministic_for_a_seed(tmp_path):
    from safetensors.torch import load_file

    kw = dict(steps=4, batch_size=32, corpus_size=300, seed=5, progress=False)
    a = load_file(str(pretrain_digit_teacher(tmp_path / "a", **kw)))
    b = load_file(str(pretrain_digit_teacher(tmp_path / "b", **kw)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = load_file(str(pretrain_digit_teacher(tmp_path / "c", **{**kw, "seed": 6})))
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])


def test_seconds_caps_the_run(tmp_path):
    t0 = time.perf_counter()
    path = pretrain_digit_teacher(tmp_path, steps=100_000, batch_size=16, corpus_size=200, seconds=1.5, progress=False)
    assert time.perf_counter() - t0 < 30
    meta = read_pretrain_metadata(path)
    assert 0 < meta["steps_done"] < 100_000
    assert np.isfinite(meta["loss_last"])


def test_pretrain_follows_the_shared_warmup_cosine_schedule(tmp_path, monkeypatch):
    """Catches the demo teacher drifting back to a private learning-rate schedule: every step's lr must be
    ``lr * zmdist.train.schedule.warmup_cosine(warmup, steps)(step)``, warm-up over 5% of the steps."""
    import zmdist.demo.teacher_pretrain as tp
    from zmdist.train.schedule import warmup_cosine

    seen_lrs: list[float] = []
    real_step = torch.optim.AdamW.step

    def spy_step(self, *args, **kwargs):
        seen_lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy_step)
    steps, lr = 40, 1e-3
    tp.pretrain_digit_teacher(tmp_path, steps=steps, batch_size=16, corpus_size=100, lr=lr, progress=False)
    expected = [lr * warmup_cosine(2, steps)(s) for s in range(steps)]
    assert seen_lrs == pytest.approx(expected, rel=1e-9)
