"""Launching without a cluster: accelerate on CPU, launch configs, `zmdist submit` parsing, --dry-run,
and `zmdist submit --cluster local` (submitit's LocalExecutor) for arrays, multi-task jobs and failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from zmdist.cluster import jobs as jobs_db
from zmdist.cluster import report, slurm, submit, task
from zmdist.cluster.rendezvous import expand_hostlist, port_for_job, rendezvous_from_slurm

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ["teacher.model=zmdist-micro-vit", "teacher.pretrained=random", "num_workers=0", "progress=false"]


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in list(env):
        if var.startswith(("SLURM_", "SUBMITIT_", "ZMDIST_TASK", "ZMDIST_NUM")) or var in (
                "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(var)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(*cmd: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, env=clean_env(), timeout=timeout, cwd=ROOT)


def zmdist(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "zmdist", *args, timeout=timeout)


def embedded_keys(folder: Path) -> list[str]:
    keys = []
    for f in sorted(folder.glob("*.npz")):
        with np.load(f, allow_pickle=False) as z:
            keys += z["keys"].tolist()
    return keys


# --- rendezvous from SLURM ------------------------------------------------------------------------

@pytest.mark.parametrize("nodelist, hosts", [
    ("n1", ["n1"]),
    ("n[1-2]", ["n1", "n2"]),
    ("gpu[01-03,07],cpu5", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]),
    ("rack[1-2]-n[8-9]", ["rack1-n8", "rack1-n9", "rack2-n8", "rack2-n9"]),
    ("a-b[009-011]", ["a-b009", "a-b010", "a-b011"]),
])
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


def test_expand_hostlist_rejects_garbage():
    with pytest.raises(ValueError):
        expand_hostlist("n[1-2")


def test_rendezvous_from_slurm_env():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123457",
           "SLURM_JOB_NODELIST": "gpu[10-13]", "MASTER_ADDR": "stale-from-submitting-shell"}
    rdv = rendezvous_from_slurm(env)
    assert rdv["RANK"] == "3" and rdv["WORLD_SIZE"] == "8" and rdv["LOCAL_RANK"] == "1"
    assert rdv["MASTER_ADDR"] == "gpu10"
    assert rdv["MASTER_PORT"] == str(20000 + 123457 % 20000) == str(port_for_job("123457_2"))
    assert rendezvous_from_slurm({}) == {}
    assert rendezvous_from_slurm(env | {"ZMDIST_MASTER_PORT": "29999"})["MASTER_PORT"] == "29999"


# --- submit options -------------------------------------------------------------------------------

def test_split_argv_finds_the_stage_after_valued_options():
    opts, stage, rest = submit.split_argv(["--nodes", "2", "--slurm-mail-type", "END", "--dry-run", "--time=5",
                                           "embed", "--shards", "S", "--out", "E", "teacher.model=x"])
    assert opts == ["--nodes", "2", "--slurm-mail-type", "END", "--dry-run", "--time=5"]
    assert stage == "embed" and rest == ["--shards", "S", "--out", "E", "teacher.model=x"]


def test_options_file_then_flags_then_passthrough(tmp_path):
    cfg = tmp_path / "submit.yaml"
    cfg.write_text(yaml.safe_dump({"partition": "gpu", "nodes": 4, "time": "2:00:00",
                                   "slurm": {"mail_type": "END", "exclusive": True}}))
    opts = submit.resolve_options(["--submit-config", str(cfg), "--nodes", "2", "--slurm-reservation", "r1"])
    assert opts["partition"] == "gpu" and opts["nodes"] == 2 and opts["time"] == "2:00:00"
    assert opts["slurm"] == {"mail-type": "END", "exclusive": True, "reservation": "r1"}
    params = slurm.slurm_parameters(opts, "embed")
    assert params["time"] == 120 and params["additional_parameters"]["reservation"] == "r1"
    bad = tmp_path / "bad.yaml"
    bad.write_text("partiton: gpu\n")
    with pytest.raises(submit.SubmitError, match="partiton"):
        submit.resolve_options(["--submit-config", str(bad)])


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30:00", 90), ("2-00:00:00", 2880), ("0:0:30", 1),
                                           ("10:30", 11)])
def test_time_limits(text, minutes):
    assert slurm.time_minutes(text) == minutes


def test_dry_run_prints_the_sbatch_script(tmp_path):
    proc = zmdist("submit", "--cluster", "slurm", "--dry-run", "--nodes", "2", "--tasks-per-node", "4",
                  "--gpus-per-node", "4", "--cpus-per-task", "8", "--mem", "64G", "--time", "1:30:00",
                  "--partition", "gpu", "--account", "proj", "--qos", "high", "--constraint", "a100",
                  "--signal-delay", "300", "--slurm-mail-type", "END", "--out", str(tmp_path / "job"),
                  "embed", "--shards", str(tmp_path / "s"), "--out", str(tmp_path / "e"), *TEACHER)
    assert proc.returncode == 0, proc.stderr
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64G", "#SBATCH --time=90", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj", "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                 "#SBATCH --signal=USR2@300", "#SBATCH --mail-type=END", "#SBATCH --job-name=zmdist-embed",
                 f"#SBATCH --output={tmp_path / 'job' / 'submitit'}/%j_0_log.out"):
        assert line in proc.stdout.splitlines(), (line, proc.stdout)
    assert "srun --unbuffered" in proc.stdout and "at most 3 times" in proc.stdout
    assert f"# then each task runs: zmdist embed --shards {tmp_path / 's'}" in proc.stdout
    assert not (tmp_path / "job").exists()  # nothing submitted, nothing written

    arr = zmdist("submit", "--cluster", "slurm", "--dry-run", "--array", "4", "--array-parallelism", "2",
                 "embed", "--shards", "S", "--out", str(tmp_path / "e"), *TEACHER)
    assert arr.returncode == 0, arr.stderr
    assert "#SBATCH --array=0-3%2" in arr.stdout.splitlines()


# What submitit 1.5.4's own sbatch script held for these options before --dry-run rendered them itself
# (captured from submitit.slurm.slurm._make_sbatch_string), less the two lines submitit adds on its own
# (--open-mode=append, --wckey=submitit).
FULL_OPTIONS = ["--cluster", "slurm", "--dry-run", "--nodes", "2", "--tasks-per-node", "4", "--gpus-per-node", "4",
                "--cpus-per-task", "8", "--mem", "64G", "--time", "1:30:00", "--partition", "gpu", "--account", "proj",
                "--qos", "high", "--constraint", "a100", "--signal-delay", "300", "--exclude", "n3",
                "--nodelist", "n[1-2]", "--comment", "hi there", "--job-name", "myjob", "--setup", "module load cuda",
                "--setup", "echo x", "--slurm-mail-type", "END", "--slurm-exclusive", "true"]
FULL_SBATCH = """\
#SBATCH --account=proj
#SBATCH --comment='hi there'
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=8
#SBATCH --error=/x/submitit/%j_0_log.err
#SBATCH --exclude=n3
#SBATCH --exclusive=true
#SBATCH --gpus-per-node=4
#SBATCH --job-name=myjob
#SBATCH --mail-type=END
#SBATCH --mem=64G
#SBATCH --nodelist='n[1-2]'
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --output=/x/submitit/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --signal=USR2@300
#SBATCH --time=90""".splitlines()
ARRAY_SBATCH = """\
#SBATCH --array=0-2%3
#SBATCH --error=/x/submitit/%A_%a_0_log.err
#SBATCH --job-name=zmdist-embed
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --output=/x/submitit/%A_%a_0_log.out
#SBATCH --signal=USR2@120
#SBATCH --time=60""".splitlines()


