"""zmdist bench without running stages: the sweep file's checks, the plan (shared steps once, keyed
folders), the command line's bare words, overrides that parse back, and the report's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from zmdist.bench.plan import Plan, as_override, build_plan
from zmdist.bench.report import write_report
from zmdist.bench.spec import load_sweep
from zmdist.config import ConfigError, parse_override
from zmdist.stages import action_overrides, load_stage

ROOT = Path(__file__).resolve().parent.parent
SWEEP = {
    "name": "t",
    "teachers": {"micro": {"model": "zmdist-micro-vit"}},
    "datasets": {"digits": {"source": "sklearn-digits", "shard": {"test_fraction": 0.25}, "templates": "digits"}},
    "methods": {"zero-shot": {"stage": "zero-shot"},
                "supervised": {"stage": "train", "options": {"method.name": "supervised"}},
                "fixmatch": {"stage": "train", "options": {"method": {"name": "fixmatch"}}, "label": "FixMatch"},
                "grip": {"stage": "prompt-tune", "budgets": [], "options": {"setting": "ul", "strategy": "grip"}}},
    "budgets": [2, 4],
    "seeds": [0, 1],
    "defaults": {"train": {"steps": 5, "student": "cnn-tiny"}},
    "published": {"fixmatch": {"digits/4": 90.0}},
}


def write_sweep(tmp_path: Path, **changes) -> Path:
    data = json.loads(json.dumps(SWEEP))
    data.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_runs_shared_stages_once_and_keys_folders_by_their_inputs(tmp_path):
    plan = build_plan(load_sweep(write_sweep(tmp_path)), tmp_path / "out")
    shared = [s.id for s in plan.shared]
    assert shared == ["shard/digits", "embed/digits/micro", "pseudolabel/digits/micro"]
    # 2 methods with budgets x 2 budgets x 2 seeds, + zero-shot and grip (no budget) x 2 seeds
    assert len(plan.cells) == 2 * 2 * 2 + 2 + 2
    train = [c for c in plan.cells if c.stage == "train"]
    assert all(set(c.deps) == {"shard/digits", "pseudolabel/digits/micro"} for c in train)
    assert {c.meta["budget"] for c in train} == {2, 4}
    grip = [c for c in plan.cells if c.meta["method"] == "grip"]
    assert [c.meta["budget"] for c in grip] == [None, None] and grip[0].deps == ["embed/digits/micro"]
    assert not any(a.startswith("labels_per_class=") for a in grip[0].argv)
    zero = [c for c in plan.cells if c.meta["method"] == "zero-shot"]
    assert zero[0].argv == [] and zero[0].done == str(Path(plan.step("pseudolabel/digits/micro").out) / "summary.json")
    cell = next(c for c in train if c.meta == {"dataset": "digits", "teacher": "micro", "method": "fixmatch",
                                               "budget": 4, "seed": 1, "kind": "train"})
    assert "labels_per_class=4" in cell.argv and "seed=1" in cell.argv and "method.name=fixmatch" in cell.argv
    assert "steps=5" in cell.argv and f"shards={plan.step('shard/digits').out}" in cell.argv


def test_folders_change_only_where_the_sweep_changed(tmp_path):
    before = build_plan(load_sweep(write_sweep(tmp_path)), tmp_path / "out")
    again = build_plan(load_sweep(write_sweep(tmp_path)), tmp_path / "out")
    assert [s.out for s in before.steps] == [s.out for s in again.steps]  # stable: a rerun finds its work
    datasets = json.loads(json.dumps(SWEEP["datasets"]))
    datasets["digits"]["templates"] = "simple"
    changed = build_plan(load_sweep(write_sweep(tmp_path, datasets=datasets)), tmp_path / "out")
    outs = {s.id: s.out for s in before.steps}
    new = {s.id: s.out for s in changed.steps}
    assert new["embed/digits/micro"] == outs["embed/digits/micro"]  # same teacher + data: embeddings reused
    assert new["pseudolabel/digits/micro"] != outs["pseudolabel/digits/micro"]  # other prompts
    assert all(new[c] != outs[c] for c in new if c.startswith("cell/supervised"))  # they read the pseudolabels
    assert all(new[c] == outs[c] for c in new if c.startswith("cell/grip"))  # reads only the embeddings


@pytest.mark.parametrize("change, message", [
    ({"methods": {"x": {"stage": "tran"}}}, "methods.x.stage: 'tran' is not a cell kind"),
    ({"datasets": {"d": {"sorce": "sklearn-digits"}}}, "unknown config key 'datasets.d.sorce'. Did you mean 'datasets.d.source'"),
    ({"datasets": {"d": {}}}, "datasets.d: give exactly one of source"),
    ({"published": {"fixmatch": {"digits/3": 1.0}}}, "published.fixmatch.digits/3: '3' is not one of the method's budgets"),
    ({"published": {"fixmatch": {"cifar/4": 1.0}}}, "no dataset 'cifar'"),
    ({"published": {"grip": {"digits/2/micro": 1.0}}}, "write the key as DATASET[/TEACHER]"),
    ({"published": {"grip": {"digits/2": 1.0}}}, "no teacher '2'"),
    ({"published": {"nope": {"digits": 1.0}}}, "published.nope: no such method"),
    ({"teachers": {}}, "'teachers' is empty"),
    ({"datasets": {"d": {"source": "cifar1000:/x"}}}, "datasets.d.source: no data source 'cifar1000'"),
])
def test_sweep_errors_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_sweep(write_sweep(tmp_path, **change))


def test_a_bad_stage_option_fails_at_plan_time_naming_the_cell(tmp_path):
    path = write_sweep(tmp_path, defaults={"train": {"stepz": 5}})
    with pytest.raises(ConfigError, match=r"cell/\w+/digits/micro/b2/s0 \(train\): unknown config key 'stepz'. Did you mean 'steps'"):
        build_plan(load_sweep(path), tmp_path / "out")


@pytest.mark.parametrize("value", ["a photo of a {}.", "1", "", "null", "true", "x: y", [1, 2], {"a": [1]}, True,
                                   0.5, "/data/x y", ["a photo of {}.", "b {}"]])
def test_overrides_parse_back_to_the_value(value):
    assert parse_override(as_override("k", value)) == ("k", value)


def test_bare_words_of_bench_and_of_stages_with_only_an_action():
    bench = load_stage("bench")
    assert action_overrides(bench, ["s.yaml", "seeds=[0]"]) == ["target=s.yaml", "seeds=[0]"]
    assert action_overrides(bench, ["report", "runs/x"]) == ["action=report", "target=runs/x"]
    assert action_overrides(bench, ["report"]) == ["action=report"]
    assert action_overrides(bench, ["plan", "s.yaml", "launcher=slurm"]) == ["action=plan", "target=s.yaml",
                                                                              "launcher=slurm"]
    transfer = load_stage("transfer")
    assert action_overrides(transfer, ["fit", "table=x.csv"]) == ["action=fit", "table=x.csv"]


def _finish(step, summary: dict) -> None:
    Path(step.out).mkdir(parents=True, exist_ok=True)
    Path(step.done).write_text(json.dumps(summary))


def test_report_means_stds_published_and_unfinished_cells(tmp_path):
    plan = build_plan(load_sweep(write_sweep(tmp_path)), tmp_path / "out")
    plan.save()
    accuracy = {("fixmatch", 4, 0): 0.90, ("fixmatch", 4, 1): 0.80, ("fixmatch", 2, 0): 0.70,
                ("supervised", 2, 0): 0.5, ("supervised", 2, 1): 0.6, ("supervised", 4, 0): 0.75,
                ("supervised", 4, 1): 0.65}
    for cell in plan.cells:
        key = (cell.meta["method"], cell.meta["budget"], cell.meta["seed"])
        if key in accuracy:
            _finish(cell, {"accuracy": accuracy[key]})
    _finish(plan.step("pseudolabel/digits/micro"), {"zero_shot_accuracy_per_split": {"train": 0.1, "test": 0.42}})
    failed = next(c for c in plan.cells if c.meta["method"] == "fixmatch" and c.meta["budget"] == 2
                  and c.meta["seed"] == 1)
    status = Path(plan.out) / "status" / (failed.id.replace("/", "__") + ".json")
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"state": "failed", "reason": "exit status 1", "log": "/x/log"}))

    result = write_report(Plan.load(plan.out))
    entries = {(e["method"], e["budget"]): e for e in result["entries"]}
    fm4 = entries[("fixmatch", 4)]
    assert fm4["mean"] == pytest.approx(0.85) and fm4["std"] == pytest.approx(0.0707107, abs=1e-6)
    assert fm4["published"] == 90.0 and fm4["difference"] == pytest.approx(-5.0)
    assert entries[("fixmatch", 2)]["seeds_done"] == 1 and entries[("zero-shot", None)]["mean"] == 0.42
    text = result["markdown"]
    assert "| method | digits | digits 2/class | digits 4/class |" in text
    assert "| FixMatch |  | 70.0 ± 0.0 (1/2 seeds) | 85.0 ± 7.1 [90] |" in text
    assert "| supervised |  | 55.0 ± 7.1 | 70.0 ± 7.1 |" in text
    assert "| zero-shot | 42.0 ± 0.0 |" in text
    assert "cell/fixmatch/digits/micro/b2/s1: failed (exit status 1); log: /x/log" in text
    assert "cell/grip/digits/micro/s0: pending" in text
    rows = (Path(plan.out) / "report.csv").read_text().splitlines()
    assert "fixmatch,FixMatch,micro,digits,4,test accuracy,2,2,85.0,7.071068,90.0,-5.0" in rows
    assert (Path(plan.out) / "accuracy_vs_labels.png").read_bytes()[:4] == b"\x89PNG"
    everything = json.loads((Path(plan.out) / "report.json").read_text())
    assert everything["states"] == {"done": 9, "failed": 1, "blocked": 0, "pending": 2}


def test_every_config_in_configs_bench_is_a_valid_sweep_and_plans():
    sweeps = sorted((ROOT / "configs" / "bench").glob("*.yaml"))
    assert len(sweeps) >= 5
    for path in sweeps:
        sweep = load_sweep(path)
        plan = build_plan(sweep, Path("/nonexistent/out"))  # every cell's options checked against its stage
        assert plan.cells, path.name


def test_a_cells_process_is_a_world_of_its_own(monkeypatch):
    """Catches an array task's position or its parent's process group leaking into a cell: the cell's
    stage would take only its share of the work (al-sim splits cells by task) or wait for absent ranks."""
    from zmdist.bench.runner import child_env

    for var, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1",
                       "MASTER_PORT": "20001", "ZMDIST_TASK_INDEX": "5", "ZMDIST_NUM_TASKS": "8"}.items():
        monkeypatch.setenv(var, value)
    env = child_env()
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"} & set(env)
    assert (env["ZMDIST_TASK_INDEX"], env["ZMDIST_NUM_TASKS"]) == ("0", "1")
