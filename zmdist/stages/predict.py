"""``zmdist predict``: an exported student's predictions for every image of a shard set (or a source).

The model is an export folder (``zmdist export``, or a train run's ``OUT/export``), loaded with
``zmdist.load_student``: eval mode, the run's evaluation preprocessing. Work is split by whole shards
across every process of every array task, as in ``zmdist embed``: each shard's prediction file
(``OUT/<shard>.npz``, see ``zmdist.models.predict``) is written atomically, a rerun skips finished ones
(a run killed at any point and rerun predicts every image exactly once), and each worker holds
``OUT/.lock-task{i}-rank{r}`` while it writes. When every shard is done, the main process writes
``OUT/predictions.csv`` (one row per image, manifest order) and, where the images have labels, the
accuracy per split (summary and log). ``predict_info.json`` records the model and shard fingerprints: a
rerun into the same folder with another model or other shards is refused.

``source=SPEC`` (e.g. ``imagefolder:PATH``, ``csv:FILE``) is first sharded into ``OUT/shards`` with
``zmdist shard``'s own writer (once, by the main process; a rerun reuses it), so images are decoded and
converted to RGB exactly as for training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from zmdist import dist
from zmdist.atomic import atomic_write_text, clean_temp_files
from zmdist.config import option, to_dict
from zmdist.data.manifest import Manifest
from zmdist.data.shards import write_shards
from zmdist.data.sources import open_source
from zmdist.models.export import WEIGHTS_FILE, load_student, read_export_config
from zmdist.models.predict import PredictionShard, label_map, predict_shards, split_metrics, write_csv
from zmdist.progress import Progress
from zmdist.provenance import hash_file, hash_json, provenance, write_run_files
from zmdist.stages.common import (
    Precision,
    ShardJob,
    WorkerLock,
    autocast_dtype,
    check_run_info,
    plan_shards,
    resolve_device,
    shards_fingerprint,
    shards_spec,
)
from zmdist.stages.outdir import claim_output

NAME = "predict"
HELP = "predict classes of shards or a source with an exported student (predictions.csv, accuracy if labelled)"
INFO_FILE = "predict_info.json"
CSV_FILE = "predictions.csv"
SHARDS_FOLDER = "shards"  # where source=SPEC is sharded, inside OUT
log = logging.getLogger("zmdist")


@dataclass
class Config:
    model: str = option(help="exported student folder (model.safetensors + config.json): `zmdist export`, or a "
                             "train run's OUT/export")
    shards: str = option("", "shard folder of `zmdist shard` (or a URL / pipe: template); or give source")
    source: str = option("", "images to shard into OUT/shards first: imagefolder:PATH, csv:FILE, ... (as `zmdist "
                             "shard source=`)")
    split: str = option("", "the one split to predict; empty = every split")
    top_k: int = option(5, "classes and probabilities per image in predictions.csv (at most the model's classes)",
                        min=1)
    batch_size: int = option(256, "images per forward pass (batches never mix shards)", min=1)
    num_workers: int = option(2, "DataLoader worker processes decoding images (0 = in the main process)", min=0)
    precision: Precision = option("auto", "auto (bf16/fp16 autocast on GPU, as training evaluates; fp32 on CPU), "
                                          "fp32, bf16 or fp16")
    device: str = option("auto", "auto (this rank's GPU, else CPU), cpu, cuda, cuda:N")
    task_index: int | None = option(None, "this job-array task's index; default from SLURM_ARRAY_TASK_ID", min=0)
    num_tasks: int | None = option(None, "number of job-array tasks; default from SLURM_ARRAY_TASK_COUNT", min=1)
    progress: bool = option(True, "show a progress bar with images/s (rank 0)")


def _shard_source(cfg: Config, out: Path, info: dist.DistInfo) -> str:
    """The shard folder to read: ``shards``, or ``source`` sharded into ``OUT/shards`` by the main
    process of task 0 (the others wait; a rerun reuses the folder when it was made from the same spec)."""
    if bool(cfg.shards) == bool(cfg.source):
        raise ValueError("give exactly one of shards=DIR (from `zmdist shard`) and source=SPEC (e.g. "
                         "source=imagefolder:PATH)")
    if cfg.shards:
        return cfg.shards
    if info.num_tasks > 1:
        raise ValueError("source= is sharded inside one job: with job-array tasks run `zmdist shard source=... --out "
                         "DIR` first and give shards=DIR")
    folder = out / SHARDS_FOLDER
    if info.is_main and info.task_index == 0 and not (folder / "manifest.json").is_file():
        write_shards(open_source(cfg.source), folder, progress=cfg.progress, overwrite=True)
    dist.barrier()
    made_from = Manifest.load(folder).source
    if made_from != cfg.source:
        raise ValueError(f"{folder} was sharded from {made_from!r}, not {cfg.source!r}: use a new --out folder")
    return str(folder)


def run(cfg: Config, out: Path, on_shard_written: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Predict this worker's share of the shards; ``on_shard_written`` is a test hook (called after each
    prediction file is on disk)."""
    info = dist.detect(cfg.task_index, cfg.num_tasks)
    dist.init_distributed(info)
    device = resolve_device(cfg.device, info)
    log.info("predict: %s", dist.describe(info))
    claim_output(out, NAME, mark=info.is_main)
    exported = read_export_config(cfg.model)
    model = load_student(cfg.model).to(device)
    out.mkdir(parents=True, exist_ok=True)
    shards = _shard_source(cfg, out, info)
    manifest = Manifest.load(shards)
    all_jobs, mine = plan_shards(manifest, [cfg.split] if cfg.split else [], out, info)
    if info.is_main:
        compared = {
            "splits": sorted({j.split for j in all_jobs}),
            "shards_fingerprint": shards_fingerprint(all_jobs, manifest.classes),
            "model_fingerprint": hash_json([hash_file(Path(cfg.model) / WEIGHTS_FILE), exported["label_names"],
                                            exported["pretrained_cfg"], exported["student"], exported["model_args"]]),
        }
        recorded = {"shards": shards_spec(shards),
                    "model": str(Path(cfg.model).resolve()), "classes": exported["label_names"],
                    "data_classes": manifest.classes}
        check_run_info(out / INFO_FILE, compared, "predictions", recorded)
    dist.barrier()
    with WorkerLock(out, info.task_index, info.rank, [j.name for j in mine], NAME):
        return _run_locked(cfg, out, info, device, model, exported, manifest, all_jobs, mine, on_shard_written)


