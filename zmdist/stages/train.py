"""``zmdist train``: a student from teacher pseudolabels and a few labels (ZeroMatch and baselines).

The method (``method.name=...``, one file each in ``zmdist/algorithms/``) plans one or more phases;
this stage builds data, model, backend and engine for each phase and runs them in order (ZeroMatch:
``stage0`` distillation, selected on a hold-out slice of the training split, then ``stage1`` from its
best weights). The backend (``backend.name=accelerate|deepspeed``) owns distribution. Each phase resumes.

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
from zmdist.algorithms import METHODS, PlanContext
from zmdist.atomic import atomic_write_text
from zmdist.backends import BACKENDS
from zmdist.config import choice, option, to_dict
from zmdist.data.manifest import Manifest
from zmdist.formats import PseudolabelStore
from zmdist.models import DualHead, create_student
from zmdist.provenance import provenance, write_run_files
from zmdist.train.augment import make_views
from zmdist.train.contract import Phase
from zmdist.train.data import (
    LabelledSet,
    StreamSample,
    load_sidecars,
    select_labelled,
    split_holdout,
    stream_loader,
)
from zmdist.train.engine import Engine, EngineConfig, EngineHooks, TrainData
from zmdist.train.evaluation import Evaluator
from zmdist.train.run_log import WandbRun, require_wandb

NAME = "train"
HELP = "train a student: supervised, pseudolabel, distill, fixmatch, adamatch or zeromatch (method.name=...)"
log = logging.getLogger("zmdist")
EVAL_BATCH = 256


@dataclass
class LogConfig:
    """Where a run's numbers go besides ``log.jsonl`` and TensorBoard (both always written)."""

    wandb: bool = option(False, "also log to Weights & Biases (needs `pip install wandb`)")
    wandb_project: str = option("zmdist", "W&B project")
    wandb_mode: Literal["online", "offline", "disabled"] | None = option(
        None, "online, offline (no network; upload later with `wandb sync OUT/wandb/offline-run-*`) or disabled; "
              "null: $WANDB_MODE, else online")


