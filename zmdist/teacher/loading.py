"""Load any open_clip model by name, with pretrained weights from a tag or a local checkpoint.

The same code path serves real weights on a user's cluster (``pretrained="laion2b_s34b_b79k"`` or
``pretrained="/ckpt/ViT-B-32.safetensors"``) and the tiny configs shipped in
``zmdist/teacher/model_configs`` that tests and the embedded default use offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered: set[str] = set()


def register_model_configs(path: str | Path = MODEL_CONFIG_DIR) -> None:
    """Make the JSON model configs in ``path`` (a file or a folder) known to open_clip by file stem.

    open_clip keeps a global registry; registering twice is harmless but we skip it to keep start-up quiet.
    """
    import open_clip

    key = str(Path(path).resolve())
    if key in _registered:
        return
    open_clip.add_model_config(path)
    _registered.add(key)


@dataclass
class Teacher:
    """An open_clip model with the image transform and tokenizer that belong to it."""

    name: str
    pretrained: str | None
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature (CLIP's 100 for released weights)."""
        return float(self.model.logit_scale.exp().item())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_teacher(
    name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    model_config: str | None = None,
    seed: int = 0,
) -> Teacher:
    """Build the open_clip model ``name`` in eval mode.

    ``pretrained`` is an open_clip tag (downloads on a machine with hub access), a path to a local
    checkpoint (``.pt``/``.bin`` loaded with ``weights_only=True`` by open_clip, or ``.safetensors``), or
    None for random weights. ``model_config`` is an extra JSON file or folder of configs to register
    first, for models open_clip does not ship. Random weights are drawn from ``seed`` (torch's global RNG
    is seeded right before the model is built, inside ``fork_rng`` so the caller's RNG is left as it was):
    every rank, array task and rerun of a run gets the same random teacher.
    """
    import open_clip

    register_model_configs()
    if model_config:
        if not Path(model_config).exists():
            raise FileNotFoundError(f"teacher.model_config: {model_config} does not exist")
        register_model_configs(model_config)
    if name not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"teacher.model: unknown open_clip model {name!r}.{hint} "
            "Add a JSON config with teacher.model_config=PATH for custom architectures."
        )
    if pretrained and ("/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        if not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"teacher.pretrained: checkpoint {pretrained} does not exist "
                "(give an open_clip tag, a local checkpoint file, or leave it empty for random weights)"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random weights (and anything a checkpoint leaves unset) follow the seed
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, device=device
        )
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return Teacher(name=name, pretrained=pretrained, model=model, preprocess=preprocess, tokenizer=tokenizer)


def is_checkpoint_path(pretrained: str | None) -> bool:
    """Whether ``pretrained`` names a local checkpoint file rather than an open_clip tag."""
    return bool(pretrained) and ("/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
                                 or Path(pretrained).is_file())


def teacher_fingerprint(name: str, pretrained: str | None, seed: int = 0) -> dict[str, str]:
    """What makes the teacher's outputs what they are, independent of where files live: the model's
    architecture (a hash of open_clip's config for ``name``, so a custom ``model_config`` counts) and its
    weights: the sha256 of the checkpoint's bytes for a local file (a moved file matches, an overwritten
    one does not), the tag for an open_clip tag, the seed for random weights. Call after ``load_teacher``
    (which registers the configs)."""
    import open_clip

    from zmdist.provenance import hash_file, hash_strings

    config = open_clip.get_model_config(name)
    arch = hash_strings([json.dumps(config, sort_keys=True, default=str)]) if config is not None else "unknown"
    if is_checkpoint_path(pretrained):
        weights = f"file sha256:{hash_file(Path(pretrained))}"
    elif pretrained:
        weights = f"open_clip tag {pretrained}"
    else:
        weights = f"random, seed {seed}"
    return {"model": name, "architecture": arch, "weights": weights}
