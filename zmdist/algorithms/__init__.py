"""Training methods, one file each, found by name through ``METHODS`` (see ``registry.py``)."""

from zmdist.algorithms import adamatch, distill, fixmatch, pseudolabel, supervised, zeromatch  # noqa: F401
from zmdist.algorithms.registry import METHODS, PlanContext

__all__ = ["METHODS", "PlanContext"]
