"""``backend.name=accelerate``: DDP through Hugging Face Accelerate; bf16 autocast on GPU, fp32 on CPU.

On a machine without CUDA, ``Accelerator(cpu=True)`` joins a gloo group when started by torchrun or
``accelerate launch`` (WORLD_SIZE > 1): really distributed, with nothing for the user to set. Only the
model and optimizer go through ``prepare``: the lr schedule is stepped here once per optimizer step
(accelerate's scheduler wrapper would step it once per process) and data loaders stay ours.

FSDP is refused for now: it cannot be exercised on the project's CPU CI (the sharded optimizer state and
the gathered export would ship untested). Shard parameters with ``backend.name=deepspeed
backend.zero_stage=3`` instead, which is tested with 2 processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Literal

import torch
from safetensors.torch import load_file

from zmdist.atomic import atomic_safetensors, atomic_torch_save
from zmdist.backends.base import Backend
from zmdist.backends.registry import BACKENDS
from zmdist.config import option

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@BACKENDS.register("accelerate")
@dataclass
class AccelerateConfig:
    name: str = "accelerate"
    precision: Precision = option("auto", "auto = bf16 on GPU (fp16 without bf16), fp32 on CPU")
    fsdp: bool = option(False, "FSDP instead of DDP: refused until it is tested (use deepspeed zero_stage=3)")

    def build(self, micro_batch: int) -> "AccelerateBackend":
        if self.fsdp:
            raise ValueError("backend.fsdp=true is not supported: FSDP is untested in zmdist (no multi-GPU CI); "
                             "to shard parameters use backend.name=deepspeed backend.zero_stage=3")
        return AccelerateBackend(self.precision)


class AccelerateBackend(Backend):
    def __init__(self, precision: str = "auto"):
        from accelerate import Accelerator

        cuda = torch.cuda.is_available()
        mixed = "no"
        if cuda and precision in ("auto", "bf16"):
            mixed = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif cuda and precision == "fp16":
            mixed = "fp16"
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision=mixed)
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.device = self.accelerator.device
        self.precision = mixed

    def setup(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              lr_lambda: Callable[[int], float]) -> None:
        self.model, self.optimizer = self.accelerator.prepare(model.to(self.device), optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    def step(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def autocast(self) -> ContextManager:
        return self.accelerator.autocast()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self.accelerator.get_state_dict(self.model)

    def current_lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, folder: Path) -> None:
        """Weights as safetensors; optimizer and scheduler states (tensors and numbers only) as torch files.
        Under DDP every rank holds the same state, so the main rank writes it."""
        state = self.full_state_dict()
        if self.is_main:
            atomic_safetensors(folder / "model.safetensors", state)
            atomic_torch_save(folder / "optimizer.pt", self.optimizer.state_dict())
            atomic_torch_save(folder / "scheduler.pt", self.scheduler.state_dict())

    def load(self, folder: Path) -> None:
        model = self.accelerator.unwrap_model(self.model)
        model.load_state_dict(load_file(str(folder / "model.safetensors")))  # copied onto the device
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
