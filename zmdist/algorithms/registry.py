"""The method registry: ``method.name`` -> that method's config dataclass.

A method is one file in ``zmdist/algorithms/`` with a config dataclass (its options, a ``name`` field,
and ``phases(ctx)``) registered with ``@METHODS.register("name")``, and the algorithm object(s) its phases
run. The train stage only calls ``phases``: it never branches on the method's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from zmdist.registry import Registry
from zmdist.train.contract import Phase


@dataclass(frozen=True)
class PlanContext:
    """What a method needs to know to plan its phases."""

    num_classes: int
    steps: int


class MethodConfig(Protocol):
    name: str

    def phases(self, ctx: PlanContext) -> list[Phase]: ...


METHODS: Registry[type] = Registry("method")
