"""Each output folder belongs to one stage and one run at a time (``zmdist.stages.outdir``), and a rerun
with other inputs or settings is refused naming what changed: on real digit shards embedded by the micro
teacher (random weights), with real stage runs, real lock files and a real second process holding them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zmdist.config import load_config
from zmdist.demo.digits_pipeline import prepare_digits
from zmdist.selection.simulate import plan_cells
from zmdist.stages import al_sim, bench, prompt_tune, pseudolabel, quickstart, select, shard, train, transfer
from zmdist.stages.common import WorkerLock
from zmdist.stages.outdir import OWNER_FILE, claim_output
from zmdist.train.engine import EngineHooks
from test_bench_run import SMALL
from test_stages import _env, zmdist_cli

PROMPT_FAST = ["n_ctx=4", "optim.epochs=1", "optim.batch_size=64", "optim.warmup_epochs=0", "progress=false",
               "strategy=grip", "setting=ul"]
SELECT_FAST = ["progress=false", "rules.kmeans_iterations=30"]
TRAIN_FAST = ["student=cnn-tiny", "img_size=8", "batch_size=16", "hflip=false", "num_workers=0", "progress=false",
              "method.name=supervised", "labels_per_class=2", "steps=4", "eval_every=4", "checkpoint_every=0"]
AL_CELLS = {"inits": ["random"], "strategies": ["random"], "seeds": [0]}

# Holds what argv[1] (JSON) lists, as a live run of that stage would, until its stdin closes: a whole folder
# (`own_output`) or one worker's share of it (`claim_output` + `WorkerLock`).
HOLDER = """
import json, sys
from contextlib import ExitStack
from pathlib import Path
from zmdist.stages.common import WorkerLock
from zmdist.stages.outdir import claim_output, own_output
with ExitStack() as stack:
    for spec in json.loads(sys.argv[1]):
        out = Path(spec["out"])
        if spec.get("shards") is None:
            stack.enter_context(own_output(out, spec["stage"]))
        else:
            claim_output(out, spec["stage"])
            stack.enter_context(WorkerLock(out, 0, spec["rank"], spec["shards"], spec["stage"]))
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """These tiny models run faster on one thread than on two cores shared with other tests."""


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Real digit shards (1,346 train / 451 test), their micro-teacher embeddings and zero-shot pseudolabels."""
    root = tmp_path_factory.mktemp("outdir-digits")
    prepare_digits(root, teacher_model="zmdist-micro-vit", pretrained="random", num_workers=0)
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _select(digits: Path, out: Path, *overrides: str) -> dict:
    return select.run(load_config(select.Config, None, [f"embeddings={digits / 'embeddings'}", *SELECT_FAST,
                                                        *overrides]), out)


def _train_cfg(digits: Path, *overrides: str) -> train.Config:
    return load_config(train.Config, None, [f"shards={digits / 'shards'}", f"pseudolabels={digits / 'pseudolabels'}",
                                            *TRAIN_FAST, *overrides])


def _table(path: Path, gains: list[float]) -> Path:
    rows = ["task,iimm,gain,forgetting"] + [f"t{i},{0.1 * i:.1f},{g},{0.5 * g}" for i, g in enumerate(gains)]
    path.write_text("\n".join(rows) + "\n")
    return path


# --- one writer per folder ---------------------------------------------------------------------------------

def test_a_second_prompt_tune_started_while_one_runs_is_refused_naming_it(digits, tmp_path, monkeypatch):
    """Run B (other rounds and K) starts into the folder while run A is in its first round: B is refused
    naming A's host and pid, and A ends with its own rounds only. Kills: prompt-tune without a writer lock
    (B would run its 3 rounds into A's folder and both would exit 0 with mixed rounds)."""
    out = tmp_path / "grip"
    refusals: list[str] = []
    one_round = prompt_tune._one_round

    def first_round_starts_b(*args, **kwargs):
        if not refusals:
            with pytest.raises(ValueError) as err:
                prompt_tune.run(load_config(prompt_tune.Config, None, [
                    f"embeddings={digits / 'embeddings'}", *PROMPT_FAST, "rounds=3", "k=8"]), out)
            refusals.append(str(err.value))
        return one_round(*args, **kwargs)

    monkeypatch.setattr(prompt_tune, "_one_round", first_round_starts_b)
    result = prompt_tune.run(load_config(prompt_tune.Config, None, [
        f"embeddings={digits / 'embeddings'}", *PROMPT_FAST, "rounds=2"]), out)
    assert len(refusals) == 1
    assert f"being written by another `zmdist prompt-tune` run (host" in refusals[0]
    assert f"pid {os.getpid()}, lock {out / '.lock-task0-rank0'}" in refusals[0]
    assert len(result["rounds"]) == 2 and sorted(p.name for p in out.glob("round-*")) == ["round-00", "round-01"]
    assert json.loads((out / "prompt_tune_info.json").read_text())["settings_used"]["rounds"] == 2
    assert not (out / ".lock-task0-rank0").exists()  # released when A ended


def test_a_second_train_started_while_one_trains_is_refused(digits, tmp_path):
    """Into the same folder, a train run started mid-training (another seed) is refused; the first one's
    summary is its own. Kills: train without the rank-0 folder lock."""
    out = tmp_path / "student"
    refusals: list[str] = []

    def second_run(phase: str, step: int) -> None:
        if step == 1:
            with pytest.raises(ValueError) as err:
                train.run(_train_cfg(digits, "seed=7"), out)
            refusals.append(str(err.value))

    train.run(_train_cfg(digits, "seed=3"), out, EngineHooks(on_step_end=second_run))
    assert len(refusals) == 1 and "being written by another `zmdist train` run" in refusals[0]
    assert json.loads((out / "summary.json").read_text())["seed"] == 3


@pytest.fixture(scope="module")
def held(tmp_path_factory, digits):
    """Folders held by another live process, as a running stage holds them: {case: folder}."""
    root = tmp_path_factory.mktemp("held")
    cells = [c.name for c in plan_cells(AL_CELLS["inits"], AL_CELLS["strategies"], AL_CELLS["seeds"])]
    specs = {case: {"out": str(root / case), "stage": case.split(":")[0]} for case in CASES}
    specs["al-sim"].update(rank=1, shards=cells)  # another al-sim run's rank 1, working on the same cell
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, json.dumps(list(specs.values()))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "held"
    yield proc.pid, {case: Path(spec["out"]) for case, spec in specs.items()}
    proc.stdin.close()
    proc.wait(timeout=60)


def _sweep(folder: Path) -> Path:
    path = folder.parent / "sweep.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


# case -> (stage module, its overrides given the digits folder and the held folder)
CASES = {
    "shard": (shard, lambda d, f: ["source=sklearn-digits", "progress=false"]),
    "train": (train, lambda d, f: [f"shards={d / 'shards'}", f"pseudolabels={d / 'pseudolabels'}", *TRAIN_FAST]),
    "prompt-tune": (prompt_tune, lambda d, f: [f"embeddings={d / 'embeddings'}", *PROMPT_FAST, "rounds=1"]),
    "select": (select, lambda d, f: [f"embeddings={d / 'embeddings'}", *SELECT_FAST]),
    "transfer:score": (transfer, lambda d, f: [f"embeddings={d / 'embeddings'}", "progress=false"]),
    "transfer:fit": (transfer, lambda d, f: ["action=fit", f"table={_table(f.parent / 'tasks.csv', [1, 2, 2, 4])}"]),
    "bench": (bench, lambda d, f: [f"target={_sweep(f)}", "progress=false"]),
    "quickstart": (quickstart, lambda d, f: ["part=students", "progress=false"]),
    "al-sim": (al_sim, lambda d, f: [f"embeddings={d / 'embeddings'}", "rounds=2", "probe.steps=5", "progress=false",
                                     *[f"{k}={v}" for k, v in AL_CELLS.items()]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_stage_refuses_a_folder_another_live_process_writes(digits, held, case):
    """Another live process holds the folder (the whole of it, or for al-sim one worker's share): the stage
    refuses naming that process and writes nothing. Kills: any stage that does not take the folder's lock."""
    holder_pid, folders = held
    module, overrides = CASES[case]
    folder = folders[case]
    before = _files(folder)
    with pytest.raises(ValueError, match=rf"being written by another `zmdist {case.split(':')[0]}` run "
                                         rf"\(host \S+, pid {holder_pid}, lock "):
        module.run(load_config(module.Config, None, overrides(digits, folder)), folder)
    # al-sim records its settings before taking its worker's lock (as embed does): the same ones, no results
    assert {k: v for k, v in _files(folder).items() if k != al_sim.INFO_FILE} == before
    assert not list(folder.glob("cells/*.json"))


def test_a_whole_folder_lock_and_a_workers_lock_exclude_each_other(tmp_path):
    """A single-writer run's lock (task 0 rank 0, the whole folder) and a worker's lock under another name
    (rank 1, one shard) overlap whatever the shard names. Kills: WHOLE_FOLDER not overlapping everything."""
    with WorkerLock(tmp_path, 0, 1, ["a.tar"], "embed"):
        with pytest.raises(ValueError, match=r"another `zmdist embed` run .*lock-task0-rank1"):
            WorkerLock.whole_folder(tmp_path, "embed").acquire()
    with WorkerLock.whole_folder(tmp_path, "train"):
        with pytest.raises(ValueError, match=r"another `zmdist train` run .*lock-task0-rank0"):
            WorkerLock(tmp_path, 0, 1, ["a.tar"], "embed").acquire()
    assert not list(tmp_path.iterdir())


def test_a_killed_runs_lock_is_taken_over(digits, tmp_path):
    """A lock left by a process that is gone does not block the rerun, and the run releases its own."""
    out = tmp_path / "picks"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out.mkdir()
    (out / ".lock-task0-rank0").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                                       "shards": ["*"], "stage": "select"}))
    assert _select(digits, out, "budget=5")["selected"] == 5
    assert not list(out.glob(".lock-*"))


# --- the same settings, or a refusal naming what changed ---------------------------------------------------

def test_select_rerun_with_other_settings_is_refused_naming_them(digits, tmp_path):
    """Same inputs and settings: accepted, the same picks. Another budget, strategy or labelled file:
    refused naming it, the earlier picks untouched. Kills: select without a
    fingerprint (it silently replaced the picks), a fingerprint that ignores settings or the key file."""
    out = tmp_path / "picks"
    _select(digits, out, "strategy=centroid", "budget=10")
    picks = (out / "selected_keys.txt").read_bytes()
    _select(digits, out, "strategy=centroid", "budget=10", "device=cpu", "progress=true")
    first = _files(out)
    assert first["selected_keys.txt"] == picks
    picked = tmp_path / "labelled.txt"
    picked.write_bytes(first["selected_keys.txt"])
    for change, named in [("budget=12", r"budget changed \(budget: was 10, now 12\)"),
                          ("strategy=random", r"strategy changed \(strategy: was 'centroid', now 'random'\)"),
                          ("rules.kmeans_iterations=31", r"rules\.kmeans_iterations changed"),
                          (f"labelled={picked}", r"labelled_keys changed")]:
        with pytest.raises(ValueError, match=rf"already holds selected keys made with other settings: {named}"):
            _select(digits, out, "strategy=centroid", "budget=10", change)
        assert (out / "selected_keys.txt").read_bytes() == first["selected_keys.txt"]
        assert (out / "summary.json").read_bytes() == first["summary.json"]


def test_transfer_reruns_with_other_inputs_or_settings_are_refused(digits, tmp_path):
    """score: the same again is accepted; another split, or templates, is refused naming it. fit: another
    level or a table with other numbers is refused; fit into a score folder is refused (action). predict:
    other scores are refused. Kills: transfer without a run-info check (each of these replaced the earlier
    results)."""
    score = tmp_path / "score"
    base = [f"embeddings={digits / 'embeddings'}", "progress=false", "baselines=[]"]
    first = transfer.run(load_config(transfer.Config, None, base), score)
    again = transfer.run(load_config(transfer.Config, None, base), score)
    assert again["scores"] == first["scores"]
    for change, named in [("split=test", "split changed"), ("templates=digits", "prompts, templates changed")]:
        with pytest.raises(ValueError, match=rf"already holds transfer results made with other settings: {named}"):
            transfer.run(load_config(transfer.Config, None, [*base, change]), score)
    with pytest.raises(ValueError, match=r"action changed \(action: was 'score', now 'fit'\)"):
        transfer.run(load_config(transfer.Config, None, ["action=fit", f"table={_table(tmp_path / 't.csv', [1, 2, 2, 4])}"]),
                     score)
    assert json.loads((score / "summary.json").read_text())["split"] == "train"

    fit = tmp_path / "fit"
    table = _table(tmp_path / "tasks.csv", [1, 2, 2, 4])
    transfer.run(load_config(transfer.Config, None, ["action=fit", f"table={table}"]), fit)
    before = _files(fit)
    transfer.run(load_config(transfer.Config, None, ["action=fit", f"table={table}"]), fit)
    with pytest.raises(ValueError, match=r"level changed \(level: was 0\.95, now 0\.9\)"):
        transfer.run(load_config(transfer.Config, None, ["action=fit", f"table={table}", "level=0.9"]), fit)
    _table(table, [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"table changed \(table \(the CSV file's content\): was '"):
        transfer.run(load_config(transfer.Config, None, ["action=fit", f"table={table}"]), fit)
    assert _files(fit)["fit.json"] == before["fit.json"]

    predict = tmp_path / "predict"
    transfer.run(load_config(transfer.Config, None, ["action=predict", f"fit={fit}", "scores=[0.3]"]), predict)
    with pytest.raises(ValueError, match=r"scores changed \(scores \(the new tasks' scores as read\): was \[\['0.3', "
                                         r"0.3\]\], now \[\['0.5', 0.5\]\]\)"):
        transfer.run(load_config(transfer.Config, None, ["action=predict", f"fit={fit}", "scores=[0.5]"]), predict)


# --- one stage per folder ----------------------------------------------------------------------------------

@pytest.mark.parametrize("made_by,source,info", [("pseudolabel", "pseudolabels", "pseudolabel_info.json"),
                                                 ("embed", "embeddings", "embed_info.json")])
def test_train_into_another_stages_folder_is_refused_and_leaves_it_as_it_was(digits, tmp_path, made_by, source,
                                                                             info):
    """train --out at a pseudolabel (or embed) folder: refused naming the stage and the files that say so,
    the folder byte for byte as before; the same for a folder made before the ownership marker existed.
    Kills: train replacing the folder's summary.json and config.yaml (it exited 0)."""
    folder = tmp_path / made_by
    shutil.copytree(digits / source, folder)
    before = _files(folder)
    with pytest.raises(ValueError, match=rf"--out {folder} holds the results of `zmdist {made_by}` "
                                         rf"\(\.zmdist-stage, {info}, summary\.json in it say so\): each output "
                                         "folder belongs to one stage"):
        train.run(_train_cfg(digits), folder)
    assert _files(folder) == before and not [p for p in folder.iterdir() if p.is_dir()]
    (folder / OWNER_FILE).unlink()  # made by an older zmdist: its info file and summary still say whose it is
    with pytest.raises(ValueError, match=rf"holds the results of `zmdist {made_by}` \({info}, summary\.json in"):
        train.run(_train_cfg(digits), folder)
    assert _files(folder) == {k: v for k, v in before.items() if k != OWNER_FILE}


def test_a_folder_claimed_by_one_stage_is_refused_to_another_even_before_it_wrote(digits, tmp_path):
    """Only the marker says whose a just-claimed folder is: pseudolabel (a multi-worker stage) is refused
    there. Kills: ownership read from results files only."""
    out = tmp_path / "picks"
    claim_output(out, "select")
    with pytest.raises(ValueError, match=r"holds the results of `zmdist select` \(\.zmdist-stage in it says so\)"):
        pseudolabel.run(load_config(pseudolabel.Config, None, [f"embeddings={digits / 'embeddings'}",
                                                               "progress=false"]), out)
    assert sorted(p.name for p in out.iterdir()) == [OWNER_FILE]


def test_cli_train_into_a_pseudolabel_folder_exits_1_with_one_line(digits):
    res = zmdist_cli("train", "--out", str(digits / "pseudolabels"), f"shards={digits / 'shards'}",
                     f"pseudolabels={digits / 'pseudolabels'}", *TRAIN_FAST)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"zmdist train: error: --out {digits / 'pseudolabels'} holds the results of `zmdist pseudolabel`")
    assert json.loads((digits / "pseudolabels" / "summary.json").read_text())["stage"] == "pseudolabel"


@pytest.mark.parametrize("stage", ["export", "predict"])
def test_export_and_predict_refuse_another_stages_folder_before_reading_anything(digits, tmp_path, stage):
    """`zmdist export`/`predict` --out at a pseudolabel folder: refused naming the stage, before the (here
    missing) run or model is even read, and the folder left as it was. Kills: an export or predict writing
    its summary.json over a pseudolabel run's."""
    from zmdist.stages import export, predict

    folder = tmp_path / "pl"
    shutil.copytree(digits / "pseudolabels", folder)
    before = _files(folder)
    module, options = ((export, [f"run={tmp_path / 'no-run'}"]) if stage == "export" else
                       (predict, [f"model={tmp_path / 'no-model'}", f"shards={digits / 'shards'}"]))
    with pytest.raises(ValueError, match=rf"--out {folder} holds the results of `zmdist pseudolabel`"):
        module.run(load_config(module.Config, None, options), folder)
    assert _files(folder) == before
