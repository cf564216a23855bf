"""The learning-rate schedule every trainer in zmdist uses (students and the demo teacher alike)."""

from __future__ import annotations

import math
from typing import Callable


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at 0-based ``step``: linear warm-up over ``warmup`` steps, then a cosine
    from 1 to 0 at ``total``. (USB/FixMatch decay over 7/16 of a cosine period; the full half used here
    ends at 0, so the last steps fine-tune at a small lr.)"""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return fn
