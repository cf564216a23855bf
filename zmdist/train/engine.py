"""The training loop: steps, evaluation, best-model tracking, logs, checkpoints, signals, exact resume.

It knows no method and no backend: an ``Algorithm`` turns a batch into a loss (plus named terms to log)
and a ``Backend`` owns the distributed model and optimizer. The data position (epoch and batch within it
of the unlabelled stream) and the algorithm's statistics are checkpointed with the weights, and all
augmentation randomness is seeded per sample, so a resumed run continues exactly where the killed one was.

On SIGTERM, SIGUSR1 or SIGUSR2 every rank finishes its step, all agree (an all-reduce of the flag), a
checkpoint is written and the run exits with ``Interrupted``; rerun with ``resume=auto`` to continue.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from zmdist.atomic import atomic_path
from zmdist.backends import Backend
from zmdist.train.contract import Interrupted
from zmdist.train.checkpoint import checkpoint_dir, find_latest, mark_latest, read_state, write_state
from zmdist.train.metrics import classification_metrics, confusion_matrix

log = logging.getLogger("zmdist")
SIGNAL_AT_STEP_ENV = "ZMDIST_SIGNAL_AT_STEP"  # test hook: send ourselves SIGTERM after this step


@dataclass
class Batch:
    """One step's data on this rank; fields a method does not use are None."""

    x_lb: torch.Tensor | None = None
    y_lb: torch.Tensor | None = None
    yp_lb: torch.Tensor | None = None
    x_ulb_w: torch.Tensor | None = None
    x_ulb_s: torch.Tensor | None = None
    yp_ulb: torch.Tensor | None = None
    conf_ulb: torch.Tensor | None = None
    probs_ulb: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        return Batch(**{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                        for k, v in self.__dict__.items()})

    def size(self) -> int:
        return sum(len(v) for v in (self.x_lb, self.x_ulb_w) if v is not None)


