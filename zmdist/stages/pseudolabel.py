"""``zmdist pseudolabel``: a zero-shot classifier from class-name prompts labels every embedded sample.

Reads the embedding files of ``zmdist embed`` (the teacher is recorded there), builds the classifier
once per process, and writes one sidecar per image shard with the pseudolabel, its confidence, margin,
entropy and top-k classes (full probabilities when the class count is small). Parallel and resumable
like ``embed``. The summary holds pseudolabel and confidence histograms and, where ground truth exists,
zero-shot accuracy, accuracy at confidence thresholds, ECE and a reliability diagram.

``pseudolabel_info.json`` records the shard set's and the teacher's fingerprints from ``embed_info.json``
and a hash of the prompts (templates + class names); a rerun into the same folder with other embeddings,
teacher or prompts is refused, naming which. The teacher is rebuilt from ``embed_info.json`` (random
weights from its recorded seed) and its fingerprint must equal the one that embedded the images, so the
text tower always belongs to the image tower that made the embeddings.

``classifier=PATH`` labels with a given (C, D) head instead, e.g. the learned prompts of ``zmdist prompt-tune``
(``OUT/classifier.npy``); the file's sha256 is then part of the prompt fingerprint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zmdist import dist
from zmdist.atomic import atomic_save_npy, clean_temp_files
from zmdist.config import option, to_dict
from zmdist.data.location import Location
from zmdist.data.manifest import Manifest
from zmdist.formats import EmbeddingShard, PseudolabelShard, open_embedding_run, sidecar_name
from zmdist.methods.pseudolabels import (
    bins_from_sums,
    calibration_error,
    pseudolabel_stats,
    reliability_sums,
    threshold_counts,
    thresholds_from_counts,
    zero_shot_probs,
)
from zmdist.plots import reliability_diagram
from zmdist.progress import Progress
from zmdist.provenance import hash_file, hash_json, provenance, write_run_files
from zmdist.stages.common import (
    ShardJob,
    WorkerLock,
    check_run_info,
    plan_shards,
    resolve_device,
    shards_fingerprint,
    shards_spec,
)
from zmdist.stages.outdir import claim_output
from zmdist.teacher import build_zeroshot_classifier, get_templates, prompt_names
from zmdist.teacher.loading import load_recorded_teacher

NAME = "pseudolabel"
HELP = "zero-shot pseudolabels with confidence for every embedded sample (one sidecar per shard)"
INFO_FILE = "pseudolabel_info.json"
log = logging.getLogger("zmdist")


@dataclass
class Config:
    embeddings: str = option(help="output of `zmdist embed`: a folder, URL or pipe: template (the teacher and "
                                  "shards are read from its embed_info.json)")
    shards: str = option("", "where the shards are now (folder, URL or pipe: template); empty = where `embed` "
                              "read them. Must be the same shard set (checked by fingerprint)")
    templates: str | list[str] = option("simple", "template set name (simple, imagenet7, digits, ...) or a list")
    classnames: list[str] = option(factory=list, help="names used in prompts, in class order; empty = manifest's")
    classifier: str = option("", "a (C, D) .npy head with unit rows to use instead of the zero-shot one, e.g. "
                                 "`zmdist prompt-tune`'s OUT/classifier.npy (its sha256 joins the prompt fingerprint)")
    topk: int = option(5, "how many top classes (with probabilities) to store per sample", min=1)
    full_probs_max_classes: int = option(100, "store the full probability vector when classes <= this", min=0)
    thresholds: list[float] = option(factory=lambda: [0.3, 0.5, 0.7, 0.9], help="confidence thresholds reported")
    ece_bins: int = option(15, "bins of the reliability diagram and ECE", min=1)
    device: str = option("auto", "auto (this rank's GPU, else CPU), cpu, cuda, cuda:N")
    task_index: int | None = option(None, "this job-array task's index; default from SLURM_ARRAY_TASK_ID", min=0)
    num_tasks: int | None = option(None, "number of job-array tasks; default from SLURM_ARRAY_TASK_COUNT", min=1)
    progress: bool = option(True, "show shards labelled, shards/s and ETA (rank 0)")


def load_classifier(path: Path, n_classes: int) -> torch.Tensor:
    """A (C, D) head from a ``.npy`` file (``allow_pickle=False``), checked: one row per class, unit rows
    (logits are ``logit_scale * image @ head.T`` with unit image embeddings, as for the zero-shot head)."""
    if not path.is_file():
        raise FileNotFoundError(f"classifier={path}: no such file (e.g. `zmdist prompt-tune`'s OUT/classifier.npy)")
    try:
        head = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"classifier={path} is not a readable .npy array ({err})") from err
    if head.ndim != 2 or head.shape[0] != n_classes:
        raise ValueError(f"classifier={path} has shape {head.shape}; it needs one row per class: ({n_classes}, D)")
    norms = np.linalg.norm(head.astype(np.float64), axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"classifier={path}: rows must be L2-normalised (norms range {norms.min():.4f}..{norms.max():.4f})")
    return torch.from_numpy(head.astype(np.float32))


def run(cfg: Config, out: Path) -> dict[str, Any]:
    info = dist.detect(cfg.task_index, cfg.num_tasks)
    dist.init_distributed(info)
    device = resolve_device(cfg.device, info)
    claim_output(out, NAME, mark=info.is_main)
    run_files = open_embedding_run(cfg.embeddings, cfg.shards)
    emb_dir, emb_info, manifest = run_files.folder, run_files.info, run_files.manifest
    classnames = cfg.classnames or prompt_names(manifest.classes)
    if len(classnames) != len(manifest.classes):
        raise ValueError(f"classnames: {len(classnames)} names given, the manifest has {len(manifest.classes)} classes")
    templates = get_templates(cfg.templates)
    teacher_cfg, seed = emb_info["teacher"], int(emb_info.get("seed", 0))
    teacher, teacher_fp = load_recorded_teacher(emb_info, emb_dir, device, check=info.is_main)
    if cfg.classifier:
        classifier = load_classifier(Path(cfg.classifier), len(classnames)).to(device)
    else:
        classifier = build_zeroshot_classifier(teacher.model, teacher.tokenizer, classnames, templates, device=device)
    prompts: dict[str, Any] = {"classnames": classnames, "templates": templates}
    if cfg.classifier:  # another head labels differently: a rerun with another file must not mix sidecars
        prompts["classifier_sha256"] = hash_file(Path(cfg.classifier))
    out.mkdir(parents=True, exist_ok=True)
    all_jobs, mine = plan_shards(manifest, emb_info["splits"], out, info)
    if cfg.shards and shards_fingerprint(all_jobs, manifest.classes) != emb_info.get("shards_fingerprint"):
        raise ValueError(f"shards={cfg.shards} is not the shard set {emb_dir} was embedded from (other keys, counts "
                         f"or classes; embed read {emb_info['shards']})")
    if info.is_main:
        check_run_info(out / INFO_FILE, {
            "splits": emb_info["splits"],
            "shards_fingerprint": emb_info.get("shards_fingerprint"),
            "teacher_fingerprint": teacher_fp,
            "prompts_fingerprint": hash_json(prompts),
            "topk": cfg.topk,
        }, "pseudolabels", recorded={
            "embeddings": shards_spec(cfg.embeddings), "shards": shards_spec(cfg.shards or emb_info["shards"]),
            "teacher": teacher_cfg,
            "seed": seed, "classnames": classnames, "templates": templates,
            "classifier": str(Path(cfg.classifier).resolve()) if cfg.classifier else "zero-shot",
        })
        atomic_save_npy(out / "classifier.npy", classifier.cpu().numpy())
    dist.barrier()
    with WorkerLock(out, info.task_index, info.rank, [j.name for j in mine], NAME):
        return _run_locked(cfg, out, info, manifest, all_jobs, mine, emb_dir, classifier, teacher, device,
                           classnames, templates)


def _run_locked(cfg: Config, out: Path, info: dist.DistInfo, manifest: Manifest, all_jobs: list[ShardJob],
                mine: list[ShardJob], emb_dir: Location, classifier: torch.Tensor, teacher, device: torch.device,
                classnames: list[str], templates: list[str]) -> dict[str, Any]:
    clean_temp_files(j.output for j in mine)
    todo = [j for j in mine if not j.output.is_file()]
    with Progress(len(mine), "pseudolabel", "shard", enabled=cfg.progress and info.is_main,
                  initial=len(mine) - len(todo)) as bar:
        start = time.perf_counter()
        for job in todo:
            _label_shard(job, emb_dir, classifier, teacher.logit_scale, cfg, device)
            bar.update(1)
    per_rank = dist.all_gather_objects((len(todo), time.perf_counter() - start))
    dist.barrier()
    results: dict[str, Any] = {"stage": NAME, "world_size": info.world_size,
                               "sidecars_written": sum(n for n, _ in per_rank),
                               "label_seconds": max(s for _, s in per_rank)}  # the slowest rank's labelling loop
    done = all(j.output.is_file() for j in all_jobs)
    if info.is_main and done:
        results.update(summarise(all_jobs, manifest.classes, cfg, out))
        write_run_files(out, to_dict(cfg), {
            **results, **provenance(classes=classnames, templates=templates), "logit_scale": teacher.logit_scale,
            "classifier_source": cfg.classifier or "zero-shot",
        })
    dist.barrier()
    return results


@torch.inference_mode()
def _label_shard(job: ShardJob, emb_dir: Location, classifier: torch.Tensor, scale: float, cfg: Config,
                 device: torch.device) -> None:
    name = sidecar_name(job.name)
    if emb_dir.exists(name) is False:
        raise FileNotFoundError(f"shard {job.name} has no embedding file {emb_dir.ref(name)}: finish `zmdist embed` first")
    emb = EmbeddingShard.load(emb_dir.ref(name))
    if emb.embeddings.shape[1] != classifier.shape[1]:
        raise ValueError(f"classifier{'=' + cfg.classifier if cfg.classifier else ''} has dimension {classifier.shape[1]} "
                         f"but the embeddings of {job.name} have {emb.embeddings.shape[1]}: it belongs to another teacher")
    probs = zero_shot_probs(torch.from_numpy(emb.embeddings).to(device), classifier, scale)
    stats = pseudolabel_stats(probs, cfg.topk)
    keep_full = probs.shape[1] <= cfg.full_probs_max_classes
    PseudolabelShard(
        keys=emb.keys,
        labels=emb.labels,
        pseudolabel=stats.label.cpu().numpy().astype(np.int64),
        confidence=stats.confidence.cpu().numpy().astype(np.float32),
        margin=stats.margin.cpu().numpy().astype(np.float32),
        entropy=stats.entropy.cpu().numpy().astype(np.float32),
        topk_classes=stats.topk_classes.cpu().numpy().astype(np.int64),
        topk_probs=stats.topk_probs.cpu().numpy().astype(np.float32),
        probs=probs.cpu().numpy().astype(np.float16) if keep_full else None,
    ).save(job.output)


def summarise(jobs: list[ShardJob], classes: list[str], cfg: Config, out: Path) -> dict[str, Any]:
    """Histograms and, for labelled samples, accuracy, accuracy at thresholds, ECE and the diagram.

    Sidecars are read one at a time into additive counts (bins, threshold counts, histograms), so memory
    stays that of one shard however many there are."""
    n_classes = len(classes)
    pl_counts = np.zeros(n_classes, np.int64)
    conf_counts = np.zeros(10, np.int64)
    conf_sum, samples, labelled = 0.0, 0, 0
    bins = np.zeros((3, cfg.ece_bins))
    at_thresholds = np.zeros((2, len(cfg.thresholds)), np.int64)
    per_split: dict[str, list[int]] = {}  # split -> [correct, labelled]
    for job in jobs:
        side = PseudolabelShard.load(job.output)
        pl_counts += np.bincount(side.pseudolabel, minlength=n_classes)[:n_classes]
        conf_counts += np.histogram(side.confidence, bins=10, range=(0, 1))[0]
        conf_sum, samples = conf_sum + float(side.confidence.astype(np.float64).sum()), samples + len(side.keys)
        has_gt = side.labels >= 0
        if has_gt.any():
            correct = side.pseudolabel[has_gt] == side.labels[has_gt]
            bins += reliability_sums(side.confidence[has_gt], correct, cfg.ece_bins)
            at_thresholds += threshold_counts(side.confidence[has_gt], correct, cfg.thresholds)
            split = per_split.setdefault(job.split, [0, 0])
            split[0], split[1] = split[0] + int(correct.sum()), split[1] + int(has_gt.sum())
            labelled += int(has_gt.sum())
    results: dict[str, Any] = {
        "samples": samples,
        "pseudolabel_histogram": {c: int(n) for c, n in zip(classes, pl_counts)},
        "confidence_histogram": {"edges": np.linspace(0, 1, 11).round(2).tolist(), "counts": conf_counts.tolist()},
        "mean_confidence": conf_sum / samples if samples else None,
        "labelled_samples": labelled,
    }
    if labelled:
        reliability = bins_from_sums(bins)
        ece = calibration_error(reliability)
        results.update(
            teacher_zero_shot_accuracy=sum(c for c, _ in per_split.values()) / labelled,
            zero_shot_accuracy_per_split={split: c / n for split, (c, n) in sorted(per_split.items())},
            accuracy_at_thresholds=thresholds_from_counts(at_thresholds, labelled, cfg.thresholds),
            ece=ece,
            reliability_diagram=str(reliability_diagram(reliability, ece, out / "reliability.png", "zero-shot")),
        )
    return results
