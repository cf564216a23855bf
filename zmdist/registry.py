"""Named plug-ins (timm-style): students, methods, backends, data sources and stages are looked up by name.

A ``Registry`` maps a name to a builder (a class or function) registered with ``@REGISTRY.register(name)``.
Adding a method, backend, source or student is one new file that registers itself; nothing else is edited.
Lookups of unknown names fail with the closest registered names and the full list, so a typo in a config
says what to write instead.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> T`` for one kind of plug-in (``kind`` names it in error messages, e.g. ``"method"``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make ``item`` available as ``name`` (registering a name twice is an error)."""

        def wrap(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return wrap

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Registered: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
