"""Backends: how a model, its optimizer and gradients are distributed. One small interface, two makers.

The training engine only calls ``Backend`` methods; it never sees DDP, FSDP or DeepSpeed. Data loading is
NOT a backend concern: every rank builds its own shard loader (see ``zmdist.data.reader``), so nothing is
passed through ``accelerator.prepare`` except the model and the optimizer.
"""

from __future__ import annotations

from zmdist.backends.base import Backend


def make_backend(name: str, **options) -> Backend:
    if name == "accelerate":
        from zmdist.backends.accelerate_backend import AccelerateBackend

        return AccelerateBackend(**options)
    if name == "deepspeed":
        from zmdist.backends.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(**options)
    raise ValueError(f"backend: unknown backend {name!r} (accelerate or deepspeed)")


__all__ = ["Backend", "make_backend"]
