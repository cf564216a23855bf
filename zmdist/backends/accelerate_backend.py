"""DDP (or FSDP) through Hugging Face Accelerate; bf16 autocast on GPU, plain fp32 on CPU.

On a machine without CUDA, ``Accelerator(cpu=True)`` joins a gloo group when started by torchrun or
``accelerate launch`` (WORLD_SIZE > 1): really distributed, with nothing for the user to set. Only the
model and optimizer go through ``prepare``: the lr schedule is stepped here once per optimizer step
(accelerate's scheduler wrapper would step it once per process) and data loaders stay ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ContextManager

import torch
from safetensors.torch import load_file, save_file

from zmdist.backends.base import Backend


class AccelerateBackend(Backend):
    def __init__(self, precision: str = "auto", fsdp: bool = False, seed: int = 0):
        from accelerate import Accelerator

        cuda = torch.cuda.is_available()
        mixed = "no"
        if cuda and precision in ("auto", "bf16"):
            mixed = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif cuda and precision == "fp16":
            mixed = "fp16"
        plugin = None
        if fsdp:
            from accelerate import FullyShardedDataParallelPlugin

            plugin = FullyShardedDataParallelPlugin()
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision=mixed, fsdp_plugin=plugin)
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

    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def current_lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, folder: Path) -> None:
        """Weights as safetensors; optimizer and scheduler states (tensors and numbers only) as torch files."""
        state = self.accelerator.get_state_dict(self.model)
        if self.is_main:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")

    def load(self, folder: Path) -> None:
        self.unwrapped().load_state_dict(load_file(str(folder / "model.safetensors")))  # copied onto the device
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
