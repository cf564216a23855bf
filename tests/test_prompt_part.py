"""Quickstart part "prompt" on a small prepared digits set (micro teacher, random weights, short runs)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from zmdist.demo import prompt_part
from zmdist.demo.digits_pipeline import prepare_digits, student_overrides
from zmdist.demo.parts import PartContext
from zmdist.formats import PseudolabelShard


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """These tiny models run faster on one thread than on two cores shared with other tests."""


def test_prompt_part_chains_grip_pseudolabel_and_a_zeromatch_student(tmp_path, monkeypatch):
    """GRIP (UL) -> pseudolabel with its head -> ZeroMatch on those sidecars: the sidecars are the GRIP
    head's argmax (not the zero-shot ones), the student trained on them, no label was used by the tuning,
    and the rows name each figure. Kills: the student pointed at the zero-shot pseudolabels, the part
    tuning with labels (setting ssl), rows that drop the GRIP figure."""
    prepare_digits(tmp_path, teacher_model="zmdist-micro-vit", pretrained="random", shard_size=400)
    monkeypatch.setattr(prompt_part, "ROUNDS", 2)
    monkeypatch.setattr(prompt_part, "EPOCHS", 1)
    settings = SimpleNamespace(student="cnn-tiny", student_img_size=16, labels_per_class=2, train_steps=10,
                               stage0_steps=5, progress=False)
    out = tmp_path / "prompt"
    out.mkdir()
    ctx = PartContext(out=out, shards=tmp_path / "shards", embeddings=tmp_path / "embeddings",
                      pseudolabels=tmp_path / "pseudolabels", teacher_model="zmdist-micro-vit", teacher_checkpoint="random",
                      templates="digits", seeds=[3], labels_per_class=2,
                      student_overrides=lambda method, seed: student_overrides(settings, method, seed, None, None))
    results = prompt_part.run_part(ctx)
    tuned = json.loads((out / "grip-ul" / "summary.json").read_text())
    assert tuned["setting"] == "ul" and tuned["labelled"] == 0 and len(tuned["rounds"]) == 2
    head = np.load(out / "grip-ul" / "classifier.npy")
    side = PseudolabelShard.load(out / "pseudolabels-grip" / "train-000000.npz")
    emb = np.load(tmp_path / "embeddings" / "train-000000.npz")["embeddings"].astype(np.float32)
    scores = emb @ head.T
    top2 = np.sort(scores, axis=1)[:, -2:]
    tied = top2[:, 1] - top2[:, 0] < 1e-5  # float noise between two near-equal classes of the random teacher
    assert ((side.pseudolabel == scores.argmax(1)) | tied).all() and tied.mean() < 0.01
    student_cfg = (out / "zeromatch-grip-seed3" / "config.yaml").read_text()
    assert str(out / "pseudolabels-grip") in student_cfg and "method:\n  name: zeromatch" in student_cfg
    assert results["zeromatch_on_grip_pseudolabels"]["seed"] == 3
    assert 0 <= results["teacher_grip_test_accuracy"] <= 1
    rows = prompt_part.format_rows(results)
    assert any("teacher GRIP-tuned (UL)" in r and f"{results['teacher_grip_test_accuracy']:.3f}" in r for r in rows)
    assert any("zeromatch on GRIP pseudolabels" in r for r in rows)
