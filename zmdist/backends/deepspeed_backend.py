"""DeepSpeed ZeRO (stage 1/2/3), called directly.

Accelerate's DeepSpeed plugin does not run on CPU (it needs transformers and falls back to DDP), so this
backend calls ``deepspeed.initialize`` itself. The ZeRO config comes from ``launch/deepspeed/zeroN.json``
style files or is built from ``zero_stage``; the micro-batch size is always set from the run's
per-process batch, so a config never disagrees with the data loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from zmdist.backends.base import Backend


def zero_config(stage: int, micro_batch: int, world_size: int, precision: str, path: str = "") -> dict[str, Any]:
    """The DeepSpeed config: ``path`` (JSON) if given, else a minimal ZeRO-``stage`` config."""
    cfg: dict[str, Any] = json.loads(Path(path).read_text()) if path else {"zero_optimization": {"stage": stage}}
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg["gradient_accumulation_steps"] = cfg.get("gradient_accumulation_steps", 1)
    cfg["train_batch_size"] = micro_batch * world_size * cfg["gradient_accumulation_steps"]
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("wall_clock_breakdown", False)
    if torch.cuda.is_available() and precision in ("auto", "bf16"):
        cfg.setdefault("bf16", {"enabled": True})
    cfg.pop("optimizer", None)  # the engine's optimizer is passed in: one optimizer definition per run
    cfg.pop("scheduler", None)
    return cfg


class DeepSpeedBackend(Backend):
    def __init__(self, zero_stage: int = 2, config_path: str = "", precision: str = "auto", micro_batch: int = 1,
                 seed: int = 0):
        import deepspeed

        from zmdist import dist

        info = dist.detect()
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   auto_mpi_discovery=False, verbose=False)
        self.rank, self.world_size = info.rank, info.world_size
        self.device = dist.default_device(info.local_rank)
        self.config = zero_config(zero_stage, micro_batch, self.world_size, precision, config_path)

    def setup(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              lr_lambda: Callable[[int], float]) -> None:
        import deepspeed

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda),
        )
        self.model = self.engine

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # optimizer, zero_grad and the lr scheduler

    def unwrapped(self) -> torch.nn.Module:
        return self.engine.module

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, folder: Path) -> None:
        """DeepSpeed's own (sharded) checkpoint for resuming, plus full weights as safetensors."""
        self.engine.save_checkpoint(str(folder), tag="deepspeed", save_latest=False)
        state = (self.engine._zero3_consolidated_16bit_state_dict()
                 if self.engine.zero_optimization_stage() == 3 else self.engine.module.state_dict())
        if self.is_main and state is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder), tag="deepspeed", load_optimizer_states=True,
                                    load_lr_scheduler_states=True)
