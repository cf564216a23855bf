"""Submit options -> submitit executor parameters, and the ``--dry-run`` rendering of them.

``slurm_parameters`` turns the resolved ``zmdist submit`` options into ``SlurmExecutor`` parameters;
``make_executor`` builds the SLURM or local executor. ``dry_run_script`` shows, as ``#SBATCH`` lines, the
options zmdist passes for the job (rendered from that same parameter dict, so submitting nothing needs
neither sbatch nor submitit's internals). submitit writes the real script at submission: it adds a few
defaults of its own (``--open-mode=append``, ``--wckey``) and the ``srun`` line that starts the pickled
task; after submitting, the script is ``OUT/submitit/JOBID_submission.sh``.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

# The signal SLURM sends before the time limit (and on preemption): submitit requeues the job on it.
REQUEUE_SIGNAL = "USR2"
# At most this many array tasks at once unless --array-parallelism says otherwise (submitit's own cap).
ARRAY_PARALLELISM = 256
# submit option name -> submitit SlurmExecutor parameter, for the options passed as they are
SLURM_KEYS = {
    "partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
    "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task", "mem": "mem",
    "exclude": "exclude", "nodelist": "nodelist", "comment": "comment",
}


class SubmitError(Exception):
    """A problem with the submission itself (bad option, no cluster): reported without a traceback."""


def time_minutes(value: Any) -> int:
    """SLURM time syntax (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) -> whole minutes, >= 1."""
    text = str(value).strip()
    days = 0
    try:
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
    except ValueError:
        raise SubmitError(f"cannot read time limit {value!r} (minutes, HH:MM:SS or D-HH:MM:SS)") from None
    return max(1, days * 1440 + h * 60 + m + (1 if s else 0))


def choose_cluster(options: dict[str, Any]) -> str:
    """``slurm`` or ``local`` for ``--cluster`` (``auto``: slurm when sbatch is on PATH)."""
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
        "time": time_minutes(options["time"]), "job_name": options.get("job_name") or f"zmdist-{stage}",
        "signal_delay_s": int(options["signal_delay"]),
    }
    for key, target in SLURM_KEYS.items():
        if options.get(key) is not None:
            params[target] = options[key]
    if options.get("array_parallelism") is not None:
        params["array_parallelism"] = int(options["array_parallelism"])
    if options.get("setup"):
        params["setup"] = list(options["setup"])
    if options.get("slurm"):
        params["additional_parameters"] = {k: v for k, v in options["slurm"].items()}
    return params


def local_parameters(options: dict[str, Any]) -> dict[str, Any]:
    """submitit LocalExecutor parameters for these options (one machine: --nodes must be 1)."""
    if int(options["nodes"]) != 1:
        raise SubmitError("--cluster local runs on this machine only: use --nodes 1 (and --tasks-per-node N)")
    params: dict[str, Any] = {"timeout_min": time_minutes(options["time"]),
                              "tasks_per_node": int(options["tasks_per_node"]),
                              "signal_delay_s": int(options["signal_delay"])}
    if options.get("gpus_per_node") is not None:
        params["gpus_per_node"] = int(options["gpus_per_node"])
    if options.get("setup"):
        params["setup"] = list(options["setup"])
    return params


def make_executor(cluster: str, options: dict[str, Any], stage: str, folder: Path):
    """A submitit executor writing its logs and pickles to ``folder``."""
    import submitit

    if cluster == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(options["max_requeues"]))
        ex.update_parameters(**slurm_parameters(options, stage))
        return ex
    params = local_parameters(options)
    ex = submitit.LocalExecutor(folder=folder, max_num_timeout=int(options["max_requeues"]))
    ex.update_parameters(**params)
    return ex


def log_paths(folder: Path, array: bool) -> tuple[str, str]:
    """(stdout, stderr) patterns of task 0 as SLURM expands them (``%j``, or ``%A_%a`` for arrays)."""
    from submitit.core.utils import JobPaths

    paths = JobPaths(folder)
    job = "%A_%a" if array else "%j"
    return (str(paths.stdout).replace("%j", job).replace("%t", "0"),
            str(paths.stderr).replace("%j", job).replace("%t", "0"))


def sbatch_options(options: dict[str, Any], stage: str, folder: Path) -> dict[str, Any]:
    """The sbatch options zmdist passes for this job, keyed by sbatch's long option names."""
    params = slurm_parameters(options, stage)
    array = int(options["array"]) if options.get("array") else None
    stdout, stderr = log_paths(folder, array is not None)
    sbatch: dict[str, Any] = {}
    for key, value in params.items():
        if key in ("setup", "additional_parameters", "signal_delay_s", "array_parallelism"):
            continue
        sbatch[key.replace("_", "-")] = value
    sbatch["signal"] = f"{REQUEUE_SIGNAL}@{params['signal_delay_s']}"
    if array is not None:
        sbatch["array"] = f"0-{array - 1}%{min(array, params.get('array_parallelism', ARRAY_PARALLELISM))}"
    sbatch["output"], sbatch["error"] = stdout, stderr
    sbatch.update((str(k).replace("_", "-"), v) for k, v in params.get("additional_parameters", {}).items())
    return sbatch


def _sbatch_line(key: str, value: Any) -> str:
    if value is True:
        return f"#SBATCH --{key}"
    return f"#SBATCH --{key}={shlex.quote(str(value))}"


def dry_run_script(options: dict[str, Any], stage: str, folder: Path) -> str:
    """What ``--dry-run`` prints: the sbatch options zmdist passes for this job, the setup lines, and what
    each task runs. submitit adds its own defaults and the srun line when it writes the real script."""
    sbatch = sbatch_options(options, stage, folder)
    tasks = 1 if options.get("array") else int(options["nodes"]) * int(options["tasks_per_node"])
    lines = [
        "#!/bin/bash",
        "# zmdist submit --dry-run: the sbatch options zmdist passes to submitit for this job. submitit",
        "# writes the real script at submission (adding --open-mode=append, --wckey and its srun line):",
        f"# {folder}/JOBID_submission.sh",
        "",
        "# Parameters",
        *(_sbatch_line(key, sbatch[key]) for key in sorted(sbatch)),
    ]
    if options.get("setup"):
        lines += ["", "# setup", *options["setup"]]
    lines += [
        "",
        f"# requeue: on SIG{REQUEUE_SIGNAL} ({sbatch['signal'].split('@')[1]} s before the time limit, or on "
        f"preemption) the job requeues itself and resumes, at most {int(options['max_requeues'])} times",
        f"# command: srun --unbuffered starts {tasks} task(s) of the pickled zmdist task (zmdist.cluster.task)",
        "",
    ]
    return "\n".join(lines)
