"""``zmdist train``: a student from teacher pseudolabels and a few labels (ZeroMatch and baselines).

The method (``method.name=...``, one file each in ``zmdist/algorithms/``) plans one or more phases;
this stage builds data, model, backend and engine for each phase and runs them in order (ZeroMatch:
``stage0`` distillation, selected on training images (a hold-out slice by default), then ``stage1`` from
its best weights). The backend (``backend.name=accelerate|deepspeed``) owns distribution. Each phase resumes.

Batch semantics do not change with the number of processes: ``batch_size`` is the GLOBAL labelled batch
(each of W processes takes ``batch_size / W``), the unlabelled batch is ``uratio`` times it, and ``lr``
is the learning rate of that global batch. Changing W changes neither.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors.torch import load_file

from zmdist import dist
from zmdist.algorithms import METHODS, PlanContext
from zmdist.atomic import atomic_write_text
from zmdist.backends import BACKENDS
from zmdist.config import ConfigError, choice, option, to_dict
from zmdist.data.labels_csv import HumanLabels, csv_text, read_labels_csv
from zmdist.data.manifest import Manifest
from zmdist.formats import PseudolabelStore
from zmdist.models import DualHead
from zmdist.models.export import describe, export_run
from zmdist.models.student_init import StudentConfig, StudentInit, build_student, prepare_student
from zmdist.provenance import provenance, write_run_files
from zmdist.stages.common import warn_single_class
from zmdist.stages.outdir import own_output
from zmdist.train.augment import make_views
from zmdist.train.contract import Phase
from zmdist.train.data import (
    LabelledSet,
    StreamSample,
    load_sidecars,
    select_labelled,
    split_holdout,
    split_train_sample,
    stream_loader,
)
from zmdist.train.engine import Engine, EngineConfig, EngineHooks, TrainData
from zmdist.train.evaluation import Evaluator
from zmdist.train.run_log import WandbRun, require_wandb

NAME = "train"
HELP = "train a student: supervised, pseudolabel, distill, fixmatch, adamatch or zeromatch (method.name=...)"
log = logging.getLogger("zmdist")
EVAL_BATCH = 256
EXPORT_FOLDER = "export"  # OUT/export: the final model as `zmdist export` writes it (model.safetensors + config.json)


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
    student: StudentConfig = option(factory=StudentConfig, help="the student: student.name=timm:NAME, "
                                    "student.pretrained=FILE|hf-hub:ORG/REPO|timm, student.drop_path=0.2, ...")
    train_split: str = option("train", "split the student trains on")
    eval_split: str = option("test", "split evaluated exactly once across ranks")
    holdout_fraction: float = option(0.1, "share of the train split held out (seeded, no labels) where a phase selects "
                                          "by pseudolabel agreement (zeromatch stage 0, stage0_selection=holdout); "
                                          "a 'val' split replaces it",
                                     min=0, min_exclusive=True, max=1)
    labels_per_class: int = option(4, "labelled samples per class drawn with the seed", min=1)
    labelled_keys: str = option("", "file with one labelled key per line (e.g. from zmdist select); overrides labels_per_class")
    labels: str = option("", "CSV key,label of human labels (label: class name or index; e.g. select's to_label.csv "
                             "filled in): the labelled set is exactly these keys with these labels, which override "
                             "the shards' (shards without labels work); overrides labels_per_class")
    steps: int = option(1000, "optimizer steps (zeromatch: of stage 1; stage 0 is method.stage0_steps)", min=1)
    batch_size: int = option(32, "GLOBAL labelled batch size (divided between processes)", min=1)
    uratio: int = option(1, "unlabelled batch = uratio x batch_size (USB's uratio)", min=1)
    lr: float = option(1e-3, "learning rate of the global batch, peak of the warm-up + cosine schedule",
                       min=0, min_exclusive=True)
    weight_decay: float = option(5e-4, "weight decay (not on biases, norms, pos_embed/cls_token or what the "
                                       "model's no_weight_decay() lists, as USB)", min=0)
    optimizer: Literal["adamw", "sgd"] = option("adamw", "optimizer")
    momentum: float = option(0.9, "SGD momentum", min=0, max=1)
    warmup_steps: int = option(50, "linear warm-up steps", min=0)
    schedule: Literal["cosine", "usb"] = option(
        "cosine", "lr after the warm-up: cosine = half a cosine period, to 0 at the last step; usb = USB's: "
                  "warm-up from 0, then 7/16 of a period, ending at 0.195 x lr")
    layer_decay: float = option(1.0, "ViT students: block i of L trains at lr x layer_decay^(L-i), the patch "
                                     "embedding at ^(L+1), the head at lr (USB's grouping; USB/ZeroMatch use 0.5 "
                                     "or 0.65); 1 = off, any student", min=0, min_exclusive=True, max=1)
    img_size: int = option(32, "size of the views the student sees (>= 96 px: USB's large-image views); a timm ViT "
                               "is built for it with student.img_size", min=1)
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

    # the options' older spellings (zmdist.config): configs written before `student` became a section
    ALIASES: ClassVar[dict[str, str]] = {"student": "student.name", "student_options": "student.options"}


@dataclass
class _Shared:
    """What every phase of one run shares: rank, manifest, the one sidecar store, the labelled keys and,
    with ``labels=FILE``, their human labels."""

    info: dist.DistInfo
    manifest: Manifest
    store: PseudolabelStore | None
    labelled_keys: list[str] | None
    student: StudentInit
    human_labels: HumanLabels | None = None


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
    if phase.selection == "train_sample_agreement":
        sampled = split_train_sample(shared.manifest.counts(cfg.train_split), cfg.seed)
        _, loader = stream_loader(cfg.shards, cfg.train_split, info.rank, info.world_size, EVAL_BATCH, cfg.num_workers,
                                  sample, mode="eval", seed=cfg.seed, positions=sampled, access=cfg.shard_access,
                                  shuffle_buffer=cfg.shuffle_buffer)
        return (Evaluator(loader, num_classes, ground_truth=False, name="train_sample"),
                f"agreement with the teacher's pseudolabels on a sample of {sum(map(len, sampled))} of the "
                f"{shared.manifest.split(cfg.train_split).total} images of split {cfg.train_split!r} (seed {cfg.seed}; "
                "no labels; trained on in this phase: a measure of fit, as the released ZeroMatch code)", None)
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
    views = make_views(cfg.img_size, cfg.hflip, cfg.strong_augment, cfg.randaugment_ops, cfg.randaugment_magnitude,
                       mean=shared.student.mean, std=shared.student.std)
    algorithm = phase.algorithm
    evaluator, selected_on, train_positions = _evaluation(cfg, phase, shared, views)
    labelled = None
    if algorithm.needs.labelled:
        assert shared.labelled_keys is not None
        if backend.is_main:
            atomic_write_text(out / "labelled_keys.txt", "\n".join(shared.labelled_keys) + "\n")
            if shared.human_labels is not None:  # the labels this run trained on, should labels= change later
                atomic_write_text(out / "labels.csv", csv_text(["key", "label"], [
                    [k, manifest.classes[shared.human_labels[k]]] for k in shared.labelled_keys]))
        labelled = LabelledSet(manifest, cfg.train_split, shared.labelled_keys, views, cfg.seed, shared.store,
                               labels=shared.human_labels)
        if backend.is_main:
            warn_single_class(labelled.labels, manifest.classes, f"train[{phase.name or 'train'}]: labelled set")
    stream = None
    if algorithm.needs.stream:
        sample = StreamSample(views, cfg.seed, shared.store, num_classes, strong=algorithm.needs.strong)
        ubatch = per_rank * (cfg.uratio if algorithm.needs.labelled else 1)
        stream = stream_loader(cfg.shards, cfg.train_split, info.rank, info.world_size, ubatch, cfg.num_workers,
                               sample, mode="train", seed=cfg.seed, positions=train_positions, access=cfg.shard_access,
                               shuffle_buffer=cfg.shuffle_buffer)
    model: torch.nn.Module = build_student(cfg.student, num_classes)
    if init is not None:
        model.load_state_dict(load_file(str(init)))
        log.info("train[%s]: initialised from %s", phase.name, init)
    else:  # student.pretrained's tensors (none for random weights)
        shared.student.apply(model)
    if phase.dual_head:
        model = DualHead(model)
    engine_cfg = EngineConfig(
        steps=phase.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer=cfg.optimizer, momentum=cfg.momentum,
        warmup_steps=min(cfg.warmup_steps if phase.warmup_steps is None else phase.warmup_steps, phase.steps // 2),
        eval_every=cfg.eval_every if phase.eval_every is None else phase.eval_every, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
        select_metric="top1" if phase.selection == "top1" else "pseudolabel_agreement", early_stop=phase.early_stop,
        early_stop_strict=phase.early_stop_strict,
        layer_decay=cfg.layer_decay, schedule=cfg.schedule, progress=cfg.progress, wandb=wandb,
    )
    log.info("train[%s %s]: %s, %d steps, %s backend, world %d, per-process batch %d; best weights by %s",
             cfg.method.name, phase.name or "-", cfg.student.name, phase.steps, cfg.backend.name, backend.world_size,
             per_rank, selected_on)
    data = TrainData(labelled=labelled, labelled_batch=per_rank, labelled_workers=min(cfg.num_workers, 1),
                     stream=stream, evaluator=evaluator)
    result = Engine(engine_cfg, backend, algorithm, data, out, model, hooks, name=phase.name).fit(
        resume=cfg.resume == "auto")
    # what every rank really got per step: (labelled, unlabelled) batch sizes, rank by rank
    result["batch_sizes_per_rank"] = dist.all_gather_objects(result.pop("batch_sizes"))
    return {**result, "world_size": backend.world_size, "selected_on": selected_on}


def _shared(cfg: Config, manifest: Manifest, phases: list[Phase], student: StudentInit) -> _Shared:
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
    keys, human = None, None
    if any(p.algorithm.needs.labelled for p in phases):
        if cfg.labels:
            human = read_labels_csv(cfg.labels, manifest.classes)
            if store is not None:  # the split's keys are at hand: a wrong key is named before any phase trains
                split_keys = {k for s in manifest.split(cfg.train_split).shards
                              for k in store.shard(s.name).keys.tolist()}
                human.require_known(split_keys, f"split {cfg.train_split!r} of the shards")
            keys = sorted(human)
        else:
            keys = select_labelled(store, manifest, cfg.train_split, cfg.labels_per_class, cfg.seed,
                                   cfg.labelled_keys)
    return _Shared(info, manifest, store, keys, student, human)


def run(cfg: Config, out: Path, hooks: EngineHooks | None = None) -> dict[str, Any]:
    """Run the method's phases in order; ``hooks`` are passed to every phase's engine (tests). Rank 0
    holds ``out`` (``zmdist.stages.outdir``), so a second run into it is refused."""
    if cfg.labels and cfg.labelled_keys:
        raise ConfigError(f"labels={cfg.labels} and labelled_keys={cfg.labelled_keys}: both say which samples are "
                          "labelled; give one (labels= also carries the labels)")
    # the student section checked and its weights read before OUT exists: a bad student.* leaves no folder
    manifest = Manifest.load(cfg.shards)  # read once (a remote manifest is a download)
    student = prepare_student(cfg.student, len(manifest.classes), cfg.img_size)
    with own_output(out, NAME, main=dist.detect().is_main):
        return _run(cfg, out, hooks, manifest, student)


def _run(cfg: Config, out: Path, hooks: EngineHooks | None, manifest: Manifest,
         student: StudentInit) -> dict[str, Any]:
    if cfg.log.wandb:
        require_wandb()
    phases = cfg.method.phases(PlanContext(num_classes=len(manifest.classes), steps=cfg.steps))
    shared = _shared(cfg, manifest, phases, student)
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
        "classes": shared.manifest.classes,
        "student_init": shared.student.summary(),
        "world_size": last["world_size"],
        "accuracy": final["top1"],
        "class_weighted_accuracy": final["class_weighted_accuracy"],
        "per_class_accuracy": final["per_class_accuracy"],
        "confusion_matrix": final["confusion_matrix"],
        "best_checkpoint": {
            "top1": last["best"], "step": last["best_step"], "selection": phases[-1].selection,
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
        exported = export_run(out, out / EXPORT_FOLDER)  # the headline model, loadable without zmdist's wrappers
        log.info("train: exported %s to %s", describe(exported), out / EXPORT_FOLDER)
    return results
