"""Class text embeddings from the teacher that made a task's image embeddings.

The teacher is rebuilt from ``embed_info.json`` exactly as ``zmdist pseudolabel`` does (random weights
from the recorded seed, or the recorded checkpoint), and its fingerprint must equal the embedding run's,
so the text tower always belongs to the image tower whose embeddings are scored.
"""

from __future__ import annotations

from typing import Any

import torch

from zmdist.teacher import build_zeroshot_classifier
from zmdist.teacher.loading import load_recorded_teacher


def class_text_embeddings(emb_info: dict[str, Any], classnames: list[str], templates: list[str],
                          device: torch.device, where: str) -> torch.Tensor:
    """(C, d) float32: per class, the re-normalised mean of its normalised prompt embeddings (one template
    = the paper's single prompt per class)."""
    teacher, _ = load_recorded_teacher(emb_info, where, device)
    return build_zeroshot_classifier(teacher.model, teacher.tokenizer, classnames, templates, device=device).cpu()