def test_dry_run_sbatch_lines_match_what_submitit_wrote():
    """Catches the self-rendered --dry-run drifting from the options submitit really received: a dropped or
    renamed option (nodes, ntasks-per-node, gpus, partition, time, signal, passthrough), wrong quoting or
    log paths, the array range/parallelism, the setup lines, or the requeue note."""
    script = slurm.dry_run_script(submit.resolve_options(FULL_OPTIONS), "embed", Path("/x/submitit"))
    assert [line for line in script.splitlines() if line.startswith("#SBATCH")] == FULL_SBATCH
    lines = script.splitlines()
    assert lines[lines.index("# setup") + 1:lines.index("# setup") + 3] == ["module load cuda", "echo x"]
    assert "# requeue: on SIGUSR2 (300 s before the time limit, or on preemption)" in script
    assert "at most 3 times" in script and "starts 8 task(s)" in script
    array = slurm.dry_run_script(submit.resolve_options(["--array", "3", "--max-requeues", "5"]), "embed",
                                 Path("/x/submitit"))
    assert [line for line in array.splitlines() if line.startswith("#SBATCH")] == ARRAY_SBATCH
    assert "at most 5 times" in array
    big = slurm.dry_run_script(submit.resolve_options(["--array", "300"]), "embed", Path("/x/submitit"))
    assert "#SBATCH --array=0-299%256" in big.splitlines()  # submitit's cap unless --array-parallelism


