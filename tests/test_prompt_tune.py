"""``zmdist prompt-tune`` end to end on real digit shards embedded by the micro teacher (random weights):
rounds, resume, the classifier ``zmdist pseudolabel classifier=`` uses, TRZSL handling, 2 ranks = 1 rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest

from zmdist.config import ConfigError, load_config
from zmdist.demo.digits_pipeline import prepare_digits
from zmdist.formats import EmbeddingShard, PseudolabelShard
from zmdist.methods.prompting import grip_k, top_k_per_class
from zmdist.prompts import load_prompt
from zmdist.stages import prompt_tune, pseudolabel

FAST = ["n_ctx=4", "optim.epochs=1", "optim.batch_size=64", "optim.warmup_epochs=0", "progress=false"]
BENCH = Path(__file__).parent.parent / "configs" / "bench" / "grip.yaml"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """These tiny models run faster on one thread than on two cores shared with other tests."""


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prompt-digits")
    prepare_digits(root, teacher_model="zmdist-micro-vit", pretrained="random", shard_size=400)
    return root


def _run(digits: Path, out: Path, *overrides: str) -> dict:
    cfg = load_config(prompt_tune.Config, None, [f"embeddings={digits / 'embeddings'}", *FAST, *overrides])
    return prompt_tune.run(cfg, out)


def _pool(digits: Path) -> tuple[np.ndarray, np.ndarray]:
    files = sorted((digits / "embeddings").glob("train-*.npz"))
    shards = [EmbeddingShard.load(f) for f in files]
    return np.concatenate([s.keys for s in shards]), np.concatenate([s.embeddings for s in shards]).astype(np.float32)


def _assert_argmax(labels: np.ndarray, scores: np.ndarray) -> None:
    """``labels`` are the row-wise argmax of ``scores``, except where the top two are within float noise (the
    random micro teacher's class features are close, and the stages compute in another order)."""
    top2 = np.sort(scores, axis=1)[:, -2:]
    tied = top2[:, 1] - top2[:, 0] < 1e-5
    assert ((labels == scores.argmax(1)) | tied).all() and tied.mean() < 0.05


def test_grip_ssl_rounds_resume_and_a_classifier_pseudolabel_uses(digits, tmp_path):
    """GRIP in SSL, 3 rounds: K follows grip_k over the unlabelled pool, every round folder is complete, the
    classifier has unit rows. Deleting the last round's marker resumes there and reproduces the same head.
    `zmdist pseudolabel classifier=` labels every image with argmax(emb @ head.T) (= the prompt's relabelling
    of the pool), and a rerun into that folder with another head is refused. Kills: K from the whole pool
    (labelled included), re-running finished rounds, a head pseudolabel ignores, a fingerprint without it."""
    out = tmp_path / "grip"
    result = _run(digits, out, "setting=ssl", "strategy=grip", "rounds=3", "labels_per_class=2")
    assert result["labelled"] == 20 and result["unlabelled"] == 1346 - 20
    assert [r["k"] for r in result["rounds"]] == [grip_k(t, 1326, 10, 3) for t in range(3)]
    assert [r["pseudolabels"] for r in result["rounds"]] == [10 * grip_k(t, 1326, 10, 3) for t in range(2)] + [1326]
    first = result["rounds"][0]  # K = 45 >= 10: floor(0.2 * 45) = 9 per class held out, not trained on
    assert first["held_out"] == 90 and first["loss_weights"] == [360 / 20, 1.0] and first["best_epoch"] == 0
    assert int(np.load(out / "round-00" / "pseudolabels.npz")["held_out"].sum()) == 90
    for t in range(3):
        names = {p.name for p in (out / f"round-{t:02d}").iterdir()}
        assert {"prompt.safetensors", "pseudolabels.npz", "pool_probs.npy", "classifier.npy", "metrics.json"} <= names
    head = np.load(out / "classifier.npy")
    assert head.shape == (10, 32) and np.allclose(np.linalg.norm(head, axis=1), 1, atol=1e-5)
    tensors, meta = load_prompt(out / "prompt.safetensors")
    assert tensors["ctx"].shape == (4, 32) and meta["kind"] == "textual" and meta["round"] == 2

    (out / "round-02" / "metrics.json").unlink()
    again = _run(digits, out, "setting=ssl", "strategy=grip", "rounds=3", "labels_per_class=2")
    assert again["resumed_at_round"] == 2
    np.testing.assert_allclose(np.load(out / "classifier.npy"), head, atol=1e-6)
    with pytest.raises(ValueError, match="other settings"):
        _run(digits, out, "setting=ssl", "strategy=ifpl", "rounds=3")

    pl = tmp_path / "pl"
    pseudolabel.run(load_config(pseudolabel.Config, None, [f"embeddings={digits / 'embeddings'}",
                                                           f"classifier={out / 'classifier.npy'}",
                                                           "progress=false"]), pl)
    keys, emb = _pool(digits)
    side = [PseudolabelShard.load(f) for f in sorted(pl.glob("train-*.npz"))]
    assert list(np.concatenate([s.keys for s in side])) == list(keys)
    labels = np.concatenate([s.pseudolabel for s in side])
    _assert_argmax(labels, emb @ head.T)
    _assert_argmax(labels, np.load(out / "round-02" / "pool_probs.npy"))
    assert json.loads((pl / "summary.json").read_text())["classifier_source"] == str(out / "classifier.npy")
    other = tmp_path / "other.npy"
    np.save(other, np.roll(head, 1, axis=0))
    with pytest.raises(ValueError, match="prompts"):
        pseudolabel.run(load_config(pseudolabel.Config, None, [f"embeddings={digits / 'embeddings'}",
                                                               f"classifier={other}", "progress=false"]), pl)


def test_pseudolabel_refuses_a_classifier_of_the_wrong_shape_or_not_normalised(digits, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((9, 32), np.float32))
    cfg = load_config(pseudolabel.Config, None, [f"embeddings={digits / 'embeddings'}", f"classifier={bad}"])
    with pytest.raises(ValueError, match=r"one row per class: \(10, D\)"):
        pseudolabel.run(cfg, tmp_path / "pl")
    np.save(bad, np.ones((10, 32), np.float32))
    with pytest.raises(ValueError, match="L2-normalised"):
        pseudolabel.run(cfg, tmp_path / "pl2")


def test_trzsl_labels_seen_classes_and_pseudolabels_only_unseen_ones(digits, tmp_path):
    """seen_classes=[0..5]: every pool image of a seen class is labelled, the rest is the pool, pseudolabels
    take unseen classes only, and the metrics report seen / unseen accuracy and their harmonic mean. A seeded
    fraction of 0.62 sees round(6.2) = 6 classes, the same ones for the same seed. Kills: pseudolabels among
    seen classes, unseen images labelled, the fraction ignored."""
    out = tmp_path / "trzsl"
    result = _run(digits, out, "setting=trzsl", "strategy=fpl", "seen_classes=[0,1,2,3,4,5]", "k=8")
    keys, _ = _pool(digits)
    labels = np.concatenate([EmbeddingShard.load(f).labels for f in sorted((digits / "embeddings").glob("train-*.npz"))])
    assert result["labelled"] == int(np.isin(labels, range(6)).sum())
    side = np.load(out / "round-00" / "pseudolabels.npz")
    assert set(side["pseudolabel"].tolist()) <= {6, 7, 8, 9} and len(side["pseudolabel"]) == 4 * 8
    assert set(side["labels"].tolist()) <= {6, 7, 8, 9}  # the pool holds unseen-class images only
    final = result["final"]
    assert {"seen_accuracy", "unseen_accuracy", "harmonic_mean"} <= set(final)
    s, u = final["seen_accuracy"], final["unseen_accuracy"]
    assert final["harmonic_mean"] == pytest.approx(0 if s + u == 0 else 2 * s * u / (s + u))
    from zmdist.prompts.data import choose_seen_classes

    seen = choose_seen_classes(10, [], 0.62, seed=3)
    assert len(seen) == 6 and seen == choose_seen_classes(10, [], 0.62, seed=3)
    with pytest.raises(ValueError, match="at least one unseen"):
        choose_seen_classes(3, [0, 1, 2], 0.62, seed=0)


def test_bad_settings_are_refused_with_the_reason(digits, tmp_path):
    with pytest.raises(ConfigError, match="strategy=none trains on labels only"):
        _run(digits, tmp_path / "a", "setting=ul", "strategy=none")
    with pytest.raises(ValueError, match="fewer than labels_per_class=500"):
        _run(digits, tmp_path / "b", "setting=ssl", "labels_per_class=500")
    with pytest.raises(ConfigError, match="setting"):
        load_config(prompt_tune.Config, None, ["embeddings=x", "setting=semi"])


def test_visual_prompts_train_through_the_image_tower(digits, tmp_path):
    """prompt=visual decodes the shards' images and tunes VPT tokens: the saved prompt holds the tokens,
    and no classifier file is written (the head is the fixed zero-shot one; the prompt lives in the image
    tower, which `pseudolabel` does not run)."""
    out = tmp_path / "vpt"
    result = _run(digits, out, "prompt=visual", "setting=ul", "strategy=fpl", "n_tokens=2", "k=4")
    tensors, meta = load_prompt(out / "prompt.safetensors")
    assert tensors["tokens"].shape == (2, 32) and meta["kind"] == "visual"
    assert not (out / "classifier.npy").exists() and "classifier" not in result
    assert result["final"]["pseudolabels"] == 40 and "accuracy" in result["final"]


def test_multimodal_prompts_run_a_round(digits, tmp_path):
    """prompt=multimodal trains the shared generator (sqrt weights in SSL) and saves only trainable tensors."""
    out = tmp_path / "mm"
    result = _run(digits, out, "prompt=multimodal", "setting=ssl", "strategy=fpl", "n_ctx=2", "n_tokens=2",
                  "shared_dim=16", "k=4")
    tensors, meta = load_prompt(out / "prompt.safetensors")
    assert meta["kind"] == "multimodal" and "tokens" in tensors and "text.ctx" not in tensors
    assert result["final"]["loss_weights"] == pytest.approx([(40 / 20) ** 0.5, 1.0])


def test_the_grip_sweep_runs_the_papers_setup_on_its_four_datasets():
    """configs/bench/grip.yaml: every GRIP cell gets the published hyperparameters (a renamed option, or a
    dataset dropped from the table, fails here)."""
    from zmdist.bench.plan import build_plan
    from zmdist.bench.spec import load_sweep

    plan = build_plan(load_sweep(BENCH), Path("/nonexistent"))
    grip = [c for c in plan.cells if c.meta["method"].startswith("grip-")]
    assert {c.meta["dataset"] for c in grip} == {"flowers102", "resisc45", "eurosat", "dtd"}
    assert len(grip) == 4 * 3 * 5  # datasets x settings x seeds
    for cell in grip:
        cfg = load_config(prompt_tune.Config, None, cell.argv[4:])
        assert (cfg.n_ctx, cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs, cfg.rounds) == (16, 0.1, 16, 150, 10)
        assert cfg.strategy == "grip" and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 0.1
        assert cfg.templates == ["a photo of a {}."] and cfg.optim.warmup_epochs == 5
        assert cfg.labels_per_class == 2 if cfg.setting == "ssl" else cell.meta["budget"] is None


def test_two_ranks_give_the_one_rank_pseudolabels(digits, tmp_path):
    """The same GRIP run under `torchrun --nproc_per_node 2` (gloo): world size 2, both ranks in the log,
    and every round's pseudolabels equal the one-process run's. Kills: gradients not all-reduced (each rank
    would fit half the batch), relabelling only rank 0's slice, ranks drawing different batches."""
    args = [f"embeddings={digits / 'embeddings'}", *FAST, "setting=ssl", "strategy=grip", "rounds=2",
            "optim.batch_size=32"]
    one = tmp_path / "one"
    prompt_tune.run(load_config(prompt_tune.Config, None, args), one)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID",
                                                            "SLURM_NTASKS")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "zmdist", "prompt-tune", "--out", str(two), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    assert "rank 1/2" in proc.stderr and "backend gloo" in proc.stderr
    for t in range(2):
        a, b = (np.load(d / f"round-{t:02d}" / "pseudolabels.npz") for d in (one, two))
        np.testing.assert_array_equal(a["keys"], b["keys"])
        np.testing.assert_array_equal(a["pseudolabel"], b["pseudolabel"])
        pa, pb = (np.load(d / f"round-{t:02d}" / "pool_probs.npy") for d in (one, two))
        np.testing.assert_array_equal(pa.argmax(1), pb.argmax(1))
        np.testing.assert_allclose(pa, pb, atol=1e-4)