@dataclass
class Config:
    shards: str = option(help="shards of `zmdist shard`: a folder, a URL (https://, s3://, gs://) or a pipe: "
                              "template with {name}")
    pseudolabels: str = option("", "pseudolabel sidecars of `zmdist pseudolabel` (folder, URL or pipe: template); "
                                   "needed by all but supervised")
    shard_access: Literal["auto", "random", "stream"] = option(
        "auto", "read shards by seeking (random; local only) or as streams with a shuffle buffer (stream); "
                "auto = stream for remote shards")
    shuffle_buffer: int = option(1000, "samples in a stream's shuffle buffer (shard_access=stream)", min=1)
    method: Any = choice(METHODS, "zeromatch", "training method; its options are method.<option>")
    backend: Any = choice(BACKENDS, "accelerate", "accelerate (DDP) or deepspeed (ZeRO); options backend.<option>")
    student: str = option("cnn-small", "student: a registered name (cnn-small, cnn-tiny), timm:NAME or torchvision:NAME")
    student_options: dict[str, Any] = option(factory=dict, help="keyword arguments of the student's constructor "
                                             "(timm: e.g. {patch_size: 2, img_size: 32} for a ViT-S/2 at 32 px)")
    train_split: str = option("train", "split the student trains on")
    eval_split: str = option("test", "split evaluated exactly once across ranks")
    holdout_fraction: float = option(0.1, "share of the train split held out (seeded, no labels) where a phase selects "
                                          "by pseudolabel agreement (zeromatch stage 0); a 'val' split replaces it",
                                     min=0, min_exclusive=True, max=1)
    labels_per_class: int = option(4, "labelled samples per class drawn with the seed", min=1)
    labelled_keys: str = option("", "file with one labelled key per line (e.g. from zmdist select); overrides labels_per_class")
    steps: int = option(1000, "optimizer steps (zeromatch: of stage 1; stage 0 is method.stage0_steps)", min=1)
    batch_size: int = option(32, "GLOBAL labelled batch size (divided between processes)", min=1)
    uratio: int = option(1, "unlabelled batch = uratio x batch_size (USB's uratio)", min=1)
    lr: float = option(1e-3, "learning rate of the global batch, peak of the warm-up + cosine schedule",
                       min=0, min_exclusive=True)
    weight_decay: float = option(5e-4, "weight decay (not on biases and norms)", min=0)
    optimizer: Literal["adamw", "sgd"] = option("adamw", "optimizer")
    momentum: float = option(0.9, "SGD momentum", min=0, max=1)
    warmup_steps: int = option(50, "linear warm-up steps", min=0)
    img_size: int = option(32, "student input size (>= 96 px: USB's large-image views)", min=1)
    hflip: bool = option(True, "random horizontal flips in the weak view (off for digits and text)")
    strong_augment: Literal["usb", "torchvision"] = option(
        "usb", "strong view: USB's RandAugment (3 ops, random strengths) + Cutout, or torchvision's RandAugment(n, m)")
    randaugment_ops: int = option(2, "strong_augment=torchvision: RandAugment's number of ops", min=0)
    randaugment_magnitude: int = option(10, "strong_augment=torchvision: RandAugment's magnitude", min=0, max=30)
    num_workers: int = option(1, "DataLoader workers per process", min=0)
    eval_every: int = option(200, "evaluate every N steps", min=1)
    log_every: int = option(25, "log every N steps", min=1)
    checkpoint_every: int = option(200, "checkpoint every N steps (and always on SIGTERM/SIGUSR1/SIGUSR2)", min=0)
    keep_checkpoints: int = option(2, "checkpoint folders kept", min=1)
    resume: Literal["auto", "never"] = option("auto", "continue from OUT's latest checkpoint if there is one")
    seed: int = option(0, "seed of the labelled subset, hold-out, initialisation and augmentations")
    progress: bool = option(True, "progress bar on rank 0")
    log: LogConfig = option(factory=LogConfig, help="extra metric loggers: log.wandb=true, log.wandb_project=...")


@dataclass
class _Shared:
    """What every phase of one run shares: rank, manifest, the one sidecar store, the labelled keys."""

    info: dist.DistInfo
    manifest: Manifest
    store: PseudolabelStore | None
    labelled_keys: list[str] | None


def _evaluation(cfg: Config, phase: Phase, shared: _Shared, views) -> tuple[Evaluator, str, list | None]:
    """The evaluator that selects this phase's best weights, a sentence saying which images it uses, and
    the tar positions of the train split this phase may train on (None = all; minus the hold-out)."""
    num_classes, info = len(shared.manifest.classes), shared.info
    sample = StreamSample(views, cfg.seed, shared.store, num_classes, strong=False, eval_view=True)
    if phase.selection == "top1":
        _, loader = stream_loader(cfg.shards, cfg.eval_split, info.rank, info.world_size, EVAL_BATCH, cfg.num_workers,
                                  sample, mode="eval", seed=cfg.seed, access=cfg.shard_access,
                                  shuffle_buffer=cfg.shuffle_buffer)
        return (Evaluator(loader, num_classes, name=cfg.eval_split),
                f"top-1 on split {cfg.eval_split!r} (USB's convention: selection sees those labels; "
                "the headline is the final model)", None)
    if "val" in shared.manifest.splits and cfg.train_split != "val":
        _, loader = stream_loader(cfg.shards, "val", info.rank, info.world_size, EVAL_BATCH, cfg.num_workers,
                                  sample, mode="eval", seed=cfg.seed, access=cfg.shard_access,
                                  shuffle_buffer=cfg.shuffle_buffer)
        return (Evaluator(loader, num_classes, ground_truth=False, name="val"),
                f"agreement with the teacher's pseudolabels on split 'val' ({shared.manifest.split('val').total} "
                "images; no labels)", None)
    holdout = split_holdout(shared.manifest.counts(cfg.train_split), cfg.holdout_fraction, cfg.seed)
    _, loader = stream_loader(cfg.shards, cfg.train_split, info.rank, info.world_size, EVAL_BATCH, cfg.num_workers,
                              sample, mode="eval", seed=cfg.seed, positions=holdout.hold, access=cfg.shard_access,
                              shuffle_buffer=cfg.shuffle_buffer)
    total = shared.manifest.split(cfg.train_split).total
    return (Evaluator(loader, num_classes, ground_truth=False, name="holdout"),
            f"agreement with the teacher's pseudolabels on a hold-out of {holdout.size} of the {total} images of "
            f"split {cfg.train_split!r} (holdout_fraction={cfg.holdout_fraction}, seed {cfg.seed}; no labels; "
            "not trained on in this phase)", holdout.keep)


