"""One forward pass over several batch parts, split back into per-part logits (main head, aux head)."""

from __future__ import annotations

import torch


def forward_parts(model: torch.nn.Module, *parts: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Labelled, weak and strong inputs go through the model in ONE forward pass (as USB does), so
    batch-norm statistics see them together; returns (main logits per part, aux logits per part or None)."""
    out = model(torch.cat(parts))
    sizes = [len(p) for p in parts]
    if isinstance(out, tuple):
        return list(torch.split(out[0], sizes)), list(torch.split(out[1], sizes))
    return list(torch.split(out, sizes)), None
