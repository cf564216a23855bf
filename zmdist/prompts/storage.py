"""Learned prompts on disk: ``.safetensors`` (tensors only, never pickle) with string metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from zmdist.atomic import atomic_safetensors


def save_prompt(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` atomically, with ``meta`` (JSON) under the ``zmdist`` metadata key."""
    atomic_safetensors(path, tensors, {"zmdist": json.dumps(meta, sort_keys=True)})


def load_prompt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a file ``save_prompt`` wrote; a file without zmdist metadata is refused by name."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"prompt file {path} is missing")
    with safe_open(str(path), framework="pt") as fh:
        meta = (fh.metadata() or {}).get("zmdist")
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta is None:
        raise ValueError(f"{path} is not a zmdist prompt file (no 'zmdist' metadata)")
    return tensors, json.loads(meta)