def _run_locked(cfg: Config, out: Path, info: dist.DistInfo, device, model, exported: dict[str, Any],
                manifest: Manifest, all_jobs: list[ShardJob], mine: list[ShardJob], on_shard_written) -> dict[str, Any]:
    clean_temp_files(j.output for j in mine)
    todo = [j for j in mine if not j.output.is_file()]
    log.info("predict: %d of my %d shards to do (%d already done)", len(todo), len(mine), len(mine) - len(todo))
    k = min(cfg.top_k, exported["num_classes"])
    stats: dict[str, Any] = {"shards_written": 0, "images": 0, "skipped_keys": []}
    if todo:
        bar = Progress(sum(j.count for j in todo), "predict", "img", enabled=cfg.progress and info.is_main)
        stats = predict_shards(model, todo, batch_size=cfg.batch_size, num_workers=cfg.num_workers, k=k, device=device,
                               amp=autocast_dtype(cfg.precision, device), on_batch=bar.update,
                               on_shard_written=on_shard_written)
        bar.close()
    stats.update(worker=info.worker_index, shards_assigned=len(mine), shards_skipped_done=len(mine) - len(todo))
    per_rank = dist.all_gather_objects(stats)
    done = sum(j.output.is_file() for j in all_jobs)
    results: dict[str, Any] = {
        "stage": NAME, "model": str(Path(cfg.model).resolve()), "student": exported["student"],
        "world_size": info.world_size, "task_index": info.task_index, "num_tasks": info.num_tasks,
        "images_predicted": sum(r["images"] for r in per_rank),
        "shards_written": sum(r["shards_written"] for r in per_rank),
        "shards_skipped_done": sum(r["shards_skipped_done"] for r in per_rank),
        "shards_total": len(all_jobs), "shards_complete": done, "complete": done == len(all_jobs),
        "skipped_keys": [key for r in per_rank for key in r["skipped_keys"]],
        "per_worker": per_rank,
    }
    for item in results["skipped_keys"]:
        log.warning("predict: %s in %s not predicted: %s", item["key"], item["shard"], item["reason"])
    if info.is_main and results["complete"]:
        results.update(_table(out, all_jobs, exported, manifest, k))
    if info.is_main:
        summary = {**results, **provenance(classes=exported["label_names"])}
        if info.num_tasks > 1 and not results["complete"]:
            atomic_write_text(out / f"summary.task-{info.task_index}-of-{info.num_tasks}.json",
                              json.dumps(summary, indent=2))
        else:
            write_run_files(out, to_dict(cfg), summary)
    dist.barrier()
    return results


def _table(out: Path, all_jobs: list[ShardJob], exported: dict[str, Any], manifest: Manifest,
           k: int) -> dict[str, Any]:
    """``predictions.csv`` from every shard's file, and the accuracy per split where there are labels."""
    parts = [(job.split, PredictionShard.load(job.output)) for job in all_jobs]
    rows = write_csv(out / CSV_FILE, parts, exported["label_names"], manifest.classes, k)
    to_model, unknown = label_map(manifest.classes, exported["label_names"])
    accuracy: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for split in dict.fromkeys(job.split for job in all_jobs):
        files = [shard for name, shard in parts if name == split]
        labelled = any((shard.labels >= 0).any() for shard in files)
        if labelled and to_model is None:
            log.warning("predict: no accuracy for split %r: its classes %s are not among the model's", split,
                        unknown[:5])
            continue
        found = split_metrics(files, to_model, exported["num_classes"]) if labelled else None
        if found is not None:
            accuracy[split], metrics[split] = found["top1"], found
            log.info("predict: accuracy on split %r: %.4f top-1 (%d labelled images; class-weighted %.4f)", split,
                     found["top1"], found["samples"], found["class_weighted_accuracy"])
    log.info("predict: %d predictions in %s", rows, out / CSV_FILE)
    return {"predictions_csv": CSV_FILE, "rows": rows, "accuracy": accuracy, "metrics": metrics,
            "classes_not_in_model": unknown}
