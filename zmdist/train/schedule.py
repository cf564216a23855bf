"""Learning-rate schedules: multipliers of the peak lr at a 0-based optimizer step (the backends' LambdaLR
calls them with the number of optimizer steps taken so far, as USB's scheduler is stepped after each
optimizer step: USB semilearn/core/hooks/param_update.py:36-39 at commit
1ef4cbebcc0b368158315aeb425053858cf6c845).

``warmup_cosine`` is what every trainer in zmdist uses by default (students and the demo teacher alike);
``usb_cosine`` is USB's, for students (``zmdist train schedule=usb``)."""

from __future__ import annotations

import math
from typing import Callable

USB_CYCLES = 7 / 16  # USB's num_cycles: the share of a cosine period the lr follows after the warm-up


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at 0-based ``step``: linear warm-up over ``warmup`` steps, then a cosine
    from 1 to 0 at ``total``. (USB/FixMatch decay over 7/16 of a cosine period, ``usb_cosine``; the full
    half used here ends at 0, so the last steps fine-tune at a small lr.)"""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return fn


def usb_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """USB's schedule (``get_cosine_schedule_with_warmup``, USB semilearn/core/utils/build.py:217-241 at
    commit 1ef4cbebcc0b368158315aeb425053858cf6c845, ``num_cycles=7/16``): ``step / warmup`` during the
    warm-up (so 0 at step 0: USB's first optimizer step does not move the weights), then
    ``cos(pi * 7/16 * t)`` with ``t = (step - warmup) / (total - warmup)``, from 1 down to
    ``cos(7 pi / 16) = 0.195`` at ``total``: the lr ends at about a fifth of its peak, not at 0."""

    def fn(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, math.cos(math.pi * USB_CYCLES * progress))

    return fn


SCHEDULES: dict[str, Callable[[int, int], Callable[[int], float]]] = {"cosine": warmup_cosine, "usb": usb_cosine}