def _wandb_run(cfg: Config, out: Path, phase: Phase) -> WandbRun | None:
    """W&B settings of one phase of the run in ``out`` (None unless ``log.wandb=true``): named after the run
    folder, so runs are found by the folder that holds their files; phases are grouped under it."""
    if not cfg.log.wandb:
        return None
    run_name = out.resolve().name
    return WandbRun(project=cfg.log.wandb_project, name=f"{run_name}/{phase.name}" if phase.name else run_name,
                    group=run_name, job_type=phase.name or "train", mode=cfg.log.wandb_mode, config=to_dict(cfg))


def _run_phase(cfg: Config, phase: Phase, out: Path, shared: _Shared, init: Path | None,
               hooks: EngineHooks | None, wandb: WandbRun | None) -> dict[str, Any]:
    """Build data, model, backend and engine for one phase and fit it."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    info, manifest = shared.info, shared.manifest
    num_classes = len(manifest.classes)
    per_rank = cfg.batch_size // info.world_size
    backend = cfg.backend.build(micro_batch=per_rank)
    if backend.world_size != info.world_size:
        raise RuntimeError(f"backend {cfg.backend.name} got world size {backend.world_size}, the launcher said "
                           f"{info.world_size}: on CPU start with torchrun or `accelerate launch` and the CPU config")
    views = make_views(cfg.img_size, cfg.hflip, cfg.strong_augment, cfg.randaugment_ops, cfg.randaugment_magnitude)
    algorithm = phase.algorithm
    evaluator, selected_on, train_positions = _evaluation(cfg, phase, shared, views)
    labelled = None
    if algorithm.needs.labelled:
        assert shared.labelled_keys is not None
        if backend.is_main:
            atomic_write_text(out / "labelled_keys.txt", "\n".join(shared.labelled_keys) + "\n")
        labelled = LabelledSet(manifest, cfg.train_split, shared.labelled_keys, views, cfg.seed, shared.store)
    stream = None
    if algorithm.needs.stream:
        sample = StreamSample(views, cfg.seed, shared.store, num_classes, strong=algorithm.needs.strong)
        ubatch = per_rank * (cfg.uratio if algorithm.needs.labelled else 1)
        stream = stream_loader(cfg.shards, cfg.train_split, info.rank, info.world_size, ubatch, cfg.num_workers,
                               sample, mode="train", seed=cfg.seed, positions=train_positions, access=cfg.shard_access,
                               shuffle_buffer=cfg.shuffle_buffer)
    model: torch.nn.Module = create_student(cfg.student, num_classes, **cfg.student_options)
    if init is not None:
        model.load_state_dict(load_file(str(init)))
        log.info("train[%s]: initialised from %s", phase.name, init)
    if phase.dual_head:
        model = DualHead(model)
    engine_cfg = EngineConfig(
        steps=phase.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer=cfg.optimizer, momentum=cfg.momentum,
        warmup_steps=min(cfg.warmup_steps, phase.steps // 2), eval_every=cfg.eval_every, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
        select_metric="top1" if phase.selection == "top1" else "pseudolabel_agreement", early_stop=phase.early_stop,
        progress=cfg.progress, wandb=wandb,
    )
    log.info("train[%s %s]: %s, %d steps, %s backend, world %d, per-process batch %d; best weights by %s",
             cfg.method.name, phase.name or "-", cfg.student, phase.steps, cfg.backend.name, backend.world_size,
             per_rank, selected_on)
    data = TrainData(labelled=labelled, labelled_batch=per_rank, labelled_workers=min(cfg.num_workers, 1),
                     stream=stream, evaluator=evaluator)
    result = Engine(engine_cfg, backend, algorithm, data, out, model, hooks, name=phase.name).fit(
        resume=cfg.resume == "auto")
    # what every rank really got per step: (labelled, unlabelled) batch sizes, rank by rank
    result["batch_sizes_per_rank"] = dist.all_gather_objects(result.pop("batch_sizes"))
    return {**result, "world_size": backend.world_size, "selected_on": selected_on}


def _shared(cfg: Config, manifest: Manifest, phases: list[Phase]) -> _Shared:
    """Checks and data every phase needs, loaded once: sidecars (one store) and the labelled keys."""
    info = dist.detect()
    log.info("train: %s", dist.describe(info))
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} is the global batch: it must divide by the "
                         f"{info.world_size} processes")
    needs_stream = any(p.algorithm.needs.stream for p in phases)
    if needs_stream and not cfg.pseudolabels:
        raise ValueError(f"method.name={cfg.method.name} learns from pseudolabels: set pseudolabels=DIR "
                         "(zmdist pseudolabel)")
    splits = [cfg.train_split, cfg.eval_split] + (["val"] if "val" in manifest.splits else [])
    store = load_sidecars(cfg.pseudolabels, manifest, splits) if cfg.pseudolabels else None
    keys = None
    if any(p.algorithm.needs.labelled for p in phases):
        keys = select_labelled(store, manifest, cfg.train_split, cfg.labels_per_class, cfg.seed, cfg.labelled_keys)
    return _Shared(info, manifest, store, keys)


def run(cfg: Config, out: Path, hooks: EngineHooks | None = None) -> dict[str, Any]:
    """Run the method's phases in order; ``hooks`` are passed to every phase's engine (tests)."""
    if cfg.log.wandb:
        require_wandb()
    manifest = Manifest.load(cfg.shards)
    phases = cfg.method.phases(PlanContext(num_classes=len(manifest.classes), steps=cfg.steps))
    shared = _shared(cfg, manifest, phases)
    phase_results: dict[str, dict[str, Any]] = {}
    for phase in phases:
        init = out / phase.init_from / "best.safetensors" if phase.init_from else None
        phase_results[phase.name or "main"] = _run_phase(cfg, phase, out / phase.name, shared, init, hooks,
                                                         _wandb_run(cfg, out, phase))
    last = list(phase_results.values())[-1]
    final = last["final"]
    results = {
        "stage": NAME,
        "method": cfg.method.name,
        "world_size": last["world_size"],
        "accuracy": final["top1"],
        "class_weighted_accuracy": final["class_weighted_accuracy"],
        "per_class_accuracy": final["per_class_accuracy"],
        "confusion_matrix": final["confusion_matrix"],
        "best_checkpoint": {
            "top1": last["best"], "step": last["best_step"],
            "note": f"best.safetensors was selected by {last['selected_on']}: optimistic; `accuracy` (the final "
                    "model) is the headline figure",
        },
        "phases": {name: {"steps_run": r["steps_run"], "best": r["best"], "best_step": r["best_step"],
                          "selected_on": r["selected_on"], "final": {k: v for k, v in r["final"].items()
                                                                     if k != "confusion_matrix"},
                          "resumed": r["resumed"], "history": r["history"],
                          "batch_sizes_per_rank": r["batch_sizes_per_rank"]}
                   for name, r in phase_results.items()},
    }
    if shared.info.is_main:
        write_run_files(out, to_dict(cfg), {**results, **provenance(seed=cfg.seed, classes=shared.manifest.classes)})
    return results
