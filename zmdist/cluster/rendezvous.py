"""Rendezvous for a multi-node job from the SLURM environment, so every task can join one process group.

Inside a job step started by ``srun`` (what ``sbatch``/submitit do) each task sees ``SLURM_PROCID``,
``SLURM_NTASKS``, ``SLURM_LOCALID`` and ``SLURM_JOB_NODELIST``. torch.distributed wants ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``: the master is the first host of the
node list (``n[1-2]`` -> ``n1``), and the port is derived from the job id, so concurrent jobs sharing a
node do not collide and every task of one job computes the same port without talking to the others.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Mapping

PORT_BASE = 20000
PORT_SPAN = 20000


def expand_hostlist(nodelist: str) -> list[str]:
    """Expand a SLURM host list: ``"gpu[01-03,07],cpu5"`` -> ``["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]``.

    Handles several bracket groups in one name (``rack[1-2]-n[1-2]``) and keeps zero padding.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        hosts.extend(_expand_item(item))
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in host list {text!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in host list {text!r}")
    items.append(text[start:])
    return [item for item in (s.strip() for s in items) if item]


def _expand_item(item: str) -> list[str]:
    match = re.search(r"\[([^\[\]]*)\]", item)
    if match is None:
        return [item]
    head, tail = item[: match.start()], item[match.end():]
    out: list[str] = []
    for part in match.group(1).split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            width = len(lo)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"bad range {part!r} in host list item {item!r}")
            values = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
        else:
            values = [part]
        for value in values:
            out.extend(_expand_item(head + value + tail))
    return out


def job_hostnames(env: Mapping[str, str] | None = None) -> list[str]:
    """Hosts of this job in SLURM's order, from ``SLURM_JOB_NODELIST`` (``scontrol show hostnames`` when
    our parser cannot read it)."""
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    if not nodelist:
        return []
    try:
        return expand_hostlist(nodelist)
    except ValueError:
        if shutil.which("scontrol") is None:
            raise
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        return out.split()


def port_for_job(job_id: str | int) -> int:
    """A rendezvous port every task of the job derives alike: ``20000 + job_id % 20000``."""
    digits = re.match(r"\d+", str(job_id))
    if digits is None:
        raise ValueError(f"cannot derive a port from job id {job_id!r}")
    return PORT_BASE + int(digits.group()) % PORT_SPAN


def rendezvous_from_slurm(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed variables for this SLURM task (empty when not inside a SLURM job step).

    ``ZMDIST_MASTER_ADDR``/``ZMDIST_MASTER_PORT`` pin them (the submitting shell's own ``MASTER_*``, which
    sbatch exports into the job, are deliberately ignored).
    """
    env = os.environ if env is None else env
    if "SLURM_PROCID" not in env or "SLURM_JOB_ID" not in env:
        return {}
    hosts = job_hostnames(env)
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
        "MASTER_ADDR": env.get("ZMDIST_MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
        "MASTER_PORT": env.get("ZMDIST_MASTER_PORT") or str(port_for_job(env["SLURM_JOB_ID"])),
    }
