"""``backend.name=deepspeed``: DeepSpeed ZeRO (stage 1/2/3), called directly.

Accelerate's DeepSpeed plugin does not run on CPU (it needs transformers and falls back to DDP), so this
backend calls ``deepspeed.initialize`` itself. The ZeRO config comes from a JSON file
(``launch/deepspeed/zeroN.json`` style) or is built from ``zero_stage``; the micro-batch size is always set
from the run's per-process batch, so a config never disagrees with the data loader. Checkpoints are
DeepSpeed's own (every rank writes its optimizer partition); exported weights are gathered with
``deepspeed.zero.GatheredParameters`` under ZeRO-3, so they are complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from zmdist.atomic import atomic_safetensors
from zmdist.backends.base import Backend
from zmdist.backends.registry import BACKENDS
from zmdist.config import option


@BACKENDS.register("deepspeed")
@dataclass
class DeepSpeedConfig:
    name: str = "deepspeed"
    zero_stage: int = option(2, "ZeRO stage 1, 2 or 3", min=1, max=3)
    config_file: str = option("", "DeepSpeed JSON config (e.g. launch/deepspeed/zero2.json); overrides zero_stage")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option("auto", "auto = bf16 on GPU, fp32 on CPU")

    def build(self, micro_batch: int) -> "DeepSpeedBackend":
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"backend.zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        return DeepSpeedBackend(self.zero_stage, self.config_file, self.precision, micro_batch)


def zero_config(stage: int, micro_batch: int, world_size: int, precision: str, path: str = "") -> dict[str, Any]:
    """The DeepSpeed config: ``path`` (JSON) if given, else a minimal ZeRO-``stage`` config."""
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"backend.config_file={path}: no such file")
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


def _one_process_rendezvous() -> None:
    """DeepSpeed always joins a process group through ``env://``; a plain ``zmdist train`` (no torchrun)
    has none, so set up a group of one on this host (a free port) instead of failing on ``RANK``."""
    import os
    import socket

    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)


class DeepSpeedBackend(Backend):
    def __init__(self, zero_stage: int = 2, config_path: str = "", precision: str = "auto", micro_batch: int = 1):
        import deepspeed

        from zmdist import dist

        info = dist.detect()
        if info.world_size == 1:
            _one_process_rendezvous()
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

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        import deepspeed

        module = self.engine.module
        if self.engine.zero_optimization_stage() < 3:
            return module.state_dict()
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if self.is_main else {}

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, folder: Path) -> None:
        """DeepSpeed's own (sharded) checkpoint for resuming, plus the gathered weights as safetensors."""
        self.engine.save_checkpoint(str(folder), tag="deepspeed", save_latest=False)
        state = self.full_state_dict()
        if self.is_main:
            atomic_safetensors(folder / "model.safetensors", state)

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder), tag="deepspeed", load_optimizer_states=True,
                                    load_lr_scheduler_states=True)
