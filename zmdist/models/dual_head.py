"""ZeroMatch's auxiliary head, bolted onto any classifier without the user changing the model.

The model's last ``nn.Linear`` is taken as its classifier: it is swapped for ``nn.Identity`` inside the
backbone (so the backbone returns pre-logit features) and kept as the main head; the auxiliary head is a
fresh ``Linear`` of the same shape. Works for torchvision (``fc``, ``heads.head``, ``classifier[-1]``),
timm (``head``, ``fc``, ``classifier``) and zmdist's own students.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: timm's ``get_classifier()`` when the model has one, else the last ``nn.Linear``."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    declared = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(declared, nn.Linear):
        found = [(name, m) for name, m in found if m is declared]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to put an auxiliary head beside")
    return found[-1]


def _set_submodule(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class DualHead(nn.Module):
    """``forward(x)`` returns ``(main_logits, aux_logits)``; ``main`` alone is the deployable classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        name, head = _last_linear(model)
        _set_submodule(model, name, nn.Identity())
        self.head_name = name
        self.backbone = model
        self.main = head
        self.aux = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        return self.main(feats), self.aux(feats)

    def unwrap(self) -> nn.Module:
        """The plain classifier for deployment: ``main`` put back where the model's classifier was and
        ``aux`` dropped, so its state dict has the original model's key names. The wrapper shares that
        model and must not be used afterwards."""
        _set_submodule(self.backbone, self.head_name, self.main)
        return self.backbone
