"""GPU-hours of a sweep before it runs: FLOPs counted on CPU, divided by a GPU's peak times an assumed MFU.

Counts, not timings: ``torch.utils.flop_counter`` on random-weight models, so the estimate needs no GPU
and does not depend on the machine's load. The same functions feed ``benchmarks/cost_model.py`` (the
2-billion-image estimate, ``benchmarks/COST.md``). Only the compute bound is estimated here; JPEG decoding
can bound a small teacher (see COST.md), so read the figure as a lower bound.
"""

from __future__ import annotations

import functools
import logging

import torch

GPU_PEAK_TFLOPS = {"A100": 312.0, "H100/H200": 989.0}  # dense bf16, NVIDIA datasheets (SXM)


def flops_per_image(model: torch.nn.Module, size: int, backward: bool = False) -> float:
    """FLOPs of one image through ``model`` (forward, or forward + backward), counted by torch on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
        if backward:
            (out if isinstance(out, torch.Tensor) else out[0]).float().sum().backward()
    return counter.get_total_flops() / 2


@functools.lru_cache(maxsize=None)
def teacher_image_flops(name: str) -> float:
    """FLOPs per image of an open_clip image tower (random weights, no download)."""
    import open_clip

    from zmdist.teacher.loading import register_model_configs

    register_model_configs()
    logging.disable(logging.WARNING)  # open_clip warns that random weights are random: that is the point here
    try:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    # train() mode (dropout is 0 in these towers): in eval mode under no_grad, nn.MultiheadAttention takes
    # a fused fast path the flop counter does not see, and only the MLPs would be counted
    with torch.no_grad():
        return flops_per_image(model.visual.train(), size)


@functools.lru_cache(maxsize=None)
def student_train_flops(name: str, size: int, options: str = "{}", num_classes: int = 100) -> float:
    """FLOPs per image of one training step (forward + backward) of a student (``options``: its
    constructor's keyword arguments as JSON, hashable for the cache)."""
    import json

    from zmdist.models import create_student

    return flops_per_image(create_student(name, num_classes, **json.loads(options)).train(), size, backward=True)


def gpu_hours(flops: float, gpu: str = "H100/H200", mfu: float = 0.4) -> float:
    """Hours of one GPU of kind ``gpu`` for ``flops`` at model FLOP utilisation ``mfu``."""
    if gpu not in GPU_PEAK_TFLOPS:
        raise ValueError(f"gpu: {gpu!r} is not one of {', '.join(GPU_PEAK_TFLOPS)}")
    return flops / (GPU_PEAK_TFLOPS[gpu] * 1e12 * mfu) / 3600