def test_submit_config_keys_are_the_declared_options(tmp_path):
    """Catches --submit-config accepting keys no flag declares (or rejecting declared ones such as
    tasks-per-node written with a dash), now that the list no longer comes from argparse internals."""
    assert {"nodes", "tasks_per_node", "array_parallelism", "signal_delay", "wait", "dry_run", "slurm"} <= submit.CONFIG_KEYS
    assert not {"status", "submit_config", "help"} & submit.CONFIG_KEYS
    good = tmp_path / "good.yaml"
    good.write_text("tasks-per-node: 4\nwait: false\ndry_run: true\n")
    opts = submit.resolve_options(["--submit-config", str(good)])
    assert opts["tasks_per_node"] == 4 and opts["wait"] is False and opts["dry_run"] is True
    assert submit.resolve_options(["--submit-config", str(good), "--wait"])["wait"] is True  # flags win
    bad = tmp_path / "bad.yaml"
    bad.write_text("status: x\n")
    with pytest.raises(submit.SubmitError, match="unknown submit option 'status'"):
        submit.resolve_options(["--submit-config", str(bad)])
    with pytest.raises(submit.SubmitError, match="cannot read time limit"):
        slurm.time_minutes("1h")


class _FakeTask:
    def __init__(self, folder: Path, name: str):
        self.paths = type("P", (), {"result_pickle": folder / f"{name}_result.pkl"})()


class _FakeJob:
    """Just submitit's public per-task view: num_tasks, task(i), done()."""

    def __init__(self, folder: Path, n: int):
        self.job_id, self.num_tasks, self._tasks = "7", n, [_FakeTask(folder, f"7_{i}") for i in range(n)]

    def task(self, i: int):
        return self._tasks[i]

    def done(self) -> bool:
        return False


def test_a_job_is_done_only_when_every_task_has_a_result(tmp_path):
    """Catches a multi-task job being reported done when only task 0 wrote its result (it would be read
    while rank 1 still runs)."""
    job = _FakeJob(tmp_path, 2)
    assert report.final_state(job, "local") is None
    job.task(0).paths.result_pickle.write_bytes(b"x")
    assert report.final_state(job, "local") is None
    job.task(1).paths.result_pickle.write_bytes(b"x")
    assert report.final_state(job, "local") == "DONE"


def test_submit_refuses_bad_input_before_submitting(tmp_path):
    bad_key = zmdist("submit", "--cluster", "local", "embed", "--shards", "S", "--out", str(tmp_path), "teacher.modl=x")
    assert bad_key.returncode == 2 and "teacher.modl" in bad_key.stderr
    assert zmdist("submit", "--cluster", "local", "nosuchstage").returncode == 2
    random_teacher = zmdist("submit", "--cluster", "local", "embed", "--shards", "S", "--out", str(tmp_path / "e"),
                            "teacher.model=zmdist-micro-vit")  # no teacher.pretrained: refused before submitting
    assert random_teacher.returncode == 2 and "teacher.pretrained is empty" in random_teacher.stderr
    assert not (tmp_path / "e").exists()
    assert zmdist("submit", "--cluster", "local", "--nodes", "2", "embed", "--shards", "S", "--out",
                  str(tmp_path)).returncode == 2
    train_array = zmdist("submit", "--cluster", "local", "--array", "4", "train", "--out", str(tmp_path / "t"),
                         "shards=S")  # four identical trainings into one folder: refused, nothing submitted
    assert train_array.returncode == 2 and "does not split its work between array tasks" in train_array.stderr
    assert not (tmp_path / "t").exists()
    helps = zmdist("submit", "--help")
    assert helps.returncode == 0 and "--tasks-per-node" in helps.stdout and "--slurm-KEY" in helps.stdout
    assert "zmdist submit" in zmdist("--help").stdout


def test_requeue_adds_resume_auto_only_for_stages_that_resume(monkeypatch):
    job = task.StageTask("embed", ["--shards", "S", "--out", "E"])
    delayed = job.checkpoint(1, 4)
    assert delayed.function.argv == job.argv and delayed.args == (1, 4)
    monkeypatch.setattr(task, "stage_option_names", lambda stage: {"resume", "out"})
    again = job.checkpoint()
    assert again.function.argv == ["--shards", "S", "--out", "E", "--resume", "auto"]
    assert again.function.checkpoint().function.argv == again.function.argv  # no pile-up over requeues
    assert task.resume_argv("train", ["x", "resume=never", "--resume", "never"]) == ["x", "--resume", "auto"]
    assert isinstance(job, __import__("submitit").helpers.Checkpointable)


# --- launch configs -------------------------------------------------------------------------------

def test_launch_configs_are_valid():
    for name in ("single", "multi-gpu", "multi-node", "cpu-2proc"):
        cfg = yaml.safe_load((ROOT / "launch" / f"{name}.yaml").read_text())
        assert cfg["compute_environment"] == "LOCAL_MACHINE" and cfg["num_processes"] >= 1
    cpu = yaml.safe_load((ROOT / "launch" / "cpu-2proc.yaml").read_text())
    assert cpu["distributed_type"] == "MULTI_GPU" and cpu["use_cpu"] is True and cpu["num_processes"] == 2
    for stage in (1, 2, 3):
        ds = json.loads((ROOT / "launch" / "deepspeed" / f"zero{stage}.json").read_text())
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"] is True
        assert isinstance(ds["train_micro_batch_size_per_gpu"], int)  # a placeholder, never "auto"
        assert "auto" not in json.dumps(ds)


