"""``zmdist train``: a student from teacher pseudolabels and a few labels (ZeroMatch and baselines).

Methods: ``supervised`` (labelled subset only), ``pseudolabel`` (CE on the teacher's hard labels),
``distill`` (KL to the teacher's soft labels at temperature T, or CE on hard ones), ``fixmatch``,
``adamatch``, and ``zeromatch``: stage 0 distils the teacher's hard pseudolabels into the student over the
whole training split (best weights by agreement with the pseudolabels on the eval split, no ground truth
used), then stage 1 loads them, adds the auxiliary head and trains labelled CE + the annealed pseudolabel
term on the auxiliary head + AdaMatch (or FixMatch) consistency on the main head. Each stage resumes.

Batch semantics do not change with the number of processes: ``batch_size`` is the GLOBAL labelled batch
(each of W processes takes ``batch_size / W``), the unlabelled batch is ``uratio`` times it, and ``lr``
is the learning rate of that global batch. Changing W changes neither.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from zmdist import dist
from zmdist.atomic import atomic_write_text
from zmdist.backends import make_backend
from zmdist.config import option, to_dict
from zmdist.data.manifest import Manifest
from zmdist.models import DualHead, create_student
from zmdist.provenance import provenance, write_run_files
from zmdist.train import algorithms as alg
from zmdist.train.data import (
    LabelledSet,
    StreamSample,
    check_sidecars,
    make_views,
    select_labelled,
    stream_loader,
)
from zmdist.train.engine import Engine, EngineConfig, TrainData

NAME = "train"
HELP = "train a student: supervised, pseudolabel, distill, fixmatch, adamatch or zeromatch"
log = logging.getLogger("zmdist")
Method = Literal["supervised", "pseudolabel", "distill", "fixmatch", "adamatch", "zeromatch"]


@dataclass
class Config:
    shards: str = option(help="folder with manifest.json and tar shards (zmdist shard)")
    pseudolabels: str = option("", "folder of pseudolabel sidecars (zmdist pseudolabel); needed by all but supervised")
    method: Method = option("zeromatch", "training method")
    student: str = option("cnn-small", "student: a registered name (cnn-small, cnn-tiny), timm:NAME or torchvision:NAME")
    train_split: str = option("train", "split the student trains on")
    eval_split: str = option("test", "split evaluated exactly once across ranks")
    labels_per_class: int = option(4, "labelled samples per class drawn with the seed")
    labelled_keys: str = option("", "file with one labelled key per line (e.g. from zmdist select); overrides labels_per_class")
    steps: int = option(1000, "optimizer steps (stage 1 for zeromatch)")
    stage0_steps: int = option(500, "zeromatch stage-0 distillation steps")
    batch_size: int = option(32, "GLOBAL labelled batch size (divided between processes)")
    uratio: int = option(1, "unlabelled batch = uratio x batch_size (USB's uratio)")
    lr: float = option(1e-3, "learning rate of the global batch (AdamW), peak of the cosine schedule")
    weight_decay: float = option(5e-4, "weight decay (not on biases and norms)")
    optimizer: Literal["adamw", "sgd"] = option("adamw", "optimizer")
    momentum: float = option(0.9, "SGD momentum")
    warmup_steps: int = option(50, "linear warm-up steps")
    p_cutoff: float = option(0.95, "FixMatch threshold / AdaMatch relative-threshold factor")
    lambda_u: float = option(1.0, "weight of the consistency term")
    lambda_p: float = option(1.0, "zeromatch: weight of the auxiliary pseudolabel term")
    anneal: Literal["linear", "none"] = option("linear", "zeromatch: alpha_t from 0 to 1 (linear) or fixed 1 (none)")
    ssl_method: Literal["adamatch", "fixmatch"] = option("adamatch", "zeromatch: consistency term of stage 1")
    temperature: float = option(1.0, "distill: temperature T of the KL term")
    distill_soft: bool = option(True, "distill: KL to soft probabilities (true) or CE on hard labels (false)")
    confidence_weighted: bool = option(False, "distill: weight each sample by the teacher's confidence")
    pl_threshold: float = option(0.0, "pseudolabel: keep samples whose teacher confidence >= this")
    img_size: int = option(32, "student input size (images are resized to it)")
    hflip: bool = option(True, "random horizontal flips in the weak view (off for digits and text)")
    num_workers: int = option(1, "DataLoader workers per process")
    eval_every: int = option(200, "evaluate every N steps")
    log_every: int = option(25, "log every N steps")
    checkpoint_every: int = option(200, "checkpoint every N steps (and always on SIGTERM/SIGUSR1/SIGUSR2)")
    keep_checkpoints: int = option(2, "checkpoint folders kept")
    backend: Literal["accelerate", "deepspeed"] = option("accelerate", "accelerate (DDP) or deepspeed (ZeRO)")
    fsdp: bool = option(False, "accelerate backend: FSDP instead of DDP")
    zero_stage: int = option(2, "deepspeed backend: ZeRO stage 1, 2 or 3")
    deepspeed_config: str = option("", "deepspeed backend: JSON config file (e.g. launch/deepspeed/zero2.json)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option("auto", "auto = bf16 on GPU, fp32 on CPU")
    resume: Literal["auto", "never"] = option("auto", "continue from OUT's latest checkpoint if there is one")
    seed: int = option(0, "seed of the labelled subset, initialisation and augmentations")
    progress: bool = option(True, "progress bar on rank 0")


def _algorithm(cfg: Config, method: str, num_classes: int):
    if method == "supervised":
        return alg.Supervised()
    if method == "pseudolabel":
        return alg.PseudoLabel(threshold=cfg.pl_threshold)
    if method == "distill":
        return alg.Distill(soft=cfg.distill_soft, temperature=cfg.temperature,
                           confidence_weighted=cfg.confidence_weighted)
    fix = alg.FixMatch(p_cutoff=cfg.p_cutoff, lambda_u=cfg.lambda_u)
    ada = alg.AdaMatch(p_cutoff=cfg.p_cutoff, lambda_u=cfg.lambda_u, num_classes=num_classes)
    if method == "fixmatch":
        return fix
    if method == "adamatch":
        return ada
    return alg.ZeroMatch(ssl_method=ada if cfg.ssl_method == "adamatch" else fix, lambda_p=cfg.lambda_p,
                         anneal=cfg.anneal)


def _run_stage(cfg: Config, method: str, steps: int, out: Path, info: dist.DistInfo, manifest: Manifest,
               init: Path | None, select_metric: str, dual_head: bool) -> dict[str, Any]:
    """Build data, model, backend and engine for one stage and fit it."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    num_classes = len(manifest.classes)
    algorithm = _algorithm(cfg, method, num_classes)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} is the global batch: it must divide by the "
                         f"{info.world_size} processes")
    per_rank = cfg.batch_size // info.world_size
    backend = make_backend(cfg.backend, **({"precision": cfg.precision, "fsdp": cfg.fsdp} if cfg.backend == "accelerate"
                                           else {"zero_stage": cfg.zero_stage, "config_path": cfg.deepspeed_config,
                                                 "precision": cfg.precision, "micro_batch": per_rank}))
    if backend.world_size != info.world_size:
        raise RuntimeError(f"backend {cfg.backend} got world size {backend.world_size}, the launcher said "
                           f"{info.world_size}: on CPU start with torchrun or `accelerate launch` and the CPU config")
    views = make_views(cfg.img_size, cfg.hflip)
    pl_dir = cfg.pseudolabels or None
    if pl_dir is None and method != "supervised":
        raise ValueError(f"method={method} learns from pseudolabels: set pseudolabels=DIR (zmdist pseudolabel)")
    if pl_dir is not None:
        check_sidecars(pl_dir, manifest, [cfg.train_split, cfg.eval_split])
    labelled = None
    if algorithm.uses_labelled:
        if pl_dir is None and not cfg.labelled_keys:
            raise ValueError("supervised needs pseudolabels=DIR (its sidecars carry the labels used to draw the "
                             "labelled subset) or labelled_keys=FILE")
        keys = select_labelled(pl_dir, manifest, cfg.train_split, cfg.labels_per_class, cfg.seed, cfg.labelled_keys)
        if backend.is_main:
            atomic_write_text(out / "labelled_keys.txt", "\n".join(keys) + "\n")
        labelled = LabelledSet(manifest, cfg.train_split, keys, pl_dir, views, cfg.seed)
    stream = None
    if algorithm.uses_stream:
        sample = StreamSample(views, cfg.seed, pl_dir, num_classes, strong=algorithm.needs_strong)
        ubatch = per_rank * (cfg.uratio if algorithm.uses_labelled else 1)
        stream = stream_loader(cfg.shards, cfg.train_split, info.rank, info.world_size, ubatch, cfg.num_workers,
                               sample, mode="train", seed=cfg.seed)
    eval_sample = StreamSample(views, cfg.seed, pl_dir, num_classes, strong=False, eval_view=True)
    evaluation = stream_loader(cfg.shards, cfg.eval_split, info.rank, info.world_size, 256, cfg.num_workers,
                               eval_sample, mode="eval", seed=cfg.seed)
    model: torch.nn.Module = create_student(cfg.student, num_classes)
    if init is not None:
        model.load_state_dict(load_file(str(init)))
        log.info("train: initialised from %s", init)
    if dual_head:
        model = DualHead(model)
    engine_cfg = EngineConfig(
        steps=steps, lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer=cfg.optimizer, momentum=cfg.momentum,
        warmup_steps=min(cfg.warmup_steps, steps // 2), eval_every=cfg.eval_every, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints, select_metric=select_metric,
        progress=cfg.progress,
    )
    log.info("train[%s]: %s, %d steps, %s backend, world %d, per-process batch %d", method, cfg.student, steps,
             cfg.backend, backend.world_size, per_rank)
    data = TrainData(labelled=labelled, labelled_batch=per_rank, labelled_workers=min(cfg.num_workers, 1),
                     stream=stream, eval=evaluation,
                     num_classes=num_classes)
    result = Engine(engine_cfg, backend, algorithm, data, out, model).fit(resume=cfg.resume == "auto")
    result["world_size"] = backend.world_size
    return result


def run(cfg: Config, out: Path) -> dict[str, Any]:
    info = dist.detect()
    log.info("train: %s", dist.describe(info))
    manifest = Manifest.load(cfg.shards)
    stages: dict[str, Any] = {}
    if cfg.method == "zeromatch":
        stage0 = out / "stage0"
        stages["stage0"] = _run_stage(cfg, "pseudolabel", cfg.stage0_steps, stage0, info, manifest, None,
                                      "pseudolabel_agreement", dual_head=False)
        init = stage0 / "best.safetensors"
        stages["stage1"] = _run_stage(cfg, "zeromatch", cfg.steps, out / "stage1", info, manifest, init, "top1",
                                      dual_head=True)
        last = stages["stage1"]
    else:
        last = stages["main"] = _run_stage(cfg, cfg.method, cfg.steps, out, info, manifest, None, "top1",
                                           dual_head=False)
    results = {
        "stage": NAME,
        "method": cfg.method,
        "world_size": last["world_size"],
        "accuracy": last["final"]["top1"],
        "class_weighted_accuracy": last["final"]["class_weighted_accuracy"],
        "per_class_accuracy": last["final"]["per_class_accuracy"],
        "confusion_matrix": last["final"]["confusion_matrix"],
        "best_accuracy": last["best"],
        "stages": {k: {"final_top1": v["final"]["top1"], "best": v["best"], "best_step": v["best_step"],
                       "resumed": v["resumed"], "history": v["history"]} for k, v in stages.items()},
    }
    if info.is_main:
        write_run_files(out, to_dict(cfg), {**results, **provenance(seed=cfg.seed, classes=manifest.classes)})
    return results
