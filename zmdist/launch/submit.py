"""``zmdist submit [submit options] <stage> [stage args...]``: run any stage on SLURM (or locally) via submitit.

    zmdist submit --cluster slurm --nodes 2 --tasks-per-node 4 --gpus-per-node 4 --partition gpu \\
        --time 12:00:00 --out runs/emb-job embed --shards /data/shards --out /data/emb teacher.model=ViT-L-14
    zmdist submit --array 8 --out runs/emb-array embed --shards /data/shards --out /data/emb ...
    zmdist submit --status runs/emb-job

Shapes of job:
  * one job of ``--nodes`` x ``--tasks-per-node`` tasks (one task per GPU): every task joins one process
    group; RANK/WORLD_SIZE/LOCAL_RANK come from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, MASTER_ADDR is
    the first host of the job's node list and MASTER_PORT = 20000 + job_id % 20000;
  * ``--array N``: N independent jobs for the embarrassingly parallel stages (embed, pseudolabel); task i
    of N takes its share of the shards (passed explicitly as ZMDIST_TASK_INDEX/ZMDIST_NUM_TASKS).

What is pickled for the job is only the stage name and its argv: every resume state lives on disk. On
a timeout or preemption signal (SIGUSR2, ``--signal-delay`` seconds before the time limit) the job
requeues itself and the requeued run resumes from disk (embed skips finished shards; a stage whose
config has a ``resume`` field is requeued with ``resume=auto``). submitit checkpoints on global rank 0
only; stages save their own progress on every rank.

Options come from ``--submit-config FILE.yaml`` (keys as the long options with ``_``, plus ``slurm:``, a
mapping of extra sbatch options) and from flags (flags win); ``--slurm-KEY VALUE`` passes any other sbatch
option through (``--slurm-mail-type END`` -> ``#SBATCH --mail-type=END``). submitit's logs and pickles go
to ``OUT/submitit/``; ``OUT/jobs.json`` lists the jobs. By default the command waits for the jobs and
prints each task's result, or the remote traceback of a failed task (exit status 1); ``--timeout S``
bounds the wait (exit status 3), ``--no-wait`` returns after submitting.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from zmdist.launch import jobs as jobs_db
from zmdist.launch.slurm_env import port_for_job, rendezvous_from_slurm

PROG = "zmdist submit"
# Options that take no value (everything else starting with -- takes one, or is written --opt=value).
_FLAGS = {"--dry-run", "--no-wait", "--wait", "-h", "--help", "--exclusive"}
# submit option name -> submitit SlurmExecutor parameter
_SLURM_KEYS = {
    "partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
    "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task", "mem": "mem",
    "job_name": "job_name", "signal_delay": "signal_delay_s", "array_parallelism": "array_parallelism",
    "exclude": "exclude", "nodelist": "nodelist", "comment": "comment",
}


class SubmitError(Exception):
    """A problem with the submission itself (bad option, no cluster): reported without a traceback."""


# --------------------------------------------------------------------------------------------------
# The job: what runs on the cluster


def _stage_config_fields(stage: str) -> set[str]:
    module = importlib.import_module(f"zmdist.stages.{stage}")
    return {f.name for f in dataclasses.fields(module.Config)}


def _parse_stage_args(stage: str, argv: list[str]) -> tuple[Any, Any, Path]:
    """(stage module, resolved config, out folder) exactly as ``zmdist <stage> argv...`` would build them."""
    from zmdist import cli
    from zmdist.config import load_config

    args = cli.build_parser().parse_args([stage, *argv])
    module = importlib.import_module(f"zmdist.stages.{stage}")
    flags = [f"{k[4:]}={v}" for k, v in vars(args).items() if k.startswith("opt:") and v is not None]
    cfg = load_config(module.Config, args.config, flags + list(args.overrides))
    return module, cfg, Path(args.out)


def _job_environment() -> tuple[str, dict[str, str]]:
    """(cluster kind, torch.distributed variables) for the task we are running in."""
    import submitit

    env = submitit.JobEnvironment()
    if env.cluster == "slurm":
        return "slurm", rendezvous_from_slurm()
    # local executor (or debug): every task on this machine
    return env.cluster, {
        "RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks), "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(env.num_tasks), "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port_for_job(env.job_id)),
    }


def _resume_argv(stage: str, argv: list[str]) -> list[str]:
    """``argv`` for a requeued run: plus ``--resume auto`` when the stage's config has a ``resume`` field.

    Given as a flag, not a ``key=value`` override, so it parses wherever the user's options ended (a
    ``key=value`` after ``--out DIR`` would not); it overrides any earlier ``--resume``. A ``resume=never``
    override is dropped, since key=value overrides win over flags."""
    if "resume" not in _stage_config_fields(stage):
        return list(argv)
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg == "--resume":
            skip_value = True
        elif not arg.startswith(("resume=", "--resume=")):
            kept.append(arg)
    return [*kept, "--resume", "auto"]


try:
    from submitit.helpers import Checkpointable as _Checkpointable, DelayedSubmission as _Delayed
except ImportError:  # pragma: no cover - submitit is a dependency; keep `zmdist --help` working without it
    _Checkpointable, _Delayed = object, None


class StageTask(_Checkpointable):
    """The pickled callable: a stage name and its argv, nothing else.

    Called in every task of the job: sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (and the
    array position) in the environment, then runs the stage in-process; returns where it ran and the
    stage's result. On submitit's timeout/preemption signal, ``checkpoint`` requeues the same stage.
    """

    def __init__(self, stage: str, argv: list[str]):
        self.stage = stage
        self.argv = list(argv)

    def __call__(self, task_index: int | None = None, num_tasks: int | None = None) -> dict[str, Any]:
        from zmdist import cli, dist

        cluster, rdv = _job_environment()
        os.environ.update(rdv)
        # The array position is explicit (the local executor has no SLURM_ARRAY_* variables); a job that is
        # not an array is task 0 of 1, whatever the submitting shell exported.
        os.environ["ZMDIST_TASK_INDEX"] = str(task_index if task_index is not None else 0)
        os.environ["ZMDIST_NUM_TASKS"] = str(num_tasks if num_tasks is not None else 1)
        cli._setup_logging(False)
        module, cfg, out = _parse_stage_args(self.stage, self.argv)
        try:
            result = module.run(cfg, out)
        finally:
            dist.shutdown()
        return {
            "stage": self.stage,
            "cluster": cluster,
            "hostname": socket.gethostname(),
            "node": os.environ.get("SLURMD_NODENAME", socket.gethostname()),
            "job_id": os.environ.get("SLURM_JOB_ID", os.environ.get("SUBMITIT_LOCAL_JOB_ID", "")),
            "rank": int(rdv.get("RANK", 0)),
            "world_size": int(rdv.get("WORLD_SIZE", 1)),
            "local_rank": int(rdv.get("LOCAL_RANK", 0)),
            "master": f"{rdv.get('MASTER_ADDR', '')}:{rdv.get('MASTER_PORT', '')}",
            "task_index": int(os.environ["ZMDIST_TASK_INDEX"]),
            "num_tasks": int(os.environ["ZMDIST_NUM_TASKS"]),
            "out": str(out),
            "result": result,
        }

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Requeue the same stage (rank 0 only, called by submitit); it resumes from what is on disk."""
        return _Delayed(StageTask(self.stage, _resume_argv(self.stage, self.argv)), *args, **kwargs)

    def __repr__(self) -> str:
        return f"StageTask({self.stage!r}, {self.argv!r})"


