"""``csv:FILE``: a table of image paths with optional class names and splits.

A UTF-8 file, with or without a byte-order mark. The header needs a ``path`` column, optionally ``label``
(class NAME; empty = unlabelled) and ``split`` (a name of letters, digits and ``_``); paths are relative to
the CSV's folder; classes are the sorted unique names. Rows whose file is missing are skipped with reason
``"missing file"``; repeated paths too (``"duplicate of line N"``). Without a ``split`` column everything is
``train`` and the shard stage's ``test_fraction`` makes the holdout.
"""

from __future__ import annotations

import csv
import functools
import re
from collections import defaultdict
from pathlib import Path

from PIL import Image

from zmdist.data.sources import SOURCES, Sample, Source, display_path, make_keys, require_argument

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@SOURCES.register("csv")
def open_csv(spec: str, argument: str) -> Source:
    """``csv:FILE``: one row per image (``path``, optional ``label`` and ``split``)."""
    file = Path(require_argument(spec, argument, "FILE")).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{spec}: CSV file {file} does not exist")
    with open(file, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's byte-order mark is not a column name
        reader = csv.DictReader(fh)
        try:
            columns = reader.fieldnames or []
            rows = [(reader.line_num, row) for row in reader]
        except UnicodeDecodeError as err:
            raise ValueError(f"{file} is not UTF-8 text ({err}); save it as CSV UTF-8") from None
    if "path" not in columns:
        raise ValueError(f"{file}: needs a header with a 'path' column (optional 'label', 'split'); found {columns}")
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
            skipped.append({"origin": display_path(path), "reason": f"duplicate of line {first_line[path]}"})
            continue
        first_line[path] = line
        if not path.is_file():
            skipped.append({"origin": display_path(path), "reason": "missing file"})
            continue
        name = (row.get("label") or "").strip()
        kept.append((split, path, rel.replace("\\", "/").lstrip("/"), index[name] if name else None))
    keys = make_keys([rel for _, _, rel, _ in kept], ids=[str(path) for _, path, _, _ in kept])
    samples: dict[str, list[Sample]] = defaultdict(list)
    for key, (split, path, _, label) in zip(keys, kept):
        samples[split].append(Sample(key, display_path(path), functools.partial(Image.open, path), label))
    if not samples:
        raise ValueError(f"{file}: no row points at an existing file ({len(skipped)} skipped)")
    return Source(spec, classes, dict(samples), own_splits=has_split, skipped=skipped)
