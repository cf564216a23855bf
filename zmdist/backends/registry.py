"""The backend registry: ``backend.name`` -> that backend's config dataclass (with ``build(micro_batch)``).

A backend is one file in ``zmdist/backends/`` holding its config dataclass (registered with
``@BACKENDS.register("name")``) and a ``Backend`` subclass (``base.py``)."""

from __future__ import annotations

from zmdist.registry import Registry

BACKENDS: Registry[type] = Registry("backend")
