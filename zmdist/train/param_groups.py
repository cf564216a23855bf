"""The student optimizer's parameter groups: where weight decay applies, and USB's layer-wise lr decay.

USB and ZeroMatch fine-tune pretrained ViTs with a smaller learning rate for the lower blocks (the
pretrained features move less) and with no weight decay on the position embedding and class token
(decaying them pulls the learned embeddings towards zero). What this follows, in USB
(``microsoft/Semi-supervised-learning`` at commit 1ef4cbebcc0b368158315aeb425053858cf6c845; ZeroMatch's fork
``jichan3751/zeromatch`` at 8ca40799e79e6ac649d85e507b026c5ca391b397 has the same files under
``train_zeromatch/``):

- USB semilearn/core/utils/build.py:183-214 (``get_optimizer``): the model's ``no_weight_decay()`` names
  (line 201) and ``layer_decay`` feed ``param_groups_layer_decay`` when ``layer_decay != 1`` (line 204),
  else ``param_groups_weight_decay`` (line 206). Each group carries its own lr and weight decay.
- USB semilearn/nets/utils.py:90 (``param_groups_weight_decay``): no weight decay on parameters of at most
  one dimension (norms, biases) nor on the ``no_weight_decay()`` names; USB's ViT lists ``pos_embed`` and
  ``cls_token`` (semilearn/nets/vit/vit.py:232-233), timm's also ``dist_token`` and ``reg_token``.
- USB semilearn/nets/utils.py:143-204 (``param_groups_layer_decay``) with the ViT's ``group_matcher``
  (semilearn/nets/vit/vit.py:235-239) as ``group_with_matcher`` (semilearn/nets/utils.py:207-268) numbers
  it: layer 0 is the stem (``cls_token``, ``pos_embed``, ``patch_embed``), layer ``i + 1`` is ``blocks.i``,
  the final ``norm`` joins the last block (``MATCH_PREV_GROUP``, line 255), and every parameter the matcher
  does not know (``head``) is the top layer ``L + 1`` for ``L`` blocks; layer ``k``'s lr is
  ``lr * layer_decay ** (L + 1 - k)`` (line 168). ZeroMatch's auxiliary head is a new attribute ``p_head``
  of the ViT (train_zeromatch/semilearn/core/algorithmbase.py:678), so it too is in the top layer: here
  ``DualHead``'s ``main`` and ``aux`` heads are, and its ``backbone.`` prefix is read through.

Deliberate differences from USB:

- Names follow timm's ViT (``timm:vit_*``; USB's ViT is a copy of timm's with the same names): the stem
  also holds ``reg_token``, ``dist_token`` and ``norm_pre`` and the top layer ``head``, ``head_dist``,
  ``fc_norm`` and ``attn_pool``, as timm's own ``group_matcher`` places them. A parameter the ViT rule does
  not know is an error: USB puts every unmatched parameter in the top layer, which would silently give,
  say, a CNN's stem convolution the full lr.
- The top layer's id is ``L + 1`` from the number of blocks, whether or not the model has head parameters
  (USB numbers the groups that exist; a ViT always has its head there).
- Groups are listed from the top layer down (USB: in order of first parameter), so the first group, whose
  lr the backends log, runs at the peak lr.
- Weight decay is off for 0-dim parameters too (USB's layer-decay path tests ``ndim == 1``; timm ``<= 1``).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch
import torch.nn as nn

from zmdist.models.dual_head import DualHead

STEM = ("cls_token", "reg_token", "dist_token", "pos_embed", "patch_embed", "norm_pre")  # layer 0
FINAL_NORM = "norm"  # shares the last block's layer
HEAD = ("head", "head_dist", "fc_norm", "attn_pool")  # the top layer
DUAL_HEAD_BACKBONE, DUAL_HEADS = "backbone.", ("main", "aux")  # zmdist.models.DualHead's names
NO_WEIGHT_DECAY = frozenset({"pos_embed", "cls_token", "dist_token", "reg_token"})
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that take no weight decay by name: those the model or any submodule
    lists in ``no_weight_decay()`` (timm's and USB's convention; a ``DualHead``'s backbone is a submodule,
    so its names come back as ``backbone.pos_embed``), and every parameter whose own name is one of
    ``NO_WEIGHT_DECAY`` (for models that do not declare them)."""
    names = {name for name, _ in model.named_parameters() if name.rpartition(".")[2] in NO_WEIGHT_DECAY}
    for prefix, module in model.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    return names