def test_accelerate_launch_cpu_config_gives_world_size_two(make_shards, tmp_path):
    shards, keys = make_shards([12, 12, 12, 12])
    out = tmp_path / "emb"
    proc = run(str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(ROOT / "launch" / "cpu-2proc.yaml"), "--main_process_port", "29531", "-m", "zmdist", "embed",
               "--shards", str(shards), "--out", str(out), *TEACHER, "batch_size=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2, "accelerate started independent processes, not one process group"
    assert all(w["shards_written"] == 2 for w in summary["per_worker"])
    assert "rank 1/2" in proc.stderr and "backend gloo" in proc.stderr
    got = embedded_keys(out)
    assert sorted(got) == sorted(keys) and len(got) == len(set(got))


# --- zmdist submit --cluster local ------------------------------------------------------------------

def test_local_array_embeds_every_key_once_and_rerun_skips(make_shards, tmp_path):
    shards, keys = make_shards([10, 10, 10, 10])
    emb, job = tmp_path / "emb", tmp_path / "job"
    args = ["submit", "--cluster", "local", "--array", "2", "--timeout", "200", "--out", str(job),
            "embed", "--shards", str(shards), "--out", str(emb), *TEACHER]
    proc = zmdist(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = embedded_keys(emb)
    assert sorted(got) == sorted(keys) and len(got) == len(set(got))
    parts = [json.loads((emb / f"summary.task-{i}-of-2.json").read_text()) for i in range(2)]
    assert [p["task_index"] for p in parts] == [0, 1] and sum(p["shards_written"] for p in parts) == 4
    assert json.loads((emb / "summary.json").read_text())["complete"]
    recorded = jobs_db.load(job)
    assert len(recorded) == 2 and [r["array_task"] for r in recorded] == [0, 1]
    status = zmdist("submit", "--status", str(job))
    assert status.returncode == 0 and status.stdout.count("COMPLETED") == 2, status.stdout
    assert (job / "submitit").is_dir() and list((job / "submitit").glob("*_0_log.out"))

    rerun = zmdist(*args)  # rerunning the array: every shard already done
    assert rerun.returncode == 0, rerun.stderr
    parts = [json.loads((emb / f"summary.task-{i}-of-2.json").read_text()) for i in range(2)]
    assert [(p["shards_written"], p["shards_skipped_done"]) for p in parts] == [(0, 2), (0, 2)]
    assert len(jobs_db.load(job)) == 4


def test_local_two_task_job_is_one_process_group(make_shards, tmp_path):
    shards, keys = make_shards([8, 8, 8, 8])
    proc = zmdist("submit", "--cluster", "local", "--tasks-per-node", "2", "--timeout", "200",
                  "--out", str(tmp_path / "job"), "embed", "--shards", str(shards), "--out", str(tmp_path / "emb"),
                  *TEACHER)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "emb" / "summary.json").read_text())
    assert summary["world_size"] == 2 and sorted(w["worker"] for w in summary["per_worker"]) == [0, 1]
    assert "rank 0/2" in proc.stdout and "rank 1/2" in proc.stdout
    assert sorted(embedded_keys(tmp_path / "emb")) == sorted(keys)


def test_local_failing_task_reports_the_remote_traceback(tmp_path):
    proc = zmdist("submit", "--cluster", "local", "--timeout", "120", "--out", str(tmp_path / "job"),
                  "embed", "--shards", str(tmp_path / "no-such-shards"), "--out", str(tmp_path / "emb"), *TEACHER,
                  timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stderr and "Traceback" in proc.stderr
    assert "no manifest.json" in proc.stderr and "embed.py" in proc.stderr
    assert "_log.err" in proc.stderr  # where the logs are
    assert jobs_db.load(tmp_path / "job")[0]["state"] == "FAILED"


def test_sbatch_examples_write_their_logs_where_sbatch_runs():
    """SLURM opens --output/--error before the script runs and creates no folder: a log path inside a
    folder (``logs/%x.out``) that does not exist kills the job without a log. Kills: the examples' old
    ``logs/`` prefix."""
    for script in sorted((ROOT / "slurm").glob("*.sbatch")):
        for line in script.read_text().splitlines():
            if line.startswith(("#SBATCH --output=", "#SBATCH --error=")):
                assert "/" not in line.split("=", 1)[1], f"{script.name}: {line}"