# --------------------------------------------------------------------------------------------------
# Command line


def split_argv(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(submit options, stage, stage argv): the stage is the first bare word not consumed by an option."""
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("-"):
            i += 1 if (tok in _FLAGS or "=" in tok) else 2
            continue
        return argv[:i], tok, argv[i + 1:]
    return argv, None, []


def _pop_slurm_passthrough(opts: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take ``--slurm-KEY VALUE`` / ``--slurm-KEY=VALUE`` out of ``opts``."""
    rest, extra, i = [], {}, 0
    while i < len(opts):
        tok = opts[i]
        if tok.startswith("--slurm-"):
            key, eq, value = tok[len("--slurm-"):].partition("=")
            if not eq:
                if i + 1 >= len(opts):
                    raise SubmitError(f"{tok} needs a value")
                value = opts[i + 1]
                i += 1
            extra[key.replace("_", "-")] = value
        else:
            rest.append(tok)
        i += 1
    return rest, extra


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} [options] STAGE [stage args...]", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--status", metavar="OUT", type=Path, help="show the jobs submitted with --out OUT and exit")
    p.add_argument("--out", type=Path, help="submission folder: jobs.json and submitit/ logs "
                   "(default: the stage's --out)")
    p.add_argument("--submit-config", metavar="FILE.yaml", help="submit options from YAML (flags win)")
    p.add_argument("--cluster", choices=["auto", "slurm", "local"], help="slurm, local (submitit's "
                   "LocalExecutor, for a laptop) or auto: slurm when sbatch is found [default: auto]")
    p.add_argument("--nodes", type=int, help="nodes per job [1]")
    p.add_argument("--tasks-per-node", type=int, help="tasks per node, one per GPU [1]")
    p.add_argument("--array", type=int, help="N: submit a job array of N independent tasks (embed, pseudolabel)")
    p.add_argument("--array-parallelism", type=int, help="at most this many array tasks at once")
    p.add_argument("--gpus-per-node", type=int)
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--mem", help="memory per node, SLURM syntax (e.g. 64G)")
    p.add_argument("--time", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS [60]")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--exclude", help="nodes not to use")
    p.add_argument("--nodelist", help="nodes to use")
    p.add_argument("--comment")
    p.add_argument("--job-name", help="[zmdist-STAGE]")
    p.add_argument("--signal-delay", type=int, help="seconds before the time limit at which the job is "
                   "signalled (SIGUSR2) to requeue itself [120]")
    p.add_argument("--max-requeues", type=int, help="timeouts after which the job is not requeued [3]")
    p.add_argument("--setup", action="append", help="shell line run before the job (e.g. 'module load cuda'); repeatable")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script that would be submitted and exit")
    p.add_argument("--no-wait", dest="wait", action="store_false", default=None,
                   help="return after submitting (default: wait for the jobs and report their results)")
    p.add_argument("--wait", dest="wait", action="store_true", default=None, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, help="seconds to wait for the jobs before giving up (exit 3)")
    p.add_argument("--slurm-KEY", metavar="VALUE", dest="_slurm_doc",
                   help="any other sbatch option, passed through (--slurm-mail-type END)")
    return p


