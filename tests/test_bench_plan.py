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
    "teachers": {"micro": {"model": "zmdist-micro-vit", "pretrained": "random"}},
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


def test_a_teacher_without_weights_is_refused_at_plan_time(tmp_path):
    """Catches a sweep whose teacher silently embeds with random weights (every number near chance)."""
    path = write_sweep(tmp_path, teachers={"micro": {"model": "zmdist-micro-vit"}})
    with pytest.raises(ConfigError, match=r"teachers\.micro\.pretrained is empty, .*teachers\.micro\.pretrained=random"):
        build_plan(load_sweep(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


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
    assert "fixmatch,FixMatch,micro,digits,4,test accuracy,2,2,85.0,7.071068,,,90.0,the paper,-5.0" in rows
    assert (Path(plan.out) / "accuracy_vs_labels.png").read_bytes()[:4] == b"\x89PNG"
    everything = json.loads((Path(plan.out) / "report.json").read_text())
    assert everything["states"] == {"done": 9, "failed": 1, "blocked": 0, "pending": 2}


def test_report_shows_the_best_test_accuracy_beside_the_final_and_labels_published_sources(tmp_path):
    """USB's tables report the best test accuracy over a run's evaluations, the sweep the final model's:
    catches the best replacing the headline, a best read from a run that selected by pseudolabel agreement
    (not an accuracy), and USB's numbers shown as the paper's."""
    path = write_sweep(tmp_path, reference="The Paper, table 2",
                       published={"fixmatch": {"digits/4": 90.0}, "supervised": {"digits/4": 60.0}},
                       published_source={"supervised": "USB's runs (results/usb_cv.csv)"})
    plan = build_plan(load_sweep(path), tmp_path / "out")
    plan.save()
    runs = {("fixmatch", 0): (0.80, 0.84, "top1"), ("fixmatch", 1): (0.82, 0.90, "top1"),
            ("supervised", 0): (0.60, 0.99, "holdout_agreement")}
    for cell in plan.cells:
        key = (cell.meta["method"], cell.meta["seed"])
        if cell.meta["budget"] == 4 and key in runs:
            final, best, selection = runs[key]
            _finish(cell, {"accuracy": final, "best_checkpoint": {"top1": best, "step": 10, "selection": selection}})
    result = write_report(Plan.load(plan.out))
    entries = {(e["method"], e["budget"]): e for e in result["entries"]}
    fm4, sup4 = entries[("fixmatch", 4)], entries[("supervised", 4)]
    assert fm4["mean"] == pytest.approx(0.81) and fm4["best_mean"] == pytest.approx(0.87)
    assert fm4["difference"] == pytest.approx(81.0 - 90.0)  # the headline (final) is what is compared
    assert sup4["best_mean"] is None  # chosen by agreement: no best test accuracy to show
    assert fm4["published_source"] == "The Paper, table 2"
    assert sup4["published_source"] == "USB's runs (results/usb_cv.csv)"
    text = result["markdown"]
    assert "| 81.0 ± 1.4; best 87.0 ± 4.2 [90] |" in text
    assert "best: the best test accuracy at the run's evaluations" in text
    assert "- [published] FixMatch: The Paper, table 2" in text
    assert "- [published] supervised: USB's runs (results/usb_cv.csv)" in text
    rows = (Path(plan.out) / "report.csv").read_text().splitlines()
    # a source with a comma is quoted, not split into columns
    assert 'fixmatch,FixMatch,micro,digits,4,test accuracy,2,2,81.0,1.414214,87.0,4.242641,90.0,"The Paper, table 2",-9.0' in rows


@pytest.mark.parametrize("changes, message", [
    ({"published_source": {"grip": "somewhere"}}, "published_source.grip: 'grip' has no published numbers"),
    ({"published_source": {"fixmatch": " "}}, "published_source.fixmatch is empty"),
    ({"methods": {**SWEEP["methods"], "fixmatch": {"stage": "train", "options": {"method.name": "fixmatch"},
                                                   "dataset_options": {"cifar": {"steps": 3}}}}},
     "methods.fixmatch.dataset_options.cifar: no such dataset"),
])
def test_published_sources_and_dataset_options_name_what_exists(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write_sweep(tmp_path, **changes))


def test_zeromatch_sweep_plans_the_released_protocol(tmp_path):
    """configs/bench/zeromatch.yaml as the released ZeroMatch configs train: catches a setting lost between
    the sweep file and a cell's command (a random-weight student, the cosine schedule, no layer decay,
    stage 0 selected on a hold-out, CIFAR's stage-0 length on Flowers), a zeromatch-only option reaching
    the baselines, the FRAMED split lists not reaching the shard step, and USB's numbers unlabelled."""
    sweep = load_sweep(ROOT / "configs" / "bench" / "zeromatch.yaml")
    plan = build_plan(sweep, tmp_path / "out")
    assert len(plan.cells) == 138

    def argv(method: str, dataset: str) -> set[str]:
        cell = next(c for c in plan.cells if c.meta["method"] == method and c.meta["dataset"] == dataset)
        return set(cell.argv)

    cifar = argv("zeromatch", "cifar100")
    assert {"layer_decay=0.5", "schedule=usb", "lr=0.0005", "steps=204800", "warmup_steps=5120", "eval_every=2048",
            "batch_size=16", "uratio=1", "method.stage0_selection=train_sample", "method.stage0_steps=204800",
            "student.name=timm:vit_small_patch16_224", "student.options.patch_size=2", "student.img_size=32",
            "img_size=32", "student.drop_path=0.2",
            "student.pretrained=/data/checkpoints/vit_small_patch2_32_mlp_im_1k_32.safetensors"} <= cifar
    flowers = argv("zeromatch", "flowers102")
    assert {"layer_decay=0.65", "lr=0.0001", "steps=102400", "warmup_steps=2560", "eval_every=1024",
            "method.stage0_steps=102400", "student.img_size=224", "student.drop_path=0.2",
            "student.pretrained=/data/checkpoints/vit_small_patch16_224_mlp_im_1k_224.safetensors"} <= flowers
    assert not any(a.startswith("student.options") for a in flowers)
    assert "method.stage0_steps=102400" in argv("zeromatch", "resisc45")
    baseline = argv("adamatch", "cifar100")
    assert "layer_decay=0.5" in baseline and not any(a.startswith("method.stage0") for a in baseline)
    assert "split_file=/data/framed/Flowers102/{split}.txt" in plan.step("shard/flowers102").argv
    assert "split_file=/data/framed/RESICS45/{split}.json" in plan.step("shard/resisc45").argv
    assert sweep.published["supervised"] == {"cifar100/2": 64.12, "cifar100/4": 73.24}
    assert sweep.published["fixmatch"] == {"cifar100/2": 70.40, "cifar100/4": 80.44}
    assert sweep.published["adamatch"] == {"cifar100/2": 77.68, "cifar100/4": 83.34}
    assert set(sweep.published_source) == {"supervised", "fixmatch", "adamatch"}
    assert all("USB" in source and "not the ZeroMatch paper" in source for source in sweep.published_source.values())


def test_zmdist_bench_plan_of_the_zeromatch_sweep_prints_its_gpu_hours(tmp_path, capsys):
    from zmdist.cli import main as cli_main

    assert cli_main(["bench", "plan", str(ROOT / "configs" / "bench" / "zeromatch.yaml"), "--out",
                     str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "zeromatch                train          30 / 0" in text
    total = text.rsplit("estimated GPU-hours still to spend", 1)[1]
    assert "student training" in total and float(total.rsplit("total ", 1)[1].split()[0]) > 0


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


def test_report_compares_trzsl_prompt_tune_cells_on_the_harmonic_mean_with_top1_beside(tmp_path):
    """GRIP's TRZSL column is the harmonic mean of seen and unseen accuracy: a TRZSL cell's headline (and its
    difference to the published number) is that, with top-1 over all classes shown beside it; a UL cell stays
    top-1 with nothing beside. Kills: comparing top-1 with the published harmonic mean."""
    methods = {**SWEEP["methods"], "grip-trzsl": {"stage": "prompt-tune", "budgets": [], "label": "GRIP (TRZSL)",
                                                  "options": {"setting": "trzsl", "strategy": "grip"}}}
    plan = build_plan(load_sweep(write_sweep(tmp_path, methods=methods, published={"grip-trzsl": {"digits": 70.0}})),
                      tmp_path / "out")
    plan.save()
    finals = {0: (0.9, 0.5, 0.6), 1: (0.8, 0.7, 0.8)}  # (seen, unseen, top-1)
    for cell in plan.cells:
        if cell.meta["method"] == "grip-trzsl":
            s, u, top1 = finals[cell.meta["seed"]]
            _finish(cell, {"setting": "trzsl", "final": {"accuracy": top1, "seen_accuracy": s, "unseen_accuracy": u,
                                                         "harmonic_mean": 2 * s * u / (s + u)}})
        elif cell.meta["method"] == "grip":
            _finish(cell, {"setting": "ul", "final": {"accuracy": 0.75}})
    result = write_report(Plan.load(plan.out))
    entries = {e["method"]: e for e in result["entries"]}
    trzsl, ul = entries["grip-trzsl"], entries["grip"]
    hms = [2 * 0.9 * 0.5 / 1.4, 2 * 0.8 * 0.7 / 1.5]
    assert trzsl["mean"] == pytest.approx(sum(hms) / 2) and trzsl["aside_mean"] == pytest.approx(0.7)
    assert trzsl["difference"] == pytest.approx(100 * sum(hms) / 2 - 70.0)
    assert trzsl["metric"] == "harmonic mean of seen / unseen test accuracy" and trzsl["aside_name"] == "top-1"
    assert ul["mean"] == pytest.approx(0.75) and ul["aside_mean"] is None and ul["metric"] == "test accuracy"
    assert "| GRIP (TRZSL) | 69.5 ± 7.3; top-1 70.0 ± 14.1 [70] |" in result["markdown"]


def test_the_grip_sweep_runs_every_released_behaviour(tmp_path):
    """configs/bench/grip.yaml reproduces the released code: every prompt-tune cell gets the released loss,
    K schedule, warm-started rounds, last epoch, SSL draw and TRZSL softmax, and the released TRZSL seen
    classes of its dataset (split_500: 63 of Flowers102's 102, 29 of DTD's 47, 6 of EuroSAT's 10, 27 of
    RESISC45's 45); CLIP's zero-shot DTD number is stored. Kills: an option lost between the sweep and a
    cell's command, a dataset with the seeded seen_fraction instead of the released lists."""
    from zmdist.config import load_config
    from zmdist.stages import prompt_tune

    sweep = load_sweep(ROOT / "configs" / "bench" / "grip.yaml")
    plan = build_plan(sweep, tmp_path / "out")
    seen = {"flowers102": 63, "dtd": 29, "eurosat": 6, "resisc45": 27}
    cells = [c for c in plan.cells if c.meta["kind"] == "prompt-tune"]
    assert len(cells) == 9 * 4 * 5
    for cell in cells:
        cfg = load_config(prompt_tune.Config, None, cell.argv[4:])
        assert (cfg.loss_balance, cfg.k_schedule, cfg.rounds_init, cfg.keep_epoch, cfg.ssl_draw, cfg.trzsl_softmax) == (
            "released", "released", "released", "last", "released", "unseen"), cell.id
        assert len(cfg.seen_classes) == seen[cell.meta["dataset"]], cell.id
    assert sweep.published["zero-shot"]["dtd"] == 43.2
