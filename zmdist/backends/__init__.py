"""Backends: how a model, its optimizer and gradients are distributed. One small interface, one file each.

The training engine only calls ``Backend`` methods; it never sees DDP or DeepSpeed. Data loading is NOT a
backend concern: every rank builds its own shard loader (see ``zmdist.data.reader``), so nothing is
passed through ``accelerator.prepare`` except the model and the optimizer. Backend modules import their
library lazily (in ``build``), so listing backends costs nothing.
"""

from zmdist.backends import accelerate_backend, deepspeed_backend  # noqa: F401  (register themselves)
from zmdist.backends.base import Backend
from zmdist.backends.registry import BACKENDS

__all__ = ["BACKENDS", "Backend"]
