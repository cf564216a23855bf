"""Where images come from: a spec string becomes a list of lazily-loaded samples per split.

Specs:

- ``imagefolder:PATH``: one sub-folder per class (sorted names give the class indices; images may sit
  in nested folders below a class folder). When every top-level folder of PATH is one of ``train``,
  ``val``, ``test`` and ``train`` holds folders, those are the splits (named after the folders) and the
  class list is the sorted union over them, so indices agree between splits. Image files are found by
  extension (png, jpg, jpeg, bmp, gif, webp, tif, tiff, any case). Anything else, and files that are not
  inside a class folder, is listed in ``skipped`` with the reason. An empty class folder is a warning,
  not an error: it keeps its class index (a class may be empty on purpose, e.g. a zero-shot-only class).
- ``csv:FILE``: header with a ``path`` column, optional ``label`` (class NAME; empty = unlabelled) and
  optional ``split`` columns; paths are relative to the CSV's folder; classes are the sorted unique
  names. Rows whose file is missing are skipped with reason ``"missing file"``; repeated paths too.
- ``sklearn-digits``: scikit-learn's ``load_digits()`` (1,797 real 8x8 digits), classes ``zero..nine``,
  keys ``digits-0000``..; it has no split of its own, so its default holdout (``test_fraction=None``) is 0.2.

Keys come from the path relative to the source root (``cat/001.jpg`` -> ``cat__001``), so they are
stable across runs and unique across splits; see ``make_keys``. Nothing depends on directory listing
order. Sources without their own splits get a seeded, per-class stratified holdout (``Source.splits``).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from zmdist.synth.digits import DIGIT_CLASSNAMES, digits_array_to_image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_FOLDERS = ("train", "val", "test")
HOLDOUT_SPLIT = "test"
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")
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


def make_keys(rel_paths: Sequence[str]) -> list[str]:
    """Stable unique sample keys for relative paths (same order as given).

    The extension is dropped, ``/`` becomes ``__`` and anything outside ``[A-Za-z0-9_-]`` becomes ``_``.
    Paths that map to the same key (``a.b.png`` and ``a_b.png``) all get ``_`` + 8 hex digits of the
    SHA-1 of their full relative path appended, which does not depend on which one was seen first.
    """
    bases = []
    for rel in rel_paths:
        stem = str(PurePosixPath(rel).with_suffix("")) if PurePosixPath(rel).suffix else rel
        bases.append(_KEY_UNSAFE.sub("_", stem.replace("/", "__")))
    uses: dict[str, int] = defaultdict(int)
    for base in bases:
        uses[base] += 1
    keys = [
        f"{base}_{hashlib.sha1(rel.encode('utf-8')).hexdigest()[:8]}" if uses[base] > 1 else base
        for base, rel in zip(bases, rel_paths)
    ]
    if len(set(keys)) != len(keys):
        seen: dict[str, str] = {}
        for key, rel in zip(keys, rel_paths):
            if key in seen:
                raise ValueError(f"paths {seen[key]!r} and {rel!r} map to the same sample key {key!r}: rename one")
            seen[key] = rel
    return keys


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


def _walk_files(folder: Path) -> Iterable[Path]:
    """Every file below ``folder``, in sorted order (never filesystem listing order)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _is_split_layout(root: Path, top_dirs: list[Path]) -> bool:
    names = {d.name for d in top_dirs}
    return "train" in names and names <= set(SPLIT_FOLDERS) and any(p.is_dir() for p in (root / "train").iterdir())


