"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the whole new one, never half.

Write to a temp file in the same folder, fsync, then ``os.replace``. The temp name is
``.tmp-<target name>.<random>``, so a crash leaves a clearly-named leftover, and the process that owns a
target (and only it: parallel jobs may be writing their own) removes it with ``clean_temp_files``.
The finished file gets the permissions a plain ``open()`` would give it (0666 minus the umask), not
``mkstemp``'s owner-only 0600: on a shared cluster the group must be able to read the results.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

TEMP_PREFIX = ".tmp-"


def _file_mode() -> int:
    """0666 minus this process's umask (os.umask can only be read by setting it: set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``, on error removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Save arrays as an uncompressed ``.npz`` atomically (no pickled objects: load with allow_pickle=False)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # type: IO[bytes]
            np.savez(fh, **arrays)


def clean_temp_files(targets: Iterable[Path]) -> int:
    """Remove temp files a killed run left for these target files; return how many."""
    removed = 0
    for target in targets:
        for leftover in target.parent.glob(f"{TEMP_PREFIX}{target.name}.*"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed
