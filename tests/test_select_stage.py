"""`zmdist select` and `zmdist al-sim` on real digit shards embedded by the micro teacher (random weights)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from zmdist.config import ConfigError, load_config
from zmdist.demo import select_part
from zmdist.demo.digits_pipeline import prepare_digits
from zmdist.demo.parts import PartContext
from zmdist.formats import EmbeddingShard
from zmdist.selection.probe import ProbeConfig
from zmdist.selection.strategies import RuleConfig, choose
from zmdist.selection.updp import UpdpConfig
from zmdist.stages import al_sim, select
from test_stages import _env

ALL = ["random", "centroid", "typiclust", "probcover", "updp", "dropquery", "entropy", "margin", "least-confidence",
       "coreset"]
FAST = ["progress=false", "probe.steps=40", "updp.steps=25", "rules.kmeans_iterations=30"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Real digit shards (1,346 train / 451 test), their embeddings by zmdist-micro-vit (random weights)
    and zero-shot pseudolabels, made by the quickstart's own pipeline."""
    root = tmp_path_factory.mktemp("select-digits")
    prepare_digits(root, teacher_model="zmdist-micro-vit", pretrained="random", num_workers=0)
    return root


def _select(digits: Path, out: Path, *overrides: str) -> dict:
    cfg = load_config(select.Config, None, [f"embeddings={digits / 'embeddings'}", *FAST, *overrides])
    return select.run(cfg, out)


def _train_keys(digits: Path) -> set[str]:
    files = sorted((digits / "embeddings").glob("train-*.npz"))
    return {k for f in files for k in EmbeddingShard.load(f).keys.tolist()}


def _keys(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize("strategy", ALL)
def test_each_strategy_returns_budget_unique_unlabelled_keys_deterministically(digits, tmp_path, strategy):
    """The labelled set holds 14 spread keys plus the keys the same strategy picks first (without them),
    so a strategy that does not remove the labelled pool, or maps its picks back to the wrong rows,
    returns labelled keys. Also kills duplicates, test-split keys, fewer than the budget, and a strategy
    that ignores the seed (two runs differ)."""
    spread = sorted(_train_keys(digits))[::97]
    seed_pool = tmp_path / "seed.txt"
    seed_pool.write_text("\n".join(spread) + "\n")
    _select(digits, tmp_path / "first", f"strategy={strategy}", "budget=12", f"labelled={seed_pool}")
    first = sorted(set(spread) | set(_keys(tmp_path / "first" / "selected_keys.txt")))
    labelled = tmp_path / "labelled.txt"
    labelled.write_text("\n".join(first) + "\n")
    a = _select(digits, tmp_path / "a", f"strategy={strategy}", "budget=12", f"labelled={labelled}")
    b = _select(digits, tmp_path / "b", f"strategy={strategy}", "budget=12", f"labelled={labelled}")
    chosen = _keys(tmp_path / "a" / "selected_keys.txt")
    assert a["selected"] == len(chosen) == len(set(chosen)) == 12
    assert set(chosen) <= _train_keys(digits) and not set(chosen) & set(first)
    assert chosen == _keys(tmp_path / "b" / "selected_keys.txt")
    assert _keys(tmp_path / "a" / "labelled_keys.txt") == sorted(set(first) | set(chosen))
    assert a["labelled_after"] == 38 == b["labelled_after"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["strategy"] == strategy and summary["seed"] == 0


def test_seed_changes_the_centroid_pick(digits, tmp_path):
    a = _select(digits, tmp_path / "a", "strategy=centroid", "budget=10", "seed=0")
    b = _select(digits, tmp_path / "b", "strategy=centroid", "budget=10", "seed=5")
    assert a["selected"] == b["selected"] == 10
    assert _keys(tmp_path / "a" / "selected_keys.txt") != _keys(tmp_path / "b" / "selected_keys.txt")


def test_dropquery_rounds_chain_into_zmdist_train(digits, tmp_path):
    """centroid -> dropquery -> `zmdist train labelled_keys=FILE`: train labels exactly the chosen keys.
    Kills a keys-file format train cannot read (e.g. shard/key pairs) or a round that forgets the
    previous labels."""
    _select(digits, tmp_path / "r0", "strategy=centroid", "budget=10")
    r1 = _select(digits, tmp_path / "r1", "strategy=dropquery", "budget=10",
                 f"labelled={tmp_path / 'r0' / 'labelled_keys.txt'}")
    assert r1["details"]["candidates"] >= 10 and 0 <= r1["details"]["threshold"] <= 1
    keys = _keys(tmp_path / "r1" / "labelled_keys.txt")
    assert len(keys) == 20 and set(_keys(tmp_path / "r0" / "selected_keys.txt")) <= set(keys)
    proc = subprocess.run(
        [sys.executable, "-m", "zmdist", "train", "--shards", str(digits / "shards"), "--out", str(tmp_path / "t"),
         "method.name=supervised", f"labelled_keys={tmp_path / 'r1' / 'labelled_keys.txt'}", "steps=2",
         "student=cnn-tiny", "img_size=16", "eval_every=2", "checkpoint_every=0", "num_workers=0", "progress=false"],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _keys(tmp_path / "t" / "labelled_keys.txt") == keys


def test_bad_inputs_are_named(digits, tmp_path):
    with pytest.raises(ValueError, match="needs at least 2 labelled keys"):
        _select(digits, tmp_path / "x", "strategy=dropquery")
    stray = tmp_path / "stray.txt"
    stray.write_text("no_such_key\n")
    with pytest.raises(ValueError, match=r"labelled=.*stray.txt: 1 keys are not in this split.*no_such_key"):
        _select(digits, tmp_path / "x", "strategy=random", f"labelled={stray}")
    with pytest.raises(ValueError, match="budget=5000 but only 1346"):
        _select(digits, tmp_path / "x", "strategy=random", "budget=5000")
    with pytest.raises(ConfigError, match="strategy: expected one of.*Did you mean 'dropquery'"):
        _select(digits, tmp_path / "x", "strategy=dropqeury")
    with pytest.raises(FileNotFoundError, match="embed_info.json"):
        select.run(load_config(select.Config, None, [f"embeddings={tmp_path}", "progress=false"]), tmp_path / "x")


def test_updp_model_is_saved_and_reused_on_another_split(digits, tmp_path):
    """The learned prompts + heads are a .safetensors file; selecting on other data (the test split,
    standing in for another dataset of the same teacher) with updp.steps=0 reuses them as they are,
    and another budget re-initialises only the cluster head, saying so."""
    _select(digits, tmp_path / "a", "strategy=updp", "budget=10")
    saved = tmp_path / "a" / "updp.safetensors"
    with safe_open(str(saved), framework="pt") as fh:
        assert fh.metadata()["clusters"] == "10" and "prompts" in fh.keys()
    reused = _select(digits, tmp_path / "b", "strategy=updp", "budget=10", "split=test", "updp.steps=0",
                     f"updp.checkpoint={saved}")
    assert reused["selected"] == 10 and reused["details"]["updp"]["reinitialised"] == []
    assert {"prompts", "instance_head", "cluster_head"} <= set(reused["details"]["updp"]["reused"])
    with pytest.raises(ValueError, match="cluster head for another number of clusters"):
        _select(digits, tmp_path / "c", "strategy=updp", "budget=7", "split=test", "updp.steps=0",
                f"updp.checkpoint={saved}")
    tuned = _select(digits, tmp_path / "d", "strategy=updp", "budget=7", "split=test", f"updp.checkpoint={saved}")
    assert tuned["selected"] == 7 and tuned["details"]["updp"]["reinitialised"] == ["cluster_head"]


SIM = ["inits=[random,centroid]", "strategies=[dropquery,coreset]", "seeds=[0]", "rounds=3"]


def _sim(digits: Path, out: Path, *overrides: str) -> dict:
    cfg = load_config(al_sim.Config, None, [f"embeddings={digits / 'embeddings'}", *FAST, *SIM, *overrides])
    return al_sim.run(cfg, out)


def test_al_sim_as_two_array_tasks_merges_once_complete_and_resumes(digits, tmp_path):
    """Task 0 of 2 leaves half the cells and no merged files; task 1 completes and merges; a rerun skips
    every cell. Kills: tasks overlapping or missing cells, merging early, rerunning finished cells."""
    out = tmp_path / "sim"
    first = _sim(digits, out, "task_index=0", "num_tasks=2")
    assert not first["complete"] and first["cells_done"] == 2 and not (out / "curves.csv").exists()
    assert (out / "summary.task-0-of-2.json").is_file()
    second = _sim(digits, out, "task_index=1", "num_tasks=2")
    assert second["complete"] and second["per_worker"][0]["cells_run"] == 2
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert len(rows) == 4 * 3
    assert {(r["init"], r["query"], r["seed"]) for r in rows} == {
        (i, q, "0") for i in ("random", "centroid") for q in ("dropquery", "coreset")}
    assert [int(r["labelled"]) for r in rows[:3]] == [10, 20, 30]  # 1 per class, +1 per class per round
    assert all(0.0 <= float(r["class_weighted_accuracy"]) <= 1.0 for r in rows)
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["headline_class_weighted_accuracy"]) == {
        "random+dropquery", "random+coreset", "centroid+dropquery", "centroid+coreset"}
    again = _sim(digits, out)
    assert again["complete"] and again["per_worker"][0]["cells_run"] == 0
    with pytest.raises(ValueError, match="already holds simulation cells made with other settings"):
        _sim(digits, out, "rounds=2")


def test_al_sim_under_torchrun_splits_cells_between_two_ranks(digits, tmp_path):
    out = tmp_path / "sim"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "zmdist",
         "al-sim", "--embeddings", str(digits / "embeddings"), "--out", str(out), *FAST, "inits=[centroid]",
         "strategies=[dropquery,random]", "seeds=[0]", "rounds=2"],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["complete"]
    assert sorted((w["worker"], w["cells_run"]) for w in summary["per_worker"]) == [(0, 1), (1, 1)]
    assert "rank 1/2" in proc.stderr and "backend gloo" in proc.stderr


@pytest.mark.parametrize("strategy", ["random", "centroid", "typiclust", "probcover", "updp"])
def test_initial_strategies_with_labels_choose_as_on_the_pool_without_them(strategy):
    """Choosing with rows labelled = choosing on the pool with those rows removed, mapped back to their
    rows. Kills returning positions in the reduced pool as if they were rows of the full one."""
    g = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1).half()
    labelled = torch.arange(0, 300, 7)
    free = torch.tensor([i for i in range(300) if i % 7])
    kw = dict(rules=RuleConfig(kmeans_iterations=20), probe=ProbeConfig(steps=10), updp=UpdpConfig(steps=10),
              seed=3, device=torch.device("cpu"))
    with_labels, _ = choose(strategy, features, labelled, torch.zeros(len(labelled), dtype=torch.long), 10, 9, **kw)
    on_rest, _ = choose(strategy, features[free], torch.empty(0, dtype=torch.long), torch.empty(0), 10, 9, **kw)
    assert torch.equal(with_labels, free[on_rest])


def test_quickstart_part_trains_zeromatch_on_centroid_and_random_labels(digits, tmp_path, monkeypatch):
    """The part's chain select -> train labelled_keys=FILE with the quickstart's PartContext: both students
    train on exactly budget = labels_per_class x classes chosen keys, and the al-sim rows are reported."""
    def student(method: str, seed: int) -> list[str]:
        return [f"method.name={method}", "method.stage0_steps=2", "student=cnn-tiny", "img_size=16", "steps=2",
                "eval_every=2", "checkpoint_every=0", "num_workers=0", "progress=false", f"seed={seed}"]

    monkeypatch.setattr(select_part, "AL_PROBE_STEPS", 40)
    monkeypatch.setattr(select_part, "AL_UPDP_STEPS", 25)
    out = tmp_path / "select"
    out.mkdir()
    ctx = PartContext(out=out, shards=digits / "shards", embeddings=digits / "embeddings",
                      pseudolabels=digits / "pseudolabels", teacher_model="zmdist-micro-vit", teacher_checkpoint="random",
                      templates="digits", seeds=[3], labels_per_class=2, student_overrides=student)
    results = select_part.run_part(ctx)
    assert results["budget"] == 20
    for strategy in ("centroid", "random"):
        trained = _keys(out / f"zeromatch-{strategy}" / "stage1" / "labelled_keys.txt")
        assert trained == _keys(out / f"select-{strategy}" / "labelled_keys.txt") and len(trained) == 20
        assert 0.0 <= results["zeromatch"][strategy]["accuracy"] <= 1.0
    assert _keys(out / "select-centroid" / "labelled_keys.txt") != _keys(out / "select-random" / "labelled_keys.txt")
    curves = results["al_sim"]["class_weighted_accuracy"]
    assert set(curves) == {f"{i}+{q}" for i in select_part.AL_INITS for q in select_part.AL_QUERIES}
    assert results["al_sim"]["labelled_per_round"] == [10, 20, 30, 40]
    rows = select_part.format_rows(json.loads(json.dumps(results)))  # as stored in summary.json
    assert any("centroid-chosen labels" in r for r in rows) and any("updp+dropquery" in r for r in rows)


@pytest.mark.parametrize("strategy", ["entropy", "margin", "least-confidence", "dropquery"])
def test_label_strategies_never_return_the_most_uncertain_labelled_rows(strategy):
    """Ten labelled rows sit at one point, half of each class, so the probe is most uncertain there, and
    so is an unlabelled copy of that point (row 10): the pick must be row 10, never a labelled row.
    Kills scoring the whole pool without masking the labelled rows out."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.zeros(8), torch.zeros(8)
    a[0], b[1] = 1.0, 1.0
    mid = torch.nn.functional.normalize(a + b, dim=0)
    near = [a + 0.05 * torch.randn(8, generator=g) for _ in range(40)] + [b + 0.05 * torch.randn(8, generator=g)
                                                                          for _ in range(40)]
    features = torch.nn.functional.normalize(torch.stack([mid] * 11 + near), dim=1)
    labelled = torch.tensor([*range(10), 11, 12, 13, 51, 52, 53])
    labels = torch.tensor([0, 1] * 5 + [0, 0, 0, 1, 1, 1])
    probe = ProbeConfig(steps=200, dropout=0.75 if strategy == "dropquery" else 0.0)
    picked, _ = choose(strategy, features, labelled, labels, 2, 1, rules=RuleConfig(), probe=probe,
                       updp=UpdpConfig(), seed=0, device=torch.device("cpu"))
    assert len(picked) == 1 and not set(picked.tolist()) & set(labelled.tolist())
    if strategy != "dropquery":
        assert picked.tolist() == [10]
