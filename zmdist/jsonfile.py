"""Reading the JSON files zmdist writes (``embed_info.json``, ``fit.json``, run-info files, summaries).

Why one reader: a truncated or garbled file (a copy cut short, a disk that filled up, a hand edit) must be
one clear error naming the file and how to rebuild it, not a bare ``JSONDecodeError`` with no file name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Path | str, fix: str, data: bytes | str | None = None) -> dict[str, Any]:
    """The JSON object in ``path`` (or in ``data``, already read from the local or remote ``path``).

    ``fix`` says how to rebuild the file (e.g. "rerun `zmdist embed` into a new folder"); it ends the
    ValueError raised for text that is not UTF-8, not JSON, or whose top level is not an object."""
    try:
        raw = Path(path).read_bytes() if data is None else data
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON, it is truncated or garbled ({err}): {fix}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object: it is garbled; {fix}")
    return value