RELEASED = ["loss_balance=released", "k_schedule=released", "rounds_init=released", "keep_epoch=last",
            "ssl_draw=released", "trzsl_softmax=unseen"]


@pytest.mark.parametrize("init", ["fresh", "released"])
def test_a_round_starts_fresh_or_warm_from_the_last_one(digits, tmp_path, init):
    """With a learning rate of 1e-9 a round's prompt stays at its start: `fresh` rounds start from their own
    seeded init (round 1's context differs from round 0's), `released` rounds from the last round's learned
    context (equal). Kills: a warm start that is not loaded, or one leaking into fresh rounds."""
    out = tmp_path / init
    _run(digits, out, "setting=ul", "strategy=grip", "rounds=2", "optim.lr=1e-9", f"rounds_init={init}")
    ctx0, ctx1 = (load_prompt(out / f"round-{t:02d}" / "prompt.safetensors")[0]["ctx"] for t in range(2))
    if init == "released":
        torch.testing.assert_close(ctx1, ctx0, rtol=0, atol=1e-6)
    else:
        assert (ctx1 - ctx0).abs().max() > 1e-3


def test_ifpl_keeps_k_fixed_and_relabels_with_each_rounds_prompt(digits, tmp_path):
    """IFPL (no test before): K = k = 16 every round, and round t's pseudolabels are the top-16 per class of
    round t-1's relabelled pool (its pool_probs.npy), not the zero-shot ones again. Kills: a K that grows
    like GRIP's, pseudolabels that are never relabelled."""
    out = tmp_path / "ifpl"
    result = _run(digits, out, "setting=ul", "strategy=ifpl", "rounds=3", "k=16", "holdout_fraction=0")
    assert [r["k"] for r in result["rounds"]] == [16, 16, 16]
    assert [r["pseudolabels"] for r in result["rounds"]] == [160, 160, 160]
    keys, _ = _pool(digits)
    sets = []
    for t in (1, 2):
        probs = np.load(out / f"round-{t - 1:02d}" / "pool_probs.npy")
        expected = {(str(keys[r]), c) for c, rows in top_k_per_class(torch.from_numpy(probs), 16).items() for r in rows}
        side = np.load(out / f"round-{t:02d}" / "pseudolabels.npz")
        got = {(str(k), int(c)) for k, c in zip(side["keys"], side["pseudolabel"])}
        assert got == expected
        sets.append(got)
    zero = np.load(out / "round-00" / "pseudolabels.npz")
    assert {(str(k), int(c)) for k, c in zip(zero["keys"], zero["pseudolabel"])} != sets[0]