def _decays(name: str, param: torch.Tensor, no_weight_decay: set[str]) -> bool:
    return param.ndim > 1 and name not in no_weight_decay


def weight_decay_groups(named_params: Iterable[tuple[str, torch.Tensor]], weight_decay: float,
                        no_weight_decay: set[str]) -> list[dict[str, Any]]:
    """USB's groups without layer decay (any student): ``[decayed, not decayed]``; no weight decay on
    norms, biases (at most one dimension) and the ``no_weight_decay`` names. Both take the optimizer's lr."""
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    for name, param in named_params:
        (decay if _decays(name, param, no_weight_decay) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def vit_part(name: str) -> tuple[str, int]:
    """Where a ViT parameter sits: ``("block", i)`` for ``blocks.i.*``, else ``("stem" | "norm" | "head",
    -1)``, or ``("unknown", -1)`` for a name the rule does not know. Names inside a ``DualHead`` are read
    through its ``backbone.`` prefix; its ``main`` and ``aux`` heads are heads."""
    if name.startswith(DUAL_HEAD_BACKBONE):
        name = name[len(DUAL_HEAD_BACKBONE):]
    elif name.partition(".")[0] in DUAL_HEADS:
        return "head", -1
    block = _BLOCK.match(name)
    if block:
        return "block", int(block.group(1))
    first = name.partition(".")[0]
    if first in STEM:
        return "stem", -1
    if first == FINAL_NORM:
        return "norm", -1
    return ("head", -1) if first in HEAD else ("unknown", -1)


def vit_layer_ids(names: list[str], student: str) -> tuple[dict[str, int], int]:
    """Layer id of every parameter name (stem 0, ``blocks.i`` ``i + 1``, final norm ``L``, head ``L + 1``
    for ``L`` blocks) and the top id ``L + 1``. ``student`` names the model in the error raised when a
    name is not a ViT's or there is no ``blocks.N``."""
    parts = {name: vit_part(name) for name in names}
    unknown = [name for name, (kind, _) in parts.items() if kind == "unknown"]
    blocks = [index for kind, index in parts.values() if kind == "block"]
    if unknown or not blocks:
        what = f"has parameter {unknown[0]!r}" if unknown else "has no blocks.N"
        raise ValueError(
            f"layer_decay < 1 needs a ViT student (parameters cls_token, pos_embed, patch_embed.*, blocks.N.*, "
            f"norm.*, head.*, as timm's and USB's ViTs name them); the student ({student}) {what}: use a timm "
            "ViT (e.g. student=timm:vit_small_patch16_224) or layer_decay=1.0")
    top = max(blocks) + 2
    fixed = {"stem": 0, "norm": top - 1, "head": top}
    return {name: index + 1 if kind == "block" else fixed[kind] for name, (kind, index) in parts.items()}, top


def layer_decay_groups(named_params: Iterable[tuple[str, torch.Tensor]], lr: float, weight_decay: float,
                       layer_decay: float, no_weight_decay: set[str], student: str) -> list[dict[str, Any]]:
    """USB's layer-decay groups (see the module docstring): one group per (layer, decayed or not), each with
    ``lr = lr * layer_decay ** (top - layer)``, its weight decay, and ``layer`` / ``lr_scale`` for logs
    and tests; top layer first. A scheduler scales every group's lr by the same multiplier."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay={layer_decay}: must be in (0, 1]")
    named = list(named_params)
    ids, top = vit_layer_ids([name for name, _ in named], student)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in named:
        decays = _decays(name, param, no_weight_decay)
        key = (ids[name], decays)
        if key not in groups:
            scale = layer_decay ** (top - ids[name])
            groups[key] = {"params": [], "lr": lr * scale, "weight_decay": weight_decay if decays else 0.0,
                           "layer": ids[name], "lr_scale": scale}
        groups[key]["params"].append(param)
    return [groups[key] for key in sorted(groups, key=lambda k: (-k[0], not k[1]))]


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """The student's groups: ``weight_decay_groups`` at ``layer_decay=1`` (any student), else
    ``layer_decay_groups`` (ViT students, also inside a ``DualHead``)."""
    skip = no_weight_decay_names(model)
    if layer_decay == 1:
        return weight_decay_groups(model.named_parameters(), weight_decay, skip)
    student = type(model.backbone if isinstance(model, DualHead) else model).__name__
    return layer_decay_groups(model.named_parameters(), lr, weight_decay, layer_decay, skip, student)