DEFAULTS: dict[str, Any] = {
    "cluster": "auto", "nodes": 1, "tasks_per_node": 1, "time": "60", "signal_delay": 120,
    "max_requeues": 3, "wait": True, "setup": None, "slurm": {},
}


def _time_minutes(value: Any) -> int:
    """SLURM time syntax (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) -> whole minutes, >= 1."""
    text = str(value).strip()
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(x) for x in text.split(":")] + [0, 0]
        h, m, s = parts[:3]
    else:
        parts = [int(x) for x in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        elif len(parts) == 3:
            h, m, s = parts
        else:
            raise SubmitError(f"cannot read time limit {value!r}")
    return max(1, days * 1440 + h * 60 + m + (1 if s else 0))


def resolve_options(opts: list[str]) -> dict[str, Any]:
    """Defaults < --submit-config < flags, as one dict keyed like the long options with ``_``."""
    opts, passthrough = _pop_slurm_passthrough(opts)
    ns = build_parser().parse_args(opts)
    merged = dict(DEFAULTS)
    if ns.submit_config:
        data = yaml.safe_load(Path(ns.submit_config).read_text()) or {}
        if not isinstance(data, dict):
            raise SubmitError(f"{ns.submit_config}: expected a mapping of submit options")
        known = {a.dest for a in build_parser()._actions} | {"slurm"}
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in known or key in ("status", "submit_config", "_slurm_doc", "help"):
                raise SubmitError(f"{ns.submit_config}: unknown submit option {key!r}")
            if key == "slurm":
                merged["slurm"] = {str(k).replace("_", "-"): v for k, v in (value or {}).items()}
            else:
                merged[key] = value
    for key, value in vars(ns).items():
        if value is not None and key not in ("submit_config", "_slurm_doc"):
            merged[key] = value
    merged["slurm"] = {**merged["slurm"], **passthrough}
    return merged


def _cluster(options: dict[str, Any]) -> str:
    cluster = options["cluster"]
    if cluster == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if cluster == "slurm" and not options.get("dry_run") and shutil.which("sbatch") is None:
        raise SubmitError("--cluster slurm but sbatch is not on PATH (for a test cluster on this machine: "
                          "bash slurm/local-cluster.sh up; or use --cluster local)")
    return cluster


def slurm_parameters(options: dict[str, Any], stage: str) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for these options."""
    params: dict[str, Any] = {
        "nodes": int(options["nodes"]), "ntasks_per_node": int(options["tasks_per_node"]),
        "time": _time_minutes(options["time"]), "job_name": options.get("job_name") or f"zmdist-{stage}",
        "signal_delay_s": int(options["signal_delay"]),
    }
    for key, target in _SLURM_KEYS.items():
        if key not in ("job_name", "signal_delay") and options.get(key) is not None:
            params[target] = options[key]
    if options.get("setup"):
        params["setup"] = list(options["setup"])
    if options.get("slurm"):
        params["additional_parameters"] = {k: v for k, v in options["slurm"].items()}
    return params


def dry_run_script(options: dict[str, Any], stage: str, folder: Path) -> str:
    """The sbatch script submitit would write (without needing srun/sbatch on this machine)."""
    from submitit.slurm import slurm as submitit_slurm

    params = slurm_parameters(options, stage)
    if options.get("array"):
        params["map_count"] = int(options["array"])
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return submitit_slurm._make_sbatch_string(command=command, folder=folder, **params)


def _executor(cluster: str, options: dict[str, Any], stage: str, folder: Path):
    import submitit

    if cluster == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(options["max_requeues"]))
        ex.update_parameters(**slurm_parameters(options, stage))
        return ex
    if int(options["nodes"]) != 1:
        raise SubmitError("--cluster local runs on this machine only: use --nodes 1 (and --tasks-per-node N)")
    ex = submitit.LocalExecutor(folder=folder, max_num_timeout=int(options["max_requeues"]))
    params: dict[str, Any] = {"timeout_min": _time_minutes(options["time"]),
                              "tasks_per_node": int(options["tasks_per_node"]),
                              "signal_delay_s": int(options["signal_delay"])}
    if options.get("gpus_per_node") is not None:
        params["gpus_per_node"] = int(options["gpus_per_node"])
    if options.get("setup"):
        params["setup"] = list(options["setup"])
    ex.update_parameters(**params)
    return ex


def _record(job, stage: str, argv: list[str], cluster: str, tasks: int, array: tuple[int, int] | None) -> dict:
    return {
        "job_id": str(job.job_id), "stage": stage, "argv": argv, "cluster": cluster, "tasks": tasks,
        "array_task": None if array is None else array[0], "array_size": None if array is None else array[1],
        "submitted": time.time(), "folder": str(job.paths.folder), "state": "SUBMITTED",
        "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
    }


def _final_state(job, cluster: str) -> str | None:
    """A terminal state when the job is over (result written, or SLURM/the local process says so)."""
    if all(sub.paths.result_pickle.exists() for sub in (job._sub_jobs or [job])):
        return "DONE"
    if cluster == "slurm":
        state = jobs_db.slurm_state(str(job.job_id))
        if state is None or state.split()[0] in jobs_db.TERMINAL:
            return state or "GONE"
        return None
    return "DONE" if job.done() else None


def wait_for(jobs: list, cluster: str, timeout: float | None, grace_s: float = 20.0) -> list[str]:
    """Wait until every job is over; return the ids still running when ``timeout`` ran out."""
    deadline = None if timeout is None else time.monotonic() + timeout
    over_since: dict[str, float] = {}
    pending = list(jobs)
    while pending:
        still = []
        for job in pending:
            state = _final_state(job, cluster)
            if state == "DONE":
                continue
            if state is not None:  # SLURM says over but no result yet: give the file system a moment
                first = over_since.setdefault(str(job.job_id), time.monotonic())
                if time.monotonic() - first > grace_s:
                    continue
            still.append(job)
        pending = still
        if not pending:
            break
        if deadline is not None and time.monotonic() > deadline:
            return [str(j.job_id) for j in pending]
        time.sleep(0.5)
    return []


def _short(result: Any) -> str:
    text = json.dumps(result, default=str)
    return text if len(text) < 400 else text[:400] + "..."


def report(jobs: list, records: list[dict], out: Path, stage: str) -> int:
    """Print each task's result, or the failure with the remote traceback; 0 when all succeeded."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    failed = 0
    for job, rec in zip(jobs, records):
        try:
            results = job.results()
        except (FailedJobError, UncompletedJobError) as err:
            failed += 1
            jobs_db.update(out, rec["job_id"], state="FAILED")
            print(f"{PROG}: job {job.job_id} ({stage}) FAILED. Remote error and traceback:\n"
                  f"{'-' * 72}\n{err}\n{'-' * 72}\nlogs: {rec['stdout']}\n      {rec['stderr']}", file=sys.stderr)
            continue
        jobs_db.update(out, rec["job_id"], state="COMPLETED")
        for task, res in enumerate(results):
            where = f"{res.get('node')} rank {res.get('rank')}/{res.get('world_size')}" if isinstance(res, dict) else ""
            print(f"job {job.job_id} task {task} ({where}): {_short(res.get('result') if isinstance(res, dict) else res)}")
    return 1 if failed else 0


def submit(options: dict[str, Any], stage: str, stage_argv: list[str]) -> int:
    from zmdist.cli import STAGES

    if stage not in STAGES:
        raise SubmitError(f"unknown stage {stage!r}: choose from {', '.join(STAGES)}")
    # Fail here, not on the cluster, on a config error; this also finds the stage's --out.
    _, _, stage_out = _parse_stage_args(stage, stage_argv)
    out = Path(options.get("out") or stage_out).resolve()
    folder = out / "submitit"
    cluster = _cluster(options)
    array = options.get("array")
    if array is not None and array < 1:
        raise SubmitError("--array needs N >= 1")
    if array and (int(options["nodes"]) > 1 or int(options["tasks_per_node"]) > 1):
        raise SubmitError("--array runs one process per task: leave --nodes/--tasks-per-node at 1")
    if options.get("dry_run"):
        print(dry_run_script(options, stage, folder), end="")
        print(f"# then each task runs: zmdist {shlex.join([stage, *stage_argv])}")
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    executor = _executor(cluster, options, stage, folder)
    task = StageTask(stage, stage_argv)
    tasks = int(options["nodes"]) * int(options["tasks_per_node"])
    if array:
        submitted = executor.map_array(task, list(range(array)), [array] * array)
        records = [_record(j, stage, stage_argv, cluster, 1, (i, array)) for i, j in enumerate(submitted)]
    else:
        submitted = [executor.submit(task)]
        records = [_record(submitted[0], stage, stage_argv, cluster, tasks, None)]
    jobs_db.add(out, records)
    for rec in records:
        print(f"submitted {stage} as {cluster} job {rec['job_id']} ({rec['tasks']} task(s)); logs: {rec['stdout']}")
    if not options["wait"]:
        print(f"follow with: {PROG} --status {out}")
        return 0
    left = wait_for(submitted, cluster, options.get("timeout"))
    if left:
        print(f"{PROG}: timed out after {options['timeout']:g}s waiting for job(s) {', '.join(left)}; they keep "
              f"running (see {PROG} --status {out})", file=sys.stderr)
        return 3
    return report(submitted, records, out, stage)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, stage, stage_argv = split_argv(argv)
    try:
        options = resolve_options(opts)
        if options.get("status") is not None:
            print("\n".join(jobs_db.status_lines(options["status"])))
            return 0
        if stage is None:
            build_parser().print_usage(sys.stderr)
            print(f"{PROG}: error: name the stage to run (e.g. embed)", file=sys.stderr)
            return 2
        return submit(options, stage, stage_argv)
    except SubmitError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # config errors and the like, named without a traceback
        from zmdist.config import ConfigError

        if isinstance(err, ConfigError):
            print(f"{PROG}: config error for {stage}: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
