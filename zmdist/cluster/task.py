"""What runs on the cluster: ``StageTask``, the pickled callable of a ``zmdist submit`` job.

Only the stage name and its argv are pickled: every resume state lives on disk. In each task of the job
``StageTask`` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from the SLURM environment
(``zmdist.cluster.rendezvous``; for submitit's local executor, from its job environment) and the array
position (ZMDIST_TASK_INDEX/ZMDIST_NUM_TASKS), then runs the stage in-process. On a timeout or preemption
signal submitit calls ``checkpoint`` (on global rank 0), which requeues the same stage, with
``--resume auto`` when the stage's config has a ``resume`` option. A failed write (full disk, read-only
``--out``) fails the job with ``zmdist.io_errors.WriteFailure``: the one line ``zmdist STAGE`` prints.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

from zmdist.cluster.rendezvous import port_for_job, rendezvous_from_slurm
from zmdist.io_errors import describe
from zmdist.stages import load_stage, parse_stage_args, setup_logging

try:
    from submitit.helpers import Checkpointable as _Checkpointable, DelayedSubmission as _Delayed
except ImportError:  # pragma: no cover - submitit is a dependency; keep `zmdist --help` working without it
    _Checkpointable, _Delayed = object, None


def stage_option_names(stage: str) -> set[str]:
    """The top-level option names of a stage's config (``resume`` among them for resumable stages)."""
    return {f.name for f in dataclasses.fields(load_stage(stage).Config)}


def resume_argv(stage: str, argv: list[str]) -> list[str]:
    """``argv`` for a requeued run: plus ``--resume auto`` when the stage's config has a ``resume`` field.

    Given as a flag, not a ``key=value`` override, so it parses wherever the user's options ended (a
    ``key=value`` after ``--out DIR`` would not); it overrides any earlier ``--resume``. A ``resume=never``
    override is dropped, since key=value overrides win over flags."""
    if "resume" not in stage_option_names(stage):
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


def job_environment() -> tuple[str, dict[str, str]]:
    """(cluster kind, torch.distributed variables) for the submitit task we are running in."""
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
        from zmdist import dist

        cluster, rdv = job_environment()
        os.environ.update(rdv)
        # The array position is explicit (the local executor has no SLURM_ARRAY_* variables); a job that is
        # not an array is task 0 of 1, whatever the submitting shell exported.
        os.environ["ZMDIST_TASK_INDEX"] = str(task_index if task_index is not None else 0)
        os.environ["ZMDIST_NUM_TASKS"] = str(num_tasks if num_tasks is not None else 1)
        setup_logging(False)
        module, cfg, out, verbose = parse_stage_args(self.stage, self.argv)
        if verbose:
            setup_logging(True)
        try:
            result = module.run(cfg, out)
        except Exception as err:
            failure = describe(err, out)
            if failure is None:
                raise
            raise failure from None  # the line names path, free bytes and what to do: no library traceback
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
        return _Delayed(StageTask(self.stage, resume_argv(self.stage, self.argv)), *args, **kwargs)

    def __repr__(self) -> str:
        return f"StageTask({self.stage!r}, {self.argv!r})"
