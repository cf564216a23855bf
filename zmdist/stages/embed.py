"""``zmdist embed``: the teacher embeds every image once, one embedding file per image shard.

Work is split by shard across every process of every array task (``zmdist.dist``), so the same
command scales from one CPU to ``torchrun``/``accelerate launch`` ranks to a SLURM job array. A shard's
file is written atomically when its last sample is embedded, and a rerun skips shards whose file exists:
a run killed at any point and rerun ends with every key exactly once.

Nothing lost, nothing mixed: ``embed_info.json`` records content fingerprints of the shard set (keys and
counts per shard) and of the teacher (architecture; checkpoint bytes, tag or random-weight seed), and a
rerun into the same folder with anything else is refused naming what changed. Every tar's sample count is
checked against the manifest before anything is written. Each worker holds ``OUT/.lock-task{i}-rank{r}``
while it writes, so a second command on the same folder refuses instead of deleting the first one's
temp files (``zmdist.stages.common.WorkerLock``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zmdist import dist
from zmdist.atomic import atomic_write_text, clean_temp_files
from zmdist.config import option, to_dict
from zmdist.data.manifest import Manifest
from zmdist.data.reader import iter_shard
from zmdist.formats import EMBED_INFO_FILE, EmbeddingShard
from zmdist.progress import Progress
from zmdist.provenance import provenance, write_run_files
from zmdist.stages.common import (
    Precision,
    ShardJob,
    TeacherConfig,
    WorkerLock,
    autocast_dtype,
    check_run_info,
    plan_shards,
    resolve_device,
    shards_fingerprint,
    shards_spec,
)
from zmdist.stages.outdir import claim_output
from zmdist.teacher import load_teacher
from zmdist.teacher.loading import check_teacher_weights, teacher_fingerprint

NAME = "embed"
HELP = "embed every image shard with an open_clip teacher (resumable, parallel over ranks and array tasks)"
INFO_FILE = EMBED_INFO_FILE
log = logging.getLogger("zmdist")


@dataclass
class Config:
    shards: str = option(help="folder holding manifest.json and the tar shards (from `zmdist shard`)")
    teacher: TeacherConfig = option(factory=TeacherConfig, help="the open_clip teacher")
    splits: list[str] = option(factory=list, help="splits to embed; empty = every split in the manifest")
    batch_size: int = option(256, "images per forward pass", min=1)
    num_workers: int = option(2, "DataLoader worker processes decoding images (0 = in the main process)", min=0)
    seed: int = option(0, "seed of a random-weight teacher (teacher.pretrained=random): every rank and rerun gets the same one")
    precision: Precision = option("auto", "auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16")
    device: str = option("auto", "auto (this rank's GPU, else CPU), cpu, cuda, cuda:N")
    task_index: int | None = option(None, "this job-array task's index; default from SLURM_ARRAY_TASK_ID", min=0)
    num_tasks: int | None = option(None, "number of job-array tasks; default from SLURM_ARRAY_TASK_COUNT", min=1)
    progress: bool = option(True, "show a progress bar with images/s (rank 0)")
    jpeg_draft: bool = option(True, "decode JPEG shards at 1/2-1/8 scale when the teacher's input is that much "
                                    "smaller (much faster on photos; embeddings differ slightly from a full decode)")


class _ShardImages(IterableDataset):
    """Samples of the given shards, each DataLoader worker reading whole shards (so order within a shard
    is the tar's order), transformed for the teacher; tagged with the shard's position in ``jobs``."""

    def __init__(self, jobs: list[ShardJob], transform: Callable[[Any], torch.Tensor], draft: int | None = None):
        self.jobs = jobs
        self.transform = transform
        self.draft = draft

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str, int, int, str]]:
        worker = get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker else (0, 1)
        blank = torch.zeros_like(self.transform(Image.new("RGB", (8, 8))))
        for slot in range(wid, len(self.jobs), nw):
            job = self.jobs[slot]  # ``expected``: a tar that does not hold the manifest's count is refused
            for sample in iter_shard(job.path, skip_errors=True, expected=job.count, draft=self.draft):
                if sample["image"] is None:  # undecodable: keep its place so the shard still completes
                    yield blank, sample["key"], -1, slot, sample["error"]
                else:
                    yield self.transform(sample["image"]), sample["key"], sample["label"], slot, ""


def _embed_shards(
    jobs: list[ShardJob], cfg: Config, teacher, device: torch.device, show_progress: bool,
    on_shard_written: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Embed ``jobs`` and write one file per shard; return counts and timings for the summary.
    ``on_shard_written(n)`` is called after the n-th file is on disk (tests kill the process there)."""
    loader = DataLoader(
        _ShardImages(jobs, teacher.preprocess, teacher.input_size if cfg.jpeg_draft else None),
        batch_size=cfg.batch_size,
        num_workers=min(cfg.num_workers, len(jobs)),
        pin_memory=device.type == "cuda",
    )
    amp = autocast_dtype(cfg.precision, device)
    pending: dict[int, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    written = images = 0
    bar = Progress(sum(j.count for j in jobs), "embed", "img", enabled=show_progress)
    start = time.perf_counter()
    with torch.inference_mode():
        for pixels, keys, labels, slots, errors in loader:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                feats = teacher.model.encode_image(pixels.to(device, non_blocking=True), normalize=True)
            feats = feats.float().cpu().to(torch.float16).numpy()
            for row, (key, label, slot, error) in enumerate(zip(keys, labels.tolist(), slots.tolist(), errors)):
                buf = pending.setdefault(slot, {"keys": [], "labels": [], "rows": [], "seen": 0})
                buf["seen"] += 1
                if error:
                    skipped.append({"shard": jobs[slot].name, "key": key, "reason": error})
                else:
                    buf["keys"].append(key)
                    buf["labels"].append(label)
                    buf["rows"].append(feats[row])
                if buf["seen"] == jobs[slot].count:
                    EmbeddingShard(
                        keys=np.array(buf["keys"]),
                        labels=np.array(buf["labels"], dtype=np.int64),
                        embeddings=np.stack(buf["rows"]) if buf["rows"] else np.zeros((0, feats.shape[1]), np.float16),
                    ).save(jobs[slot].output)
                    del pending[slot]
                    written += 1
                    if on_shard_written is not None:
                        on_shard_written(written)
            images += len(keys)
            bar.update(len(keys))
            bar.set_postfix(shards=written)
    bar.close()
    seconds = time.perf_counter() - start
    if pending:
        short = {jobs[slot].name: (buf["seen"], jobs[slot].count) for slot, buf in pending.items()}
        raise RuntimeError(f"shards ended early (got, manifest count): {short}; the shards or manifest are damaged")
    return {"shards_written": written, "images": images - len(skipped), "seconds": seconds, "skipped_keys": skipped}


def run(cfg: Config, out: Path, on_shard_written: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Embed this worker's share of the shards; ``on_shard_written`` is a test hook (see ``_embed_shards``)."""
    check_teacher_weights(cfg.teacher.model, cfg.teacher.pretrained)  # before `out` exists: no silent random teacher
    info = dist.detect(cfg.task_index, cfg.num_tasks)
    dist.init_distributed(info)
    device = resolve_device(cfg.device, info)
    log.info("embed: %s", dist.describe(info))
    claim_output(out, NAME, mark=info.is_main)
    manifest = Manifest.load(cfg.shards)
    out.mkdir(parents=True, exist_ok=True)
    all_jobs, mine = plan_shards(manifest, cfg.splits, out, info)
    teacher = load_teacher(cfg.teacher.model, cfg.teacher.pretrained or None, device=device,
                           model_config=cfg.teacher.model_config or None, seed=cfg.seed,
                           cache_dir=cfg.teacher.cache_dir or None)
    if info.is_main:
        compared = {
            "splits": [j.split for j in all_jobs if j.index == 0 or j.split != all_jobs[j.index - 1].split],
            "shards_fingerprint": shards_fingerprint(all_jobs, manifest.classes),
            "jpeg_draft": cfg.jpeg_draft,
            "teacher_fingerprint": teacher_fingerprint(cfg.teacher.model, cfg.teacher.pretrained or None, cfg.seed,
                                                   cache_dir=cfg.teacher.cache_dir or None),
        }
        recorded = {"shards": shards_spec(cfg.shards), "teacher": to_dict(cfg.teacher), "seed": cfg.seed,
                    "classes": manifest.classes}
        check_run_info(out / INFO_FILE, compared, "embeddings", recorded)
    dist.barrier()
    with WorkerLock(out, info.task_index, info.rank, [j.name for j in mine], NAME):
        return _run_locked(cfg, out, info, device, manifest, all_jobs, mine, teacher, on_shard_written)


def _run_locked(cfg: Config, out: Path, info: dist.DistInfo, device: torch.device, manifest: Manifest,
                all_jobs: list[ShardJob], mine: list[ShardJob], teacher, on_shard_written) -> dict[str, Any]:
    clean_temp_files(j.output for j in mine)
    todo = [j for j in mine if not j.output.is_file()]
    log.info("embed: %d of my %d shards to do (%d already done)", len(todo), len(mine), len(mine) - len(todo))
    stats = _embed_shards(todo, cfg, teacher, device, cfg.progress and info.is_main, on_shard_written) if todo else {
        "shards_written": 0, "images": 0, "seconds": 0.0, "skipped_keys": []}
    stats.update(worker=info.worker_index, shards_assigned=len(mine), shards_skipped_done=len(mine) - len(todo))
    per_rank = dist.all_gather_objects(stats)
    results = _summarise(per_rank, all_jobs, info)
    if info.is_main:
        summary = {**results, **provenance(seed=cfg.seed, classes=manifest.classes)}
        if info.num_tasks > 1:
            atomic_write_text(out / f"summary.task-{info.task_index}-of-{info.num_tasks}.json", json.dumps(summary, indent=2))
        if info.num_tasks == 1 or results["complete"]:
            write_run_files(out, to_dict(cfg), summary)
    dist.barrier()
    return results


def _summarise(per_rank: list[dict[str, Any]], all_jobs: list[ShardJob], info: dist.DistInfo) -> dict[str, Any]:
    images = sum(r["images"] for r in per_rank)
    slowest = max((r["seconds"] for r in per_rank), default=0.0)
    done = sum(j.output.is_file() for j in all_jobs)
    return {
        "stage": NAME,
        "world_size": info.world_size,
        "task_index": info.task_index,
        "num_tasks": info.num_tasks,
        "images_embedded": images,
        "images_per_second": images / slowest if slowest > 0 else None,
        "shards_written": sum(r["shards_written"] for r in per_rank),
        "shards_skipped_done": sum(r["shards_skipped_done"] for r in per_rank),
        "shards_total": len(all_jobs),
        "skipped_keys": [k for r in per_rank for k in r["skipped_keys"]],
        "shards_complete": done,
        "complete": done == len(all_jobs),
        "per_worker": per_rank,
    }
