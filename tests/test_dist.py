"""`zmdist.dist.detect()`: which launcher's variables win, job arrays, explicit arguments, and range checks."""

from __future__ import annotations

import pytest

from zmdist import dist

VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_ID",
        "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
        "ZMDIST_TASK_INDEX", "ZMDIST_NUM_TASKS")


@pytest.fixture
def env(monkeypatch):
    """A clean launcher environment; ``env(NAME=value, ...)`` sets variables for one test."""
    for var in VARS:
        monkeypatch.delenv(var, raising=False)

    def set_vars(**values: object) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))

    return set_vars


def test_nothing_set_is_one_process_one_task(env):
    """Catches a default other than rank 0 of 1, task 0 of 1 outside any launcher."""
    info = dist.detect()
    assert (info.rank, info.world_size, info.local_rank, info.task_index, info.num_tasks) == (0, 1, 0, 0, 1)
    assert info.is_main and info.worker_index == 0 and info.num_workers == 1


def test_torchrun_variables_win_over_slurm(env):
    """Catches SLURM_PROCID/SLURM_NTASKS overriding torchrun's RANK/WORLD_SIZE (torchrun inside an srun step
    of one task per node: SLURM says rank 0 of 2 nodes, torchrun says rank 5 of 8 processes)."""
    env(RANK=5, WORLD_SIZE=8, LOCAL_RANK=1, SLURM_PROCID=0, SLURM_NTASKS=2, SLURM_LOCALID=0)
    info = dist.detect()
    assert (info.rank, info.world_size, info.local_rank) == (5, 8, 1)
    assert not info.is_main


def test_slurm_alone_gives_rank_and_world(env):
    """Catches srun-started tasks (no torchrun) all believing they are rank 0 of 1."""
    env(SLURM_PROCID=3, SLURM_NTASKS=4, SLURM_LOCALID=1, SLURM_STEP_ID=0)
    info = dist.detect()
    assert (info.rank, info.world_size, info.local_rank) == (3, 4, 1)


def test_slurm_array_position_is_offset_by_the_array_minimum(env):
    """Catches `--array=4-7` being read as task ids 4..7 of 4 (out of range) instead of 0..3."""
    env(SLURM_ARRAY_TASK_ID=6, SLURM_ARRAY_TASK_COUNT=4, SLURM_ARRAY_TASK_MIN=4)
    info = dist.detect()
    assert (info.task_index, info.num_tasks) == (2, 4)
    env(SLURM_PROCID=1, SLURM_NTASKS=2, SLURM_STEP_ID=0)
    both = dist.detect()
    assert both.worker_index == 2 * 2 + 1 and both.num_workers == 8


def test_zmdist_task_variables_win_and_ignore_the_array_minimum(env):
    """Catches ZMDIST_TASK_INDEX/ZMDIST_NUM_TASKS (set explicitly by `zmdist submit`) losing to the SLURM
    array variables, or being shifted by SLURM_ARRAY_TASK_MIN."""
    env(SLURM_ARRAY_TASK_ID=6, SLURM_ARRAY_TASK_COUNT=4, SLURM_ARRAY_TASK_MIN=4,
        ZMDIST_TASK_INDEX=1, ZMDIST_NUM_TASKS=3)
    info = dist.detect()
    assert (info.task_index, info.num_tasks) == (1, 3)


def test_explicit_arguments_win_over_the_environment(env):
    """Catches `task_index=i num_tasks=n` in a stage's config being overridden by the environment (or shifted
    by SLURM_ARRAY_TASK_MIN)."""
    env(ZMDIST_TASK_INDEX=0, ZMDIST_NUM_TASKS=1, SLURM_ARRAY_TASK_ID=9, SLURM_ARRAY_TASK_COUNT=10,
        SLURM_ARRAY_TASK_MIN=5)
    info = dist.detect(task_index=2, num_tasks=4)
    assert (info.task_index, info.num_tasks) == (2, 4)


def test_empty_variables_are_ignored(env):
    """Catches an exported-but-empty RANK (as some wrappers leave it) crashing int('') or hiding SLURM's."""
    env(RANK="", WORLD_SIZE="", SLURM_PROCID=1, SLURM_NTASKS=2, SLURM_STEP_ID=0)
    info = dist.detect()
    assert (info.rank, info.world_size) == (1, 2)


@pytest.mark.parametrize("values, kwargs, match", [
    ({"RANK": 4, "WORLD_SIZE": 4}, {}, "rank 4 is outside world size 4"),
    ({"SLURM_PROCID": 2, "SLURM_NTASKS": 2, "SLURM_STEP_ID": 0}, {}, "rank 2 is outside world size 2"),
    ({"SLURM_PROCID": 0, "SLURM_NTASKS": 2}, {}, r"SLURM_NTASKS=2 but this process was not started by srun"),
    ({"RANK": -1, "WORLD_SIZE": 2}, {}, "rank -1"),
    ({"ZMDIST_TASK_INDEX": 3, "ZMDIST_NUM_TASKS": 3}, {}, "task_index 3 is outside num_tasks 3"),
    ({"SLURM_ARRAY_TASK_ID": 8, "SLURM_ARRAY_TASK_COUNT": 4, "SLURM_ARRAY_TASK_MIN": 4}, {}, "task_index 4"),
    ({}, {"task_index": 2, "num_tasks": 2}, "task_index 2 is outside num_tasks 2"),
])
def test_out_of_range_positions_raise(env, values, kwargs, match):
    """Catches an impossible rank or task index being accepted (it would silently skip or double work)."""
    env(**values)
    with pytest.raises(ValueError, match=match):
        dist.detect(**kwargs)


def test_a_stage_in_a_batch_script_of_several_tasks_outside_srun_is_one_line(tmp_path):
    """sbatch --ntasks=2 running `zmdist STAGE` directly (not under srun): SLURM_NTASKS=2 without a step id.
    Catches: a traceback, or a process waiting for a second rank nobody started, instead of one line."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in VARS}
    env.update(SLURM_NTASKS="2", SLURM_PROCID="0")
    proc = subprocess.run([sys.executable, "-m", "zmdist", "select", "--embeddings", str(tmp_path / "e"),
                           "--out", str(tmp_path / "s")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "not started by srun" in errors[0] and "Traceback" not in proc.stderr
