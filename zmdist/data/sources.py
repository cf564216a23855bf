"""Where images come from: a spec string ``SCHEME`` or ``SCHEME:ARGUMENT`` becomes lazily-loaded samples per split.

Each scheme is a registered source builder ``(spec, argument) -> Source``, looked up in ``SOURCES``:

- ``imagefolder:PATH`` (``zmdist/data/source_imagefolder.py``): one sub-folder per class, or
  ``train/`` + ``val/``/``test/`` sub-trees as splits;
- ``csv:FILE`` (``zmdist/data/source_csv.py``): columns ``path``, optional ``label`` and ``split``;
- ``sklearn-digits`` (``zmdist/data/sklearn_digits.py``): scikit-learn's 1,797 real 8x8 digits;
- ``cifar10:ROOT``, ``cifar100:ROOT``, ``flowers102:ROOT``, ``dtd:ROOT``, ``eurosat:ROOT``, ``resisc45:ROOT``
  (``zmdist/data/source_benchmarks.py``): the benchmark datasets as torchvision/torchgeo leave them on
  disk, with their official splits and the class names prompts use.

Adding a source is one decorated function in one file::

    from zmdist.data.sources import SOURCES, Sample, Source

    @SOURCES.register("myscheme")
    def open_myscheme(spec: str, argument: str) -> Source:
        ...

The module must be imported before ``open_source`` is called: the built-in ones are imported by
``zmdist/data/__init__.py`` (which runs before any ``zmdist.data`` module), a plug-in elsewhere by whoever
uses it. ``open_source`` splits the spec at its first ``:`` and passes the rest (``""`` if none) to the
builder, which checks it and says what it expects. A builder that can fetch its data declares a
``download: bool = False`` keyword; ``open_source(spec, download=True)`` passes it only to such builders.
Likewise a builder that can take published split lists declares ``split_file: str = ""``
(``open_source(spec, split_file=...)``; flowers102 and resisc45).

Keys come from the path relative to the source root (``cat/001.jpg`` -> ``cat__001``), so they are
stable across runs and unique across splits; see ``make_keys``. Nothing depends on directory listing
order. Sources without their own splits get a seeded, per-class stratified holdout (``Source.splits``).
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from zmdist.registry import Registry

HOLDOUT_SPLIT = "test"
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Sample:
    """One input image: ``loader()`` opens it only when asked, so huge folders never sit in memory."""

    key: str
    origin: str
    loader: Callable[[], Image.Image]
    label: int | None


@dataclass
class Source:
    """Samples per split plus everything that was not turned into a sample (and why)."""

    spec: str
    classes: list[str]
    samples: dict[str, list[Sample]]
    own_splits: bool
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    default_test_fraction: float = 0.0

    def splits(self, test_fraction: float | None = None, seed: int = 0) -> dict[str, list[Sample]]:
        """The samples per split: the source's own, or ``train`` + a stratified ``test`` holdout.

        ``test_fraction=None`` uses the source's default (0.0 for folders and CSVs).
        """
        if self.own_splits:
            if test_fraction:
                raise ValueError(
                    f"{self.spec} already has its own splits ({', '.join(self.samples)}): set test_fraction to 0"
                )
            return dict(self.samples)
        fraction = self.default_test_fraction if test_fraction is None else test_fraction
        return holdout_split(self.samples["train"], fraction, seed)


def display_path(path: object) -> str:
    """``str(path)`` that is always valid text (JSON, UTF-8 logs): bytes of a file name that are not UTF-8
    (surrogate-escaped by Python on POSIX, e.g. ``b'\\xff.png'``) are shown as ``\\xff``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _digest(text: str, salt: str = "") -> str:
    # surrogateescape: undecodable file-name bytes hash as the bytes they are (identical to UTF-8 otherwise)
    return hashlib.sha1((salt + text).encode("utf-8", "surrogateescape")).hexdigest()[:8]


_MAX_ROUNDS = 8


