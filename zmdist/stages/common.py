"""Pieces several stages share: the teacher's config, shard planning across workers, run-info checks."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from zmdist.atomic import atomic_write_text
from zmdist.config import option
from zmdist.data.manifest import Manifest
from zmdist.data.reader import assign_shards
from zmdist.dist import DistInfo
from zmdist.formats import sidecar_name

log = logging.getLogger("zmdist")


@dataclass
class TeacherConfig:
    model: str = option("ViT-B-32", "open_clip model name (tiny offline ones: zmdist-tiny-vit, zmdist-micro-vit)")
    pretrained: str = option("", "open_clip pretrained tag, or a local checkpoint path; empty = random weights")
    model_config: str = option("", "extra open_clip model-config JSON file or folder to register first")


Precision = Literal["auto", "fp32", "bf16", "fp16"]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision``: ``auto`` = bf16 on GPUs that have it, fp16 on older GPUs,
    full fp32 on the CPU (CPU autocast is slower than fp32 for these small matmuls)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    from zmdist.dist import default_device

    return default_device(info.local_rank) if spec == "auto" else torch.device(spec)


@dataclass(frozen=True)
class ShardJob:
    """One image shard and the per-shard file a stage writes for it."""

    index: int
    split: str
    name: str
    count: int
    path: Path
    output: Path


def plan_shards(manifest: Manifest, splits: list[str], out: Path, info: DistInfo) -> tuple[list[ShardJob], list[ShardJob]]:
    """All shards of ``splits`` and this worker's share of them (disjoint across ranks and array tasks,
    balanced by sample count, identical on every rerun so a rerun finds its own finished files)."""
    unknown = [s for s in splits if s not in manifest.splits]
    if unknown:
        raise ValueError(f"splits: {unknown} not in {manifest.root}/manifest.json (it has {sorted(manifest.splits)})")
    jobs: list[ShardJob] = []
    for split in splits or sorted(manifest.splits):
        for shard, path in zip(manifest.split(split).shards, manifest.shard_paths(split)):
            jobs.append(ShardJob(len(jobs), split, shard.name, shard.count, path, out / sidecar_name(shard.name)))
    mine = assign_shards([j.count for j in jobs], info.worker_index, info.num_workers)
    return jobs, [jobs[i] for i in mine]


def check_run_info(path: Path, info: dict[str, Any], what: str) -> None:
    """Write ``info`` to ``path``, or check an existing one matches: a rerun must not mix two runs' files."""
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in info.items() if old.get(k) != v}
        if diff:
            details = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{path.parent} already holds {what} made with other settings ({details}). "
                "Use a new --out folder, or delete the old files."
            )
        return
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
