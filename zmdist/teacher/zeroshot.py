"""Zero-shot classifier weights from class names and prompt templates (open_clip's recipe)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def build_zeroshot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """Return a (C, D) matrix: per class, the re-normalised mean of its L2-normalised prompt embeddings.

    All class x template prompts are encoded in batches of ``batch_size`` (one tokenizer call per batch,
    never one per image), so building a 1,000-class head with 80 templates is a handful of forward passes.
    Logits are then ``logit_scale * image_features @ weights.T``.
    """
    prompts = [t.format(c) for c in classnames for t in templates]
    feats = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        feats.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(feats).view(len(classnames), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)
