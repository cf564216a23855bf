"""Students by name: a small registry (timm-style), plus any timm or torchvision classifier.

``create_student("cnn-small", num_classes=10)`` builds a registered model; ``"timm:resnet18"`` and
``"torchvision:resnet18"`` build those libraries' classifiers with random weights
(``zmdist.models.student_init`` loads pretrained ones: one loader for every kind of student, with the
teachers' rules). ``DualHead`` adds ZeroMatch's auxiliary head to any of them without the user changing
the model.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from zmdist.models.dual_head import DualHead

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a model constructor ``fn(num_classes, **kwargs)`` available by ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"student {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_students() -> list[str]:
    return sorted(_REGISTRY)


def create_student(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a student classifier with ``num_classes`` outputs."""
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False, num_classes=num_classes, **kwargs)
    if name.startswith("torchvision:"):
        import torchvision

        return torchvision.models.get_model(name[12:], weights=None, num_classes=num_classes, **kwargs)
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list_students(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"student.name: unknown student {name!r}.{hint} Registered: {', '.join(list_students())}; "
            "or use timm:NAME / torchvision:NAME"
        )
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


from zmdist.models import small_cnn  # noqa: E402,F401  (registers its models)

__all__ = ["DualHead", "create_student", "list_students", "register"]