class Algorithm(Protocol):
    uses_labelled: bool
    uses_stream: bool
    needs_strong: bool

    def loss(self, model: torch.nn.Module, batch: Batch, step: int, total: int,
             reduce_mean: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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
    select_metric: str  # "top1" (ground truth) or "pseudolabel_agreement" (ZeroMatch stage 0)
    progress: bool = True


@dataclass
class TrainData:
    """Per-rank data sources; ``labelled_batch`` is this rank's labelled batch size."""

    labelled: Any | None  # zmdist.train.data.LabelledSet
    labelled_batch: int
    labelled_workers: int
    stream: tuple[Any, Any] | None  # (ShardDataset, DataLoader)
    eval: tuple[Any, Any]
    num_classes: int


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 0 (USB/FixMatch use 7/16 of a cosine; we use the full half)."""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return fn


def _forward_main(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


@dataclass
class _Position:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float = -1.0
    best_step: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


class Engine:
    def __init__(self, cfg: EngineConfig, backend: Backend, algorithm: Algorithm, data: TrainData, out: Path,
                 model: torch.nn.Module):
        self.cfg, self.backend, self.algorithm, self.data, self.out = cfg, backend, algorithm, data, out
        self._model = model
        self.pos = _Position()
        self._signalled = 0
        self._previous_handlers: dict[int, Callable] = {}

    # ---- setup -------------------------------------------------------------------------------
    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum, nesterov=True)
        return torch.optim.AdamW(groups, lr=self.cfg.lr)

    def _install_signal_handlers(self) -> None:
        """Note the signal; the loop checkpoints at the end of the step. A handler that was there before
        (submitit's, which requeues the job) is called after the checkpoint is written."""

        def handler(signum: int, _frame: Any) -> None:
            log.warning("received %s: checkpointing at the end of this step", signal.Signals(signum).name)
            self._signalled = signum

        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            previous = signal.signal(sig, handler)
            if callable(previous):
                self._previous_handlers[sig] = previous

    # ---- data --------------------------------------------------------------------------------
    def _stream(self) -> Iterator[tuple[int, int, tuple]]:
        """(epoch, batch index, batch) from the saved position on; epochs follow each other forever."""
        ds, loader = self.data.stream
        epoch, skip = self.pos.epoch, self.pos.batch_in_epoch
        while True:
            ds.set_epoch(epoch)
            for i, batch in enumerate(loader):
                if i >= skip:
                    yield epoch, i, batch
            epoch, skip = epoch + 1, 0

    def _next_batch(self, labelled: Iterator | None, stream: Iterator | None) -> Batch:
        batch = Batch()
        if labelled is not None:
            batch.x_lb, batch.y_lb, batch.yp_lb = next(labelled)
        if stream is not None:
            epoch, index, (weak, strong, _labels, pl, conf, probs) = next(stream)
            self.pos.epoch, self.pos.batch_in_epoch = epoch, index + 1
            batch.x_ulb_w, batch.yp_ulb, batch.conf_ulb, batch.probs_ulb = weak, pl, conf.float(), probs
            batch.x_ulb_s = strong if strong.numel() else None
        return batch.to(self.backend.device)

    # ---- evaluation --------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self) -> dict[str, Any]:
        """Exact-once over all ranks: confusion matrices against ground truth and against pseudolabels."""
        model = self.backend.model
        model.eval()
        c = self.data.num_classes
        cm_gt = torch.zeros(c, c, dtype=torch.long, device=self.backend.device)
        cm_pl = torch.zeros_like(cm_gt)
        _, loader = self.data.eval
        for x, _strong, labels, pl, _conf, _probs in loader:
            with self.backend.autocast():
                preds = _forward_main(model, x.to(self.backend.device)).argmax(dim=1)
            labels, pl = labels.to(preds.device), pl.to(preds.device)
            cm_gt += confusion_matrix(preds[labels >= 0], labels[labels >= 0], c)
            cm_pl += confusion_matrix(preds[pl >= 0], pl[pl >= 0], c)
        model.train()
        cm_gt = self.backend.all_reduce(cm_gt)
        cm_pl = self.backend.all_reduce(cm_pl)
        metrics = classification_metrics(cm_gt.cpu())
        metrics["pseudolabel_agreement"] = classification_metrics(cm_pl.cpu())["top1"] if cm_pl.sum() else None
        metrics["confusion_matrix"] = cm_gt.cpu().tolist()
        return metrics

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        folder = checkpoint_dir(self.out, self.pos.step)
        if self.backend.is_main:
            folder.mkdir(parents=True, exist_ok=True)
        self.backend.barrier()
        self.backend.save(folder)
        if self.backend.is_main:
            torch.save({"torch": torch.random.get_rng_state()}, folder / "rng.pt")
            write_state(folder, {**self.pos.__dict__, "algorithm": self.algorithm.state_dict()})
            mark_latest(self.out, folder, self.cfg.keep_checkpoints)
        self.backend.barrier()
        return folder

    def _resume(self) -> bool:
        folder = find_latest(self.out)
        if folder is None:
            return False
        state = read_state(folder)
        self.backend.load(folder)
        self.algorithm.load_state_dict(state.pop("algorithm"))
        self.pos = _Position(**state)
        rng = folder / "rng.pt"
        if rng.is_file():
            torch.random.set_rng_state(torch.load(rng, weights_only=True)["torch"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", folder, self.pos.step, self.pos.epoch,
                 self.pos.batch_in_epoch)
        return True

    def _save_weights(self, name: str) -> None:
        state = self.backend.unwrapped().state_dict()
        if self.backend.is_main:
            with atomic_path(self.out / name) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool) -> dict[str, Any]:
        cfg, backend = self.cfg, self.backend
        backend.setup(self._model, self._optimizer(self._model), lr_lambda(cfg.warmup_steps, cfg.steps))
        resumed = resume and self._resume()
        self._install_signal_handlers()
        signal_at = int(os.environ.get(SIGNAL_AT_STEP_ENV, "0"))
        log_path = self.out / "log.jsonl"
        tb = _tensorboard(self.out) if backend.is_main else None
        stream = self._stream() if self.algorithm.uses_stream else None
        labelled = (iter(self.data.labelled.batches(self.pos.step, backend.rank, self.data.labelled_batch,
                                                    self.data.labelled_workers))
                    if self.algorithm.uses_labelled else None)
        backend.model.train()
        bar = tqdm(total=cfg.steps, initial=self.pos.step, disable=not (cfg.progress and backend.is_main),
                   desc="train", unit="step")
        window_start, window_samples = time.perf_counter(), 0
        reduce_mean = lambda t: backend.all_reduce(t, "mean")  # noqa: E731
        while self.pos.step < cfg.steps:
            batch = self._next_batch(labelled, stream)
            with backend.autocast():
                loss, terms = self.algorithm.loss(backend.model, batch, self.pos.step, cfg.steps, reduce_mean)
            backend.step(loss)
            self.pos.step += 1
            window_samples += batch.size() * backend.world_size
            bar.update(1)
            step = self.pos.step
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - window_start
                record = {"step": step, "lr": backend.current_lr(), "samples_per_s": window_samples / elapsed,
                          **{k: float(v) for k, v in terms.items()}}
                window_start, window_samples = time.perf_counter(), 0
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                if backend.is_main:
                    _append_jsonl(log_path, record)
                    if tb:
                        for k, v in record.items():
                            if k != "step":
                                tb.add_scalar(f"train/{k}", v, step)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                metrics = self.evaluate()
                score = metrics.get(cfg.select_metric) or 0.0
                if score > self.pos.best:
                    self.pos.best, self.pos.best_step = score, step
                    self._save_weights("best.safetensors")
                entry = {"step": step, "top1": metrics["top1"],
                         "class_weighted_accuracy": metrics["class_weighted_accuracy"],
                         "pseudolabel_agreement": metrics["pseudolabel_agreement"]}
                self.pos.history.append(entry)
                if backend.is_main:
                    _append_jsonl(log_path, {"eval": True, **entry})
                    if tb:
                        tb.add_scalar("eval/top1", metrics["top1"], step)
            if signal_at and step == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            stop = backend.all_reduce(torch.tensor([float(self._signalled)], device=backend.device), "max")
            if stop.item() > 0:
                folder = self.save_checkpoint()
                bar.close()
                if self._signalled in self._previous_handlers:  # e.g. submitit: requeue, resume=auto
                    self._previous_handlers[self._signalled](self._signalled, None)
                raise Interrupted(f"stopped by a signal at step {step}; checkpoint {folder}; rerun with resume=auto")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                self.save_checkpoint()
        bar.close()
        final = self.evaluate()
        self._save_weights("final.safetensors")
        self.save_checkpoint()
        if tb:
            tb.close()
        return {"final": final, "best": self.pos.best, "best_step": self.pos.best_step,
                "history": self.pos.history, "resumed": resumed}


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _tensorboard(out: Path):
    """TensorBoard writer for the same metrics as log.jsonl (``tensorboard --logdir OUT/tensorboard``)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"))