def _open_imagefolder(spec: str, root: Path) -> Source:
    if not root.is_dir():
        raise FileNotFoundError(f"{spec}: {root} is not a folder")
    top = sorted(root.iterdir())
    top_dirs = [p for p in top if p.is_dir()]
    split_layout = _is_split_layout(root, top_dirs)
    split_roots = {d.name: d for d in top_dirs} if split_layout else {"train": root}
    skipped: list[dict[str, str]] = []
    if split_layout:
        skipped += [{"origin": str(p), "reason": "not inside a split folder"} for p in top if not p.is_dir()]
    class_dirs: dict[str, list[Path]] = {}
    for split, folder in split_roots.items():
        entries = sorted(folder.iterdir())
        class_dirs[split] = [p for p in entries if p.is_dir()]
        skipped += [{"origin": str(p), "reason": "not inside a class folder"} for p in entries if not p.is_dir()]
    classes = sorted({d.name for dirs in class_dirs.values() for d in dirs})
    if not classes:
        raise ValueError(f"{spec}: no class folders in {root}: expected {root}/<class>/<image> (or {root}/train/<class>/...)")
    index = {name: i for i, name in enumerate(classes)}
    warnings: list[str] = []
    found: list[tuple[str, Path, int]] = []
    for split, dirs in class_dirs.items():
        for class_dir in dirs:
            images = 0
            for path in _walk_files(class_dir):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append((split, path, index[class_dir.name]))
                    images += 1
                else:
                    reason = f"not an image file (extension {path.suffix or 'none'!r})"
                    skipped.append({"origin": str(path), "reason": reason})
            if images == 0:
                warnings.append(f"class folder {class_dir} has no images")
    if not found:
        raise ValueError(f"{spec}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    keys = make_keys([path.relative_to(root).as_posix() for _, path, _ in found])
    samples: dict[str, list[Sample]] = {split: [] for split in split_roots}
    for key, (split, path, label) in zip(keys, found):
        samples[split].append(Sample(key, str(path), functools.partial(Image.open, path), label))
    return Source(spec, classes, samples, own_splits=split_layout, skipped=skipped, warnings=warnings)


def _open_csv(spec: str, file: Path) -> Source:
    if not file.is_file():
        raise FileNotFoundError(f"{spec}: CSV file {file} does not exist")
    with open(file, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if "path" not in columns:
            raise ValueError(f"{file}: needs a header with a 'path' column (optional 'label', 'split'); found {columns}")
        rows = [(reader.line_num, row) for row in reader]
    has_split = "split" in columns
    classes = sorted({(row.get("label") or "").strip() for _, row in rows} - {""})
    index = {name: i for i, name in enumerate(classes)}
    skipped: list[dict[str, str]] = []
    kept: list[tuple[str, Path, str, int | None]] = []
    first_line: dict[Path, int] = {}
    for line, row in rows:
        rel = (row.get("path") or "").strip()
        if not rel:
            raise ValueError(f"{file}:{line}: empty 'path'")
        split = (row.get("split") or "").strip() if has_split else "train"
        if not _SPLIT_NAME.match(split):
            raise ValueError(f"{file}:{line}: split {split!r} must be a non-empty name of letters, digits, '_'")
        path = (file.parent / rel).resolve()
        if path in first_line:
            skipped.append({"origin": str(path), "reason": f"duplicate of line {first_line[path]}"})
            continue
        first_line[path] = line
        if not path.is_file():
            skipped.append({"origin": str(path), "reason": "missing file"})
            continue
        name = (row.get("label") or "").strip()
        kept.append((split, path, rel.replace("\\", "/").lstrip("/"), index[name] if name else None))
    keys = make_keys([rel for _, _, rel, _ in kept])
    samples: dict[str, list[Sample]] = defaultdict(list)
    for key, (split, path, _, label) in zip(keys, kept):
        samples[split].append(Sample(key, str(path), functools.partial(Image.open, path), label))
    if not samples:
        raise ValueError(f"{file}: no row points at an existing file ({len(skipped)} skipped)")
    return Source(spec, classes, dict(samples), own_splits=has_split, skipped=skipped)


def _open_sklearn_digits(spec: str) -> Source:
    from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import

    data = load_digits()
    samples = [
        Sample(f"digits-{i:04d}", f"sklearn-digits:{i}", functools.partial(digits_array_to_image, data.images[i]), int(target))
        for i, target in enumerate(data.target)
    ]
    return Source(spec, list(DIGIT_CLASSNAMES), {"train": samples}, own_splits=False, default_test_fraction=0.2)


def open_source(spec: str) -> Source:
    """Parse ``imagefolder:PATH``, ``csv:FILE`` or ``sklearn-digits`` into a ``Source``."""
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder" and arg:
        return _open_imagefolder(spec, Path(arg).expanduser())
    if kind == "csv" and arg:
        return _open_csv(spec, Path(arg).expanduser())
    if spec == "sklearn-digits":
        return _open_sklearn_digits(spec)
    raise ValueError(f"unknown data source {spec!r}: use imagefolder:PATH, csv:FILE or sklearn-digits")
