"""The training loop: steps, periodic evaluation, best-weights selection, checkpoints and exact resume.

It knows no method and no backend: an ``Algorithm`` turns a ``Batch`` into a loss (plus named terms to
log) and a ``Backend`` owns the distributed model and optimizer. Logging (``RunLog``), evaluation
(``Evaluator``) and stop signals (``SignalGuard``) are small components it calls. The data position
(epoch and batch within it of the unlabelled stream) and the algorithm's statistics are checkpointed
with the weights, and all augmentation randomness is seeded per sample, so a resumed run continues
exactly where the killed one was.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch

from zmdist.atomic import atomic_safetensors, atomic_torch_save, clean_temp_dir
from zmdist.backends.base import Backend
from zmdist.progress import Progress
from zmdist.train.checkpoint import (
    candidates,
    checkpoint_dir,
    clean_leftovers,
    partial_dir,
    publish,
    read_state,
    write_state,
)
from zmdist.train.contract import Algorithm, Batch, Interrupted
from zmdist.train.evaluation import Evaluator
from zmdist.train.run_log import RunLog, WandbRun
from zmdist.train.param_groups import param_groups
from zmdist.train.schedule import SCHEDULES
from zmdist.train.signals import SignalGuard

log = logging.getLogger("zmdist")


@dataclass
class EngineConfig:
    steps: int
    lr: float
    weight_decay: float
    optimizer: str
    momentum: float
    warmup_steps: int
    eval_every: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    select_metric: str  # "top1" (ground truth) or "pseudolabel_agreement" (ZeroMatch stage 0, on train images)
    early_stop: float | None = None  # stop once the select metric reaches this
    early_stop_strict: bool = False  # ... only once it exceeds it (the released ZeroMatch code's check)
    layer_decay: float = 1.0  # ViT students: lr x layer_decay^(top - layer) (zmdist.train.param_groups)
    schedule: Literal["cosine", "usb"] = "cosine"  # zmdist.train.schedule.SCHEDULES
    progress: bool = True
    wandb: WandbRun | None = None  # also log to Weights & Biases (main rank)


@dataclass
class EngineHooks:
    """Callbacks for tests and tools, injected by the caller (production runs pass none).
    ``on_step_end(phase, step)`` runs on every rank after each optimizer step, before the stop check."""

    on_step_end: Callable[[str, int], None] | None = None


@dataclass
class TrainData:
    """Per-rank data: the labelled set (``labelled_batch`` per rank), the unlabelled stream, the evaluator."""

    labelled: Any | None  # zmdist.train.data.LabelledSet
    labelled_batch: int
    labelled_workers: int
    stream: tuple[Any, Any] | None  # (ShardDataset, DataLoader)
    evaluator: Evaluator


@dataclass
class _Position:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float = -1.0
    best_step: int = -1
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


class Engine:
    def __init__(self, cfg: EngineConfig, backend: Backend, algorithm: Algorithm, data: TrainData, out: Path,
                 model: torch.nn.Module, hooks: EngineHooks | None = None, name: str = ""):
        self.name = name
        self.cfg, self.backend, self.algorithm, self.data, self.out = cfg, backend, algorithm, data, out
        self.hooks = hooks or EngineHooks()
        self._model = model
        self.pos = _Position()
        self.batch_sizes: set[tuple[int, int]] = set()  # (labelled, unlabelled) per step on this rank

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimizer over ``param_groups`` (each group's lr is its scale x the peak lr; the backend's
        scheduler multiplies them all by the schedule)."""
        groups = param_groups(model, self.cfg.lr, self.cfg.weight_decay, self.cfg.layer_decay)
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum, nesterov=True)
        return torch.optim.AdamW(groups, lr=self.cfg.lr)

    # ---- data --------------------------------------------------------------------------------
    def _stream(self) -> Iterator[tuple[int, int, Any]]:
        """(epoch, batch index, batch) from the saved position on; epochs follow each other forever. A
        resumed epoch starts at its saved batch without reading the batches before it (``set_epoch``)."""
        ds, loader = self.data.stream
        epoch, skip = self.pos.epoch, self.pos.batch_in_epoch
        while True:
            ds.set_epoch(epoch, skip_batches=skip)
            for i, batch in enumerate(loader, start=skip):
                yield epoch, i, batch
            epoch, skip = epoch + 1, 0

    def _next_batch(self, labelled: Iterator | None, stream: Iterator | None) -> Batch:
        batch = Batch()
        if labelled is not None:
            lb = next(labelled)
            batch.x_lb, batch.y_lb, batch.yp_lb = lb.x, lb.y, lb.pseudolabel
        if stream is not None:
            epoch, index, item = next(stream)
            self.pos.epoch, self.pos.batch_in_epoch = epoch, index + 1
            batch.x_ulb_w, batch.yp_ulb = item.weak, item.pseudolabel
            batch.conf_ulb, batch.probs_ulb = item.confidence.float(), item.probs
            batch.x_ulb_s = item.strong if item.strong.numel() else None
        return batch.to(self.backend.device)

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Every rank writes its part into a partial folder; rank 0 renames it into place when all are done."""
        folder = checkpoint_dir(self.out, self.pos.step)
        partial = partial_dir(folder)
        if self.backend.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        self.backend.barrier()
        self.backend.save(partial)
        if self.backend.is_main:
            atomic_torch_save(partial / "rng.pt", {"torch": torch.random.get_rng_state()})
            write_state(partial, {**self.pos.__dict__, "algorithm": self.algorithm.state_dict()})
        self.backend.barrier()
        if self.backend.is_main:
            publish(self.out, partial, folder, self.cfg.keep_checkpoints)
        self.backend.barrier()
        return folder

    def _resume(self) -> bool:
        """Restore from the newest readable checkpoint (the one ``latest`` names, else older ones, saying so)."""
        for folder in candidates(self.out):
            try:
                self._restore(folder)
            except Exception as err:  # a damaged file: any reader error means "not usable"
                log.warning("checkpoint %s is unreadable (%s: %s); trying an older one", folder,
                            type(err).__name__, err)
                continue
            log.info("resumed from %s at step %d (epoch %d, batch %d)", folder, self.pos.step, self.pos.epoch,
                     self.pos.batch_in_epoch)
            return True
        return False

    def _restore(self, folder: Path) -> None:
        state = read_state(folder)
        self.backend.load(folder)
        self.algorithm.load_state_dict(state.pop("algorithm"), self.backend.device)
        self.pos = _Position(**state)
        rng = folder / "rng.pt"
        if rng.is_file():
            torch.random.set_rng_state(torch.load(rng, weights_only=True)["torch"])

    def _export(self, name: str) -> None:
        """Complete weights (gathered by the backend, whatever the sharding) as ``OUT/name``."""
        state = self.backend.full_state_dict()
        if self.backend.is_main:
            atomic_safetensors(self.out / name, state)

    # ---- evaluation and selection ------------------------------------------------------------
    def _evaluate_and_select(self, step: int, run_log: RunLog) -> None:
        metrics = self.data.evaluator(self.backend)
        score = metrics.get(self.cfg.select_metric)
        if score is not None and score > self.pos.best:
            self.pos.best, self.pos.best_step = score, step
            self._export("best.safetensors")
        entry = {k: metrics.get(k) for k in ("top1", "class_weighted_accuracy", "pseudolabel_agreement") if k in metrics}
        self.pos.history.append({"step": step, **entry})
        run_log.eval(step, entry)
        stop = self.cfg.early_stop
        if stop is not None and score is not None and (score > stop if self.cfg.early_stop_strict else score >= stop):
            log.info("%s %.4f %s early_stop %.4f at step %d: stopping", self.cfg.select_metric, score,
                     ">" if self.cfg.early_stop_strict else ">=", stop, step)
            self.pos.finished = True

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool) -> dict[str, Any]:
        cfg, backend = self.cfg, self.backend
        schedule = SCHEDULES[cfg.schedule](cfg.warmup_steps, cfg.steps)
        backend.setup(self._model, self._optimizer(self._model), schedule)
        if backend.is_main and clean_leftovers(self.out) + clean_temp_dir(self.out):
            log.warning("removed a partial checkpoint or files half-written by a killed run in %s", self.out)
        backend.barrier()
        resumed = resume and self._resume()
        already_done = self.pos.finished or self.pos.step >= cfg.steps
        run_log = RunLog(self.out, backend.is_main, cfg.wandb)
        try:
            with SignalGuard() as guard:
                if not already_done:
                    self._loop(guard, run_log)
            final = self.data.evaluator(backend)
            self._export("final.safetensors")
            if not already_done:
                self.save_checkpoint()
        finally:
            run_log.close()
        return {"final": final, "best": self.pos.best, "best_step": self.pos.best_step, "steps_run": self.pos.step,
                "history": self.pos.history, "resumed": resumed, "batch_sizes": sorted(self.batch_sizes)}

    def _loop(self, guard: SignalGuard, run_log: RunLog) -> None:
        cfg, backend = self.cfg, self.backend
        stream = self._stream() if self.algorithm.needs.stream else None
        labelled = (iter(self.data.labelled.batches(self.pos.step, backend.rank, self.data.labelled_batch,
                                                    self.data.labelled_workers))
                    if self.algorithm.needs.labelled else None)
        backend.model.train()
        bar = Progress(cfg.steps, f"train {self.name}".strip(), "step", enabled=cfg.progress and backend.is_main,
                       initial=self.pos.step)
        window_start, window_samples = time.perf_counter(), 0
        reduce_mean = lambda t: backend.all_reduce(t, "mean")  # noqa: E731
        try:
            while self.pos.step < cfg.steps and not self.pos.finished:
                batch = self._next_batch(labelled, stream)
                with backend.autocast():
                    loss, terms = self.algorithm.loss(backend.model, batch, self.pos.step, cfg.steps, reduce_mean)
                backend.step(loss)
                self.pos.step += 1
                step = self.pos.step
                window_samples += batch.size() * backend.world_size
                self.batch_sizes.add(tuple(len(v) if v is not None else 0 for v in (batch.x_lb, batch.x_ulb_w)))
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    elapsed = time.perf_counter() - window_start
                    record = {"lr": backend.current_lr(), "samples_per_s": window_samples / elapsed,
                              **{k: float(v) for k, v in terms.items()}}
                    window_start, window_samples = time.perf_counter(), 0
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    run_log.train(step, record)
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    self._evaluate_and_select(step, run_log)
                if self.hooks.on_step_end is not None:
                    self.hooks.on_step_end(self.name, step)
                if guard.agreed_stop(backend):
                    folder = self.save_checkpoint()
                    guard.chain()  # e.g. submitit's handler: requeue the job, which resumes with resume=auto
                    raise Interrupted(f"stopped by a signal at step {step}; checkpoint {folder}; rerun with resume=auto")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    self.save_checkpoint()
        finally:
            bar.close()