def test_released_options_run_grip_ssl_as_the_released_code(digits, tmp_path):
    """Every released option in one SSL GRIP run: 80% of the 2-per-class labels trained on (16), drawn the same
    for seeds 0 and 1 and as main_SSL.py draws them (numpy's legacy generator seeded 0 per class, then an 80%
    subset seeded 0, written out here); floored K (|U| = 1346 - 20 = 1326 over 2 rounds: int(663 (t+1) / 10),
    66 in round 0); loss weights |L|/|P| with |P| the trained pseudolabels (13 of each class's 66 held out);
    the last epoch kept. Kills: the seed reaching the released draw, the 4 validation labels trained on or
    pseudolabelled, the FPL weight in GRIP, the best epoch kept."""
    from zmdist.prompts.data import make_labelling

    labels = np.concatenate([EmbeddingShard.load(f).labels for f in sorted((digits / "embeddings").glob("train-*.npz"))])
    draws = [make_labelling(labels, 10, "ssl", labels_per_class=2, seen=[], seen_fraction=0.62, seed=s,
                            ssl_draw="released") for s in (0, 1)]
    np.testing.assert_array_equal(draws[0].labelled, draws[1].labelled)
    shots = []
    for c in range(10):
        np.random.seed(0)
        shots += list(np.random.choice(np.where(labels == c)[0], size=2, replace=False))
    np.random.seed(0)
    train = np.random.choice(range(len(shots)), size=int(len(shots) * 0.8), replace=False)
    np.testing.assert_array_equal(draws[0].labelled, np.sort(np.array(shots)[train]))
    assert len(draws[0].unlabelled) == 1346 - 20 and not set(shots) & set(draws[0].unlabelled.tolist())

    result = _run(digits, tmp_path / "rel", "setting=ssl", "strategy=grip", "rounds=2", "optim.epochs=2", *RELEASED)
    assert result["labelled"] == 16 and result["unlabelled"] == 1326
    assert [r["k"] for r in result["rounds"]] == [grip_k(t, 1326, 10, 2, schedule="released") for t in range(2)]
    first = result["rounds"][0]
    assert first["k"] == 66 and first["held_out"] == 10 * 13
    assert first["loss_weights"] == pytest.approx([16 / (660 - 130), 1.0])
    assert first["kept_epoch"] == 1
    info = json.loads((tmp_path / "rel" / "prompt_tune_info.json").read_text())
    assert {k: info["settings_used"][k] for k in ("loss_balance", "k_schedule", "rounds_init", "keep_epoch",
                                                  "ssl_draw", "trzsl_softmax")} == {
        "loss_balance": "released", "k_schedule": "released", "rounds_init": "released", "keep_epoch": "last",
        "ssl_draw": "released", "trzsl_softmax": "unseen"}


