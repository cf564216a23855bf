"""Who am I in this run? Rank/world from any launcher, and a process group that really is distributed.

Launcher-agnostic (as in open_clip's ``distributed.py``): torchrun / ``accelerate launch`` set
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; SLURM's srun sets ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``.
Job arrays are a second, independent axis: SLURM's ``SLURM_ARRAY_TASK_ID`` of ``SLURM_ARRAY_TASK_COUNT``
(or zmdist's own ``ZMDIST_TASK_INDEX``/``ZMDIST_NUM_TASKS``) split embarrassingly parallel work between
jobs that never talk to each other. ``worker_index``/``num_workers`` combine both axes.

The backend follows the device: NCCL when CUDA is there, gloo otherwise, so a CPU-only machine runs
really distributed with nothing extra set. ``describe()`` is logged at start so a run says what it got.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


@dataclass(frozen=True)
class DistInfo:
    """Position of this process: ``rank`` of ``world_size`` inside a job, ``task_index`` of ``num_tasks`` jobs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    task_index: int = 0
    num_tasks: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 of its job: the process that writes job-level files."""
        return self.rank == 0

    @property
    def worker_index(self) -> int:
        """Index of this process among every process of every array task."""
        return self.task_index * self.world_size + self.rank

    @property
    def num_workers(self) -> int:
        return self.num_tasks * self.world_size


def detect(task_index: int | None = None, num_tasks: int | None = None) -> DistInfo:
    """Read rank/world from the environment; explicit ``task_index``/``num_tasks`` win over the env."""
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    if world > 1 and not os.environ.get("WORLD_SIZE") and "SLURM_STEP_ID" not in os.environ:
        # SLURM_NTASKS is the job's task count, also seen by the batch script itself (which has no step id):
        # one process there would wait forever for the other ranks of a process group nobody started
        raise ValueError(f"SLURM_NTASKS={world} but this process was not started by srun (no SLURM_STEP_ID): "
                         "start one process per task with `srun zmdist ...`, use `zmdist submit`, or run a single "
                         "process with --ntasks=1")
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if task_index is None:
        task_index = _env_int("ZMDIST_TASK_INDEX", "SLURM_ARRAY_TASK_ID", default=0)
        min_id = _env_int("SLURM_ARRAY_TASK_MIN", default=0) if "ZMDIST_TASK_INDEX" not in os.environ else 0
        task_index -= min_id
    if num_tasks is None:
        num_tasks = _env_int("ZMDIST_NUM_TASKS", "SLURM_ARRAY_TASK_COUNT", default=1)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}: check RANK/WORLD_SIZE (or SLURM_PROCID/SLURM_NTASKS)")
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task_index {task_index} is outside num_tasks {num_tasks}")
    return DistInfo(rank=rank, world_size=world, local_rank=local, task_index=task_index, num_tasks=num_tasks)


def default_device(local_rank: int = 0) -> torch.device:
    """The device this rank should use: its own GPU when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(info: DistInfo, *, timeout_s: float = 1800.0) -> bool:
    """Join the job's process group when the world has more than one process; return whether we did.

    Needs ``MASTER_ADDR``/``MASTER_PORT`` (set by torchrun, accelerate, or zmdist's SLURM launcher).
    """
    if info.world_size == 1 or torch_dist.is_initialized():
        return torch_dist.is_initialized()
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(
                f"world size is {info.world_size} but {var} is not set: start multi-process runs with "
                "torchrun, `accelerate launch`, or `zmdist submit`"
            )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(default_device(info.local_rank))
    torch_dist.init_process_group(
        backend=backend,
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    got = torch_dist.get_world_size()
    if got != info.world_size:
        raise RuntimeError(f"process group has world size {got}, launcher said {info.world_size}")
    return True


def describe(info: DistInfo) -> str:
    """One line for the log: what this process got (backend, world, device)."""
    backend = torch_dist.get_backend() if torch_dist.is_initialized() else "none"
    return (
        f"rank {info.rank}/{info.world_size} (local {info.local_rank}), task {info.task_index}/{info.num_tasks}, "
        f"backend {backend}, device {default_device(info.local_rank)}"
    )


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` in rank order (a one-element list when not distributed)."""
    if not torch_dist.is_initialized():
        return [obj]
    out: list[object] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
