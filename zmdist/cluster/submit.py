"""``zmdist submit [submit options] <stage> [stage args...]``: run any stage on SLURM (or locally) via submitit.

    zmdist submit --cluster slurm --nodes 2 --tasks-per-node 4 --gpus-per-node 4 --partition gpu \\
        --time 12:00:00 --out runs/emb-job embed --shards /data/shards --out /data/emb teacher.model=ViT-L-14 \\
        teacher.pretrained=laion2b_s32b_b82k
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
option through (``--slurm-mail-type END`` -> ``#SBATCH --mail-type=END``). ``--dry-run`` prints the sbatch
options zmdist passes for the job (submitit adds its own defaults and srun line when it writes the real
script). submitit's logs and pickles go to ``OUT/submitit/``; ``OUT/jobs.json`` lists the jobs. By default
the command waits for the jobs and prints each task's result, or the remote traceback of a failed task
(exit status 1); ``--timeout S`` bounds the wait (exit status 3), ``--no-wait`` returns after submitting.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from zmdist.cluster import jobs as jobs_db
from zmdist.cluster.report import PROG, job_record, report, wait_for
from zmdist.cluster.slurm import SubmitError, choose_cluster, dry_run_script, make_executor
from zmdist.cluster.task import StageTask
from zmdist.stages import UnknownStageError, parse_stage_args

__all__ = ["PROG", "SubmitError", "CONFIG_KEYS", "DEFAULTS", "build_parser", "main", "resolve_options",
           "split_argv", "submit"]

# Every submit option that --submit-config may set too: (flag, argparse keywords). The option's key in
# the YAML file and in the resolved options is its dest (the flag without "--", "-" -> "_").
OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--out", dict(type=Path, help="submission folder: jobs.json and submitit/ logs (default: the stage's --out)")),
    ("--cluster", dict(choices=["auto", "slurm", "local"], help="slurm, local (submitit's LocalExecutor, for a "
                       "laptop) or auto: slurm when sbatch is found [default: auto]")),
    ("--nodes", dict(type=int, help="nodes per job [1]")),
    ("--tasks-per-node", dict(type=int, help="tasks per node, one per GPU [1]")),
    ("--array", dict(type=int, help="N: submit a job array of N independent tasks (embed, pseudolabel)")),
    ("--array-parallelism", dict(type=int, help="at most this many array tasks at once")),
    ("--gpus-per-node", dict(type=int)),
    ("--cpus-per-task", dict(type=int)),
    ("--mem", dict(help="memory per node, SLURM syntax (e.g. 64G)")),
    ("--time", dict(help="time limit: minutes, HH:MM:SS or D-HH:MM:SS [60]")),
    ("--partition", {}),
    ("--account", {}),
    ("--qos", {}),
    ("--constraint", {}),
    ("--exclude", dict(help="nodes not to use")),
    ("--nodelist", dict(help="nodes to use")),
    ("--comment", {}),
    ("--job-name", dict(help="[zmdist-STAGE]")),
    ("--signal-delay", dict(type=int, help="seconds before the time limit at which the job is signalled (SIGUSR2) "
                            "to requeue itself [120]")),
    ("--max-requeues", dict(type=int, help="timeouts after which the job is not requeued [3]")),
    ("--setup", dict(action="append", help="shell line run before the job (e.g. 'module load cuda'); repeatable")),
    ("--dry-run", dict(action="store_true", default=None,
                       help="print the sbatch options zmdist would pass for the job and exit")),
    ("--no-wait", dict(dest="wait", action="store_false", default=None,
                       help="return after submitting (default: wait for the jobs and report their results)")),
    ("--wait", dict(dest="wait", action="store_true", default=None, help=argparse.SUPPRESS)),
    ("--timeout", dict(type=float, help="seconds to wait for the jobs before giving up (exit 3)")),
)


def _dest(flag: str, kwargs: dict[str, Any]) -> str:
    return kwargs.get("dest") or flag[2:].replace("-", "_")


# Keys --submit-config accepts: every option above, plus `slurm:` (a mapping of extra sbatch options).
CONFIG_KEYS = frozenset(_dest(flag, kw) for flag, kw in OPTIONS) | {"slurm"}
# Options that take no value (everything else starting with -- takes one, or is written --opt=value).
_FLAGS = {flag for flag, kw in OPTIONS if kw.get("action") in ("store_true", "store_false")} | {
    "-h", "--help", "--exclusive"}

DEFAULTS: dict[str, Any] = {
    "cluster": "auto", "nodes": 1, "tasks_per_node": 1, "time": "60", "signal_delay": 120,
    "max_requeues": 3, "wait": True, "setup": None, "slurm": {},
}


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


def pop_slurm_passthrough(opts: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take ``--slurm-KEY VALUE`` / ``--slurm-KEY=VALUE`` out of ``opts``: (the rest, {sbatch key: value})."""
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
    p.add_argument("--submit-config", metavar="FILE.yaml", help="submit options from YAML (flags win)")
    for flag, kwargs in OPTIONS:
        p.add_argument(flag, **kwargs)
    # documentation only: --slurm-KEY VALUE is taken out of argv before parsing (pop_slurm_passthrough)
    p.add_argument("--slurm-KEY", metavar="VALUE", dest="slurm_passthrough_doc",
                   help="any other sbatch option, passed through (--slurm-mail-type END)")
    return p


