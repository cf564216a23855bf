"""Class text embeddings from the teacher that made a task's image embeddings.

The teacher is rebuilt from ``embed_info.json`` exactly as ``zmdist pseudolabel`` does (random weights
from the recorded seed, or the recorded checkpoint), and its fingerprint must equal the embedding run's,
so the text tower always belongs to the image tower whose embeddings are scored.
"""

from __future__ import annotations

from typing import Any

import torch

from zmdist.teacher import build_zeroshot_classifier, load_teacher
from zmdist.teacher.loading import teacher_fingerprint


def class_text_embeddings(emb_info: dict[str, Any], classnames: list[str], templates: list[str],
                          device: torch.device, where: str) -> torch.Tensor:
    """(C, d) float32: per class, the re-normalised mean of its normalised prompt embeddings (one template
    = the paper's single prompt per class)."""
    teacher_cfg = emb_info["teacher"]
    seed = int(emb_info.get("seed", 0))
    teacher = load_teacher(teacher_cfg["model"], teacher_cfg["pretrained"] or None, device=device,
                           model_config=teacher_cfg.get("model_config") or None, seed=seed,
                           cache_dir=teacher_cfg.get("cache_dir") or None)  # registers its config first
    embedded_by = emb_info.get("teacher_fingerprint")
    now = teacher_fingerprint(teacher_cfg["model"], teacher_cfg["pretrained"] or None, seed,
                              cache_dir=teacher_cfg.get("cache_dir") or None)
    if embedded_by is not None and embedded_by != now:
        raise ValueError(f"the teacher has changed since {where} was embedded (was {embedded_by!r}, now {now!r}): "
                         "its text tower would not match the image embeddings. Restore the checkpoint, or re-run "
                         "`zmdist embed` into a new --out folder.")
    return build_zeroshot_classifier(teacher.model, teacher.tokenizer, classnames, templates, device=device).cpu()
