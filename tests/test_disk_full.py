"""A full disk, for real: a tiny tmpfs mounted for the test (needs root, like the SLURM tests).

Each stage must stop with one line naming the path and what is free (exit status 74), keep what it
finished, and complete when rerun after space is freed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_stages import TEACHER, _embedded_keys, _env


@pytest.fixture
def tiny_disk(tmp_path):
    """``make(name)`` mounts a 64 KiB tmpfs at tmp_path/name and returns (path, grow); ``grow()`` enlarges
    it to 64 MiB (space freed). Unmounted at the end."""
    mounted: list[Path] = []

    def make(name: str):
        disk = tmp_path / name
        disk.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                              text=True)
        assert proc.returncode == 0, f"the disk-full tests need root to mount a tmpfs: {proc.stderr}"
        mounted.append(disk)
        return disk, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)

    yield make
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _zmdist(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmdist", *args], capture_output=True, text=True, env=_env(),
                          timeout=300)


def test_shard_and_embed_on_a_full_disk_say_so_and_finish_after_space_is_freed(tiny_disk, tmp_path):
    """Catches: a traceback (or a silent partial output) on ENOSPC, and a rerun that cannot finish."""
    disk, grow = tiny_disk("shard-disk")
    shard_args = ["shard", "--source", "sklearn-digits", "--out", str(disk / "shards"), "shard_size=300",
                  "progress=false"]
    full = _zmdist(*shard_args)
    assert full.returncode == 74, full.stderr[-2000:]
    message = full.stderr.strip().splitlines()[-1]
    assert "disk full (errno 28) writing" in message and "bytes free" in message and "Traceback" not in full.stderr
    grow()
    done = _zmdist(*shard_args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((disk / "shards" / "manifest.json").read_text())["splits"]["train"]["total"] == 1797

    disk, grow = tiny_disk("embed-disk")
    embed_args = ["embed", "--shards", str(tmp_path / "shard-disk" / "shards"), "--out", str(disk / "emb"), *TEACHER,
                  "num_workers=0", "progress=false"]
    full = _zmdist(*embed_args)
    assert full.returncode == 74, full.stderr[-2000:]
    assert "disk full (errno 28)" in full.stderr.strip().splitlines()[-1]
    grow()
    done = _zmdist(*embed_args)
    assert done.returncode == 0, done.stderr[-2000:]
    keys = _embedded_keys(disk / "emb")
    assert len(keys) == len(set(keys)) == 1797  # every key exactly once across the two runs
