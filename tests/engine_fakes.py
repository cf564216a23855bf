"""Fakes for engine unit tests: a single-process backend, a scripted evaluator, a tiny stream and algorithm.

Also runnable as a script (``python engine_fakes.py OUT STEPS KILL_AT``) so a test can SIGKILL a real
process in the middle of training and resume it."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, IterableDataset

from zmdist.backends.base import Backend
from zmdist.train.contract import Batch, DataNeeds, StreamItem
from zmdist.train.engine import Engine, EngineConfig, EngineHooks, TrainData


class FakeBackend(Backend):
    """Plain single-process CPU training with the Backend interface (what the engine is written against)."""

    def setup(self, model, optimizer, lr_lambda: Callable[[int], float]) -> None:
        self.model, self.optimizer = model, optimizer
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    def step(self, loss: torch.Tensor) -> None:
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def current_lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(folder / "model.safetensors"))
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")

    def load(self, folder: Path) -> None:
        self.model.load_state_dict(load_file(str(folder / "model.safetensors")))
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))


class Items(IterableDataset):
    """8 fixed samples of a 2-class problem (x in R^4), one epoch = 8 samples; ``set_epoch`` is recorded and
    its ``skip_batches`` honoured as ``ShardDataset`` does (batches of ``batch`` samples, one worker)."""

    def __init__(self, batch: int = 1) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.epochs: list[int] = []
        self.batch, self.skip = batch, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epochs.append(epoch)
        self.skip = skip_batches

    def __iter__(self):
        start = self.skip * self.batch
        for x, y in zip(self.x[start:], self.y[start:]):
            yield StreamItem(x, torch.empty(0), int(y), int(y), 1.0, torch.nn.functional.one_hot(y, 2).float())


class CountingAlgorithm:
    """CE on the stream's pseudolabels; counts its calls in its checkpointed state."""

    needs = DataNeeds(stream=True)

    def __init__(self) -> None:
        self.calls = 0

    def loss(self, model, batch: Batch, step: int, total: int, reduce_mean):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(model(batch.x_ulb_w), batch.yp_ulb)
        return loss, {"loss": loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.calls = state.get("calls", 0)


class ScriptedEvaluator:
    """Returns ``scores[i]`` as top1 at the i-th evaluation (then repeats the last)."""

    def __init__(self, scores: list[float]):
        self.scores, self.calls = scores, 0

    def __call__(self, backend: Backend) -> dict[str, Any]:
        score = self.scores[min(self.calls, len(self.scores) - 1)]
        self.calls += 1
        return {"top1": score, "class_weighted_accuracy": score, "pseudolabel_agreement": score}


def make_engine(out: Path, steps: int, scores: list[float], *, checkpoint_every: int = 2, keep: int = 2,
                eval_every: int = 2, early_stop: float | None = None, hooks: EngineHooks | None = None,
                seed: int = 0) -> tuple[Engine, CountingAlgorithm, Items]:
    torch.manual_seed(seed)
    items = Items(batch=4)
    algorithm = CountingAlgorithm()
    cfg = EngineConfig(steps=steps, lr=0.1, weight_decay=0.0, optimizer="sgd", momentum=0.9, warmup_steps=1,
                       eval_every=eval_every, log_every=1, checkpoint_every=checkpoint_every, keep_checkpoints=keep,
                       select_metric="top1", early_stop=early_stop, progress=False)
    data = TrainData(labelled=None, labelled_batch=0, labelled_workers=0,
                     stream=(items, DataLoader(items, batch_size=4)), evaluator=ScriptedEvaluator(scores))
    engine = Engine(cfg, FakeBackend(), algorithm, data, out, torch.nn.Linear(4, 2), hooks)
    return engine, algorithm, items


if __name__ == "__main__":  # python engine_fakes.py OUT STEPS KILL_AT
    out, steps, kill_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

    def kill(phase: str, step: int) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    engine, _, _ = make_engine(out, steps, [0.5], hooks=EngineHooks(on_step_end=kill))
    engine.fit(resume=True)