def test_released_trzsl_pseudolabels_rank_a_softmax_over_the_unseen_classes(digits, tmp_path):
    """trzsl_softmax=unseen ranks round 0's pseudolabels by a softmax over the unseen classes (the ranking
    itself is checked against that softmax in test_prompt_methods): all pseudolabels are unseen classes and
    they differ from the restricted all-class softmax's (same run otherwise); the loss weights are the
    released TRZSL (1, |L|/|P|). Kills: the option not reaching the ranking."""
    picks = {}
    for over in ("all", "unseen"):
        out = tmp_path / over
        result = _run(digits, out, "setting=trzsl", "strategy=fpl", "seen_classes=[0,1,2,3,4,5]", "k=8",
                      f"trzsl_softmax={over}", "loss_balance=released")
        side = np.load(out / "round-00" / "pseudolabels.npz")
        assert set(side["pseudolabel"].tolist()) <= {6, 7, 8, 9} and len(side["pseudolabel"]) == 32
        picks[over] = {(str(k), int(c)) for k, c in zip(side["keys"], side["pseudolabel"])}
    assert picks["all"] != picks["unseen"]
    assert result["final"]["loss_weights"] == pytest.approx([1.0, result["labelled"] / 32])


@pytest.mark.parametrize("balance", ["clean", "released"])
def test_train_round_steps_on_the_chosen_loss(balance):
    """One SGD step (one batch of 3 rows, no momentum, decay or warm-up) moves a linear head by -lr times the
    gradient of the chosen loss, computed here by autograd on the pure functions: clean (w_L sum CE_L +
    w_P sum CE_P) / B, released w_L mean CE_L + w_P mean CE_P. Kills: loss_balance not reaching training."""
    from zmdist.methods.prompting import part_mean_prompt_loss, weighted_prompt_loss
    from zmdist.prompts.training import OptimSettings, train_round

    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1, 1])
    lab = torch.tensor([True, False, False])
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.5, -0.2], [0.1, 0.3]]))
    start = head.weight.detach().clone()
    reference = torch.nn.Parameter(start.clone())
    loss_fn = part_mean_prompt_loss if balance == "released" else weighted_prompt_loss
    loss_fn(x @ reference.T, targets, lab, 3.0, 1.0).backward()
    train_round(head, lambda rows: head(x[rows]), targets, lab, (3.0, 1.0),
                OptimSettings(lr=0.5, momentum=0.0, weight_decay=0.0, batch_size=3, epochs=1, warmup_epochs=0),
                seed=0, loss_balance=balance)
    torch.testing.assert_close(head.weight.detach(), start - 0.5 * reference.grad)
