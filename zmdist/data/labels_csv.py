"""Human labels from a CSV (``key,label``): what ``zmdist train labels=FILE`` and ``zmdist select labelled=FILE.csv``
take, so an active-learning loop can take in labels that are not in the shards.

Format: UTF-8 text, with or without a byte-order mark (Excel's "CSV UTF-8"). The first line is a header that
must name a ``key`` and a ``label`` column, in any order; other columns are ignored, so ``to_label.csv`` of
``zmdist select`` (``key,origin,shard,label``) comes back as it is once its ``label`` column is filled. A label
is a class name of the shard set's manifest or, when no class has that name, a class index (``0`` .. ``C-1``).
Blank lines (also rows of empty cells) are skipped. A key listed twice with the same label counts once.

Errors name ``FILE:LINE``: a missing column, an empty key or label, an unknown class (with close names), an
index out of range, a key listed twice with different labels, a file without rows, and (``HumanLabels.
require_known``, called where the keys are known) a key that is not in the pool or split.
"""

from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("key", "label")


@dataclass(frozen=True)
class HumanLabels(Mapping[str, int]):
    """Key -> class index as read from ``path``; ``lines`` says where each key is (for error messages)."""

    path: str
    labels: dict[str, int]
    lines: dict[str, int]

    def __getitem__(self, key: str) -> int:
        return self.labels[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def require_known(self, known: Collection[str], where: str) -> None:
        """Raise naming the line of the first key (in file order) that is not in ``known`` (``where`` says
        what ``known`` is, e.g. ``split 'train' of the shards``)."""
        unknown = sorted((k for k in self.labels if k not in known), key=self.lines.__getitem__)
        if unknown:
            key = unknown[0]
            more = f" ({len(unknown) - 1} more unknown keys, e.g. {unknown[1:4]})" if len(unknown) > 1 else ""
            raise ValueError(f"{self.path}:{self.lines[key]}: key {key!r} is not in {where}{more}: "
                             "label keys of the same shard set and split")


def _class_index(text: str, classes: list[str], where: str) -> int:
    """A label cell as a class index: a class name first, else an integer index."""
    if text in classes:
        return classes.index(text)
    try:
        index = int(text)
    except ValueError:
        close = difflib.get_close_matches(text, classes, n=3)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"classes: {classes[:10]}"
        raise ValueError(f"{where}: label {text!r} is not a class of the shard set ({hint}); give a class name "
                         f"or an index 0..{len(classes) - 1}") from None
    if not 0 <= index < len(classes):
        raise ValueError(f"{where}: class index {index} is out of range: the shard set has {len(classes)} classes "
                         f"(0..{len(classes) - 1})")
    return index


def read_labels_csv(path: str | Path, classes: list[str]) -> HumanLabels:
    """Parse a ``key,label`` CSV against the shard set's ``classes`` (format: module docstring)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no such labels file (a CSV with columns key,label)")
    with open(file, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            rows = [(reader.line_num, [cell.strip() for cell in row]) for row in reader]
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err}); save it as CSV UTF-8") from None
        except csv.Error as err:
            raise ValueError(f"{path}:{reader.line_num}: not a readable CSV row ({err})") from None
    rows = [(line, row) for line, row in rows if any(row)]
    if not rows:
        raise ValueError(f"{path}:1: the file is empty: write a header key,label and one row per labelled sample")
    header_line, header = rows[0]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}:{header_line}: the header has no {' or '.join(map(repr, missing))} column "
                         f"(found {header}): the first line must name the columns key,label")
    key_col, label_col = header.index("key"), header.index("label")
    labels: dict[str, int] = {}
    lines: dict[str, int] = {}
    for line, row in rows[1:]:
        where = f"{path}:{line}"
        key = row[key_col] if key_col < len(row) else ""
        text = row[label_col] if label_col < len(row) else ""
        if not key:
            raise ValueError(f"{where}: the row has no key")
        if not text:
            raise ValueError(f"{where}: key {key!r} has no label: fill it in or delete the row")
        label = _class_index(text, classes, where)
        if key in labels and labels[key] != label:
            raise ValueError(f"{where}: key {key!r} is labelled {classes[label]!r} here but "
                             f"{classes[labels[key]]!r} on line {lines[key]}: keep one of the two rows")
        labels.setdefault(key, label)
        lines.setdefault(key, line)
    if not labels:
        raise ValueError(f"{path}:{header_line}: the file has a header but no rows: add one row key,label per "
                         "labelled sample")
    return HumanLabels(str(path), labels, lines)


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    """CSV text as ``read_labels_csv`` reads it back (cells quoted where a class name or path needs it)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