def resolve_options(opts: list[str]) -> dict[str, Any]:
    """Defaults < --submit-config < flags, as one dict keyed like the long options with ``_``."""
    opts, passthrough = pop_slurm_passthrough(opts)
    ns = build_parser().parse_args(opts)
    merged = dict(DEFAULTS)
    if ns.submit_config:
        data = yaml.safe_load(Path(ns.submit_config).read_text()) or {}
        if not isinstance(data, dict):
            raise SubmitError(f"{ns.submit_config}: expected a mapping of submit options")
        for key, value in data.items():
            key = str(key).replace("-", "_")
            if key not in CONFIG_KEYS:
                raise SubmitError(f"{ns.submit_config}: unknown submit option {key!r}")
            if key == "slurm":
                merged["slurm"] = {str(k).replace("_", "-"): v for k, v in (value or {}).items()}
            else:
                merged[key] = value
    for key, value in vars(ns).items():
        if value is not None and key not in ("submit_config", "slurm_passthrough_doc"):
            merged[key] = value
    merged["slurm"] = {**merged["slurm"], **passthrough}
    return merged


def submit(options: dict[str, Any], stage: str, stage_argv: list[str]) -> int:
    # Fail here, not on the cluster, on an unknown stage or a config error; this also finds the stage's --out.
    try:
        _, cfg, stage_out, _ = parse_stage_args(stage, stage_argv)
    except UnknownStageError as err:
        raise SubmitError(str(err)) from None
    out = Path(options.get("out") or stage_out).resolve()
    folder = out / "submitit"
    cluster = choose_cluster(options)
    array = options.get("array")
    if array is not None and array < 1:
        raise SubmitError("--array needs N >= 1")
    if array and (int(options["nodes"]) > 1 or int(options["tasks_per_node"]) > 1):
        raise SubmitError("--array runs one process per task: leave --nodes/--tasks-per-node at 1")
    if array and not hasattr(cfg, "num_tasks"):
        # tasks of an array split a stage's work only where the stage takes task_index/num_tasks; for any
        # other stage N tasks would run N identical copies into one --out folder
        raise SubmitError(f"--array {array}: `zmdist {stage}` does not split its work between array tasks (the "
                          "stages that do: embed, pseudolabel, predict, al-sim); submit it as one job, with "
                          "--nodes/--tasks-per-node for a distributed run")
    from zmdist.stages.common import TeacherConfig  # torch: not at import (`zmdist submit --status` stays quick)
    from zmdist.teacher.loading import check_teacher_weights

    if isinstance(getattr(cfg, "teacher", None), TeacherConfig):  # a random teacher: refused here, not in every task
        check_teacher_weights(cfg.teacher.model, cfg.teacher.pretrained)
    if options.get("dry_run"):
        print(dry_run_script(options, stage, folder), end="")
        print(f"# then each task runs: zmdist {shlex.join([stage, *stage_argv])}")
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    executor = make_executor(cluster, options, stage, folder)
    task = StageTask(stage, stage_argv)
    tasks = int(options["nodes"]) * int(options["tasks_per_node"])
    if array:
        submitted = executor.map_array(task, list(range(array)), [array] * array)
        records = [job_record(j, stage, stage_argv, cluster, 1, (i, array)) for i, j in enumerate(submitted)]
    else:
        submitted = [executor.submit(task)]
        records = [job_record(submitted[0], stage, stage_argv, cluster, tasks, None)]
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
    from zmdist.config import ConfigError

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
    except ConfigError as err:  # named without a traceback
        print(f"{PROG}: config error for {stage}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