def make_keys(rel_paths: Sequence[str], ids: Sequence[str] | None = None) -> list[str]:
    """Stable unique sample keys for relative paths (same order as given).

    The extension is dropped, ``/`` becomes ``__`` and anything outside ``[A-Za-z0-9_-]`` becomes ``_``
    (including characters of a file name that are not UTF-8). Paths that map to the same key (``a.b.png``
    and ``a_b.png``) all get ``_`` + 8 hex digits of the SHA-1 of their full relative path appended, which
    does not depend on which one was seen first. Should keys still clash (a file literally named like
    another's suffixed key, or two equal relative paths), the clashing ones get one more suffix, hashed
    from ``ids`` (distinct identities such as absolute paths; default: the relative paths) and the round,
    until every key is unique. Keys depend only on the set of inputs, never on their order.
    """
    names = list(rel_paths if ids is None else ids)
    if len(names) != len(rel_paths):
        raise ValueError(f"make_keys: {len(rel_paths)} paths but {len(names)} ids")
    keys = []
    for rel in rel_paths:
        stem = str(PurePosixPath(rel).with_suffix("")) if PurePosixPath(rel).suffix else rel
        keys.append(_KEY_UNSAFE.sub("_", stem.replace("/", "__")))
    for round_ in range(1, _MAX_ROUNDS + 1):
        uses = Counter(keys)
        if all(uses[key] == 1 for key in keys):
            return keys
        keys = [
            key if uses[key] == 1 else f"{key}_{_digest(rel) if round_ == 1 else _digest(name, f'{round_}:')}"
            for key, rel, name in zip(keys, rel_paths, names)
        ]
    uses = Counter(keys)
    clash = [display_path(name) for key, name in zip(keys, names) if uses[key] > 1][:2]
    raise ValueError(f"inputs {clash} cannot be given distinct sample keys: they are not distinct")


def holdout_split(samples: Sequence[Sample], fraction: float, seed: int) -> dict[str, list[Sample]]:
    """Split into ``train``/``test`` per class (unlabelled samples form their own group).

    Each group is sorted by key and permuted by a generator seeded with (seed, label), so the split does
    not depend on input order nor on other classes' sizes; ``round(n * fraction)`` of each go to test.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return {"train": sorted(samples, key=lambda s: s.key)}
    groups: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[-1 if sample.label is None else sample.label].append(sample)
    train: list[Sample] = []
    test: list[Sample] = []
    for label in sorted(groups):
        group = sorted(groups[label], key=lambda s: s.key)
        order = np.random.default_rng([seed, label + 1]).permutation(len(group))
        n_test = math.floor(len(group) * fraction + 0.5)
        test.extend(group[i] for i in order[:n_test])
        train.extend(group[i] for i in order[n_test:])
    return {"train": sorted(train, key=lambda s: s.key), HOLDOUT_SPLIT: sorted(test, key=lambda s: s.key)}


SourceBuilder = Callable[[str, str], Source]

SOURCES: Registry[SourceBuilder] = Registry("data source")
"""``scheme -> builder(spec, argument) -> Source``; register with ``@SOURCES.register("scheme")``."""


def can_download(builder: SourceBuilder) -> bool:
    """Whether a builder declares the ``download`` keyword (it can fetch a missing dataset)."""
    return "download" in inspect.signature(builder).parameters


def open_source(spec: str, *, download: bool = False, split_file: str = "") -> Source:
    """Open ``SCHEME`` or ``SCHEME:ARGUMENT`` with the builder registered for ``SCHEME``.

    ``download=True`` lets a builder that declares ``download`` fetch a missing dataset; for any other
    scheme it is an error rather than silently ignored, so nobody waits for a download that never comes.
    ``split_file`` (split lists to use instead of the dataset's own) likewise goes only to builders that
    declare it; for others it is an error, not ignored.
    """
    scheme, _, argument = spec.partition(":")
    if scheme not in SOURCES:
        close = difflib.get_close_matches(scheme, SOURCES.names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown data source {spec!r}: no source scheme {scheme!r}{hint}; registered schemes: "
            f"{', '.join(SOURCES.names())} (write SCHEME or SCHEME:ARGUMENT, e.g. imagefolder:/data/pets)"
        )
    builder = SOURCES.get(scheme)
    extra: dict[str, str] = {}
    if split_file:
        if "split_file" not in inspect.signature(builder).parameters:
            able = [n for n in SOURCES.names() if "split_file" in inspect.signature(SOURCES.get(n)).parameters]
            raise ValueError(f"{spec}: source {scheme!r} takes no split_file (accepted by "
                             f"{', '.join(able) or 'no registered source'}); leave split_file empty")
        extra["split_file"] = split_file
    if not download:
        return builder(spec, argument, **extra)
    if not can_download(builder):
        able = [name for name in SOURCES.names() if can_download(SOURCES.get(name))]
        raise ValueError(f"{spec}: source {scheme!r} cannot download its data (download=true is accepted by "
                         f"{', '.join(able) or 'no registered source'}); set download=false")
    return builder(spec, argument, download=True, **extra)


def require_argument(spec: str, argument: str, what: str) -> str:
    """``argument``, or a ``ValueError`` saying the scheme needs one (``what``: e.g. ``"PATH"``)."""
    if not argument:
        scheme = spec.partition(":")[0]
        raise ValueError(f"data source {spec!r} needs an argument: {scheme}:{what}")
    return argument


def forbid_argument(spec: str, argument: str) -> None:
    """A ``ValueError`` if a scheme that takes no argument got one."""
    if argument:
        scheme = spec.partition(":")[0]
        raise ValueError(f"data source {spec!r}: {scheme} takes no argument, write just {scheme!r}")
