"""The backend interface the engine is written against."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ContextManager

import torch
import torch.distributed as torch_dist


class Backend(ABC):
    """Wraps a model + optimizer for one process of a (possibly) distributed run.

    ``setup`` takes the plain model, the optimizer and an lr-multiplier function of the step; afterwards
    ``model`` is what to call forward on, ``step(loss)`` does backward + optimizer + scheduler,
    ``save``/``load`` move model, optimizer and scheduler state to and from a checkpoint folder (every
    rank's share), and ``full_state_dict`` gathers complete weights for export, whatever the sharding.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    model: torch.nn.Module

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def setup(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              lr_lambda: Callable[[int], float]) -> None: ...

    @abstractmethod
    def step(self, loss: torch.Tensor) -> None: ...

    @abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The complete model weights (every shard or partition gathered) on the main rank; a collective
        call: every rank must make it. Other ranks may get an empty dict."""

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @abstractmethod
    def load(self, folder: Path) -> None: ...

    @abstractmethod
    def current_lr(self) -> float: ...

    def autocast(self) -> ContextManager:
        return contextlib.nullcontext()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum (or mean / max) a tensor over ranks; identity on one process."""
        if self.world_size == 1 or not torch_dist.is_initialized():
            return tensor
        out = tensor.clone()
        reduce_op = torch_dist.ReduceOp.MAX if op == "max" else torch_dist.ReduceOp.SUM
        torch_dist.all_reduce(out, op=reduce_op)
        return out / self.world_size if op == "mean" else out

    def barrier(self) -> None:
        if self.world_size > 1 and torch_dist.is_initialized():
            torch_dist.barrier()
