"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the whole new one, never half.

Write to a temp file in the same folder, fsync, then ``os.replace``. The temp name is
``.tmp-<target name>.<random>``, so a crash leaves a clearly-named leftover, and the process that owns a
target (and only it: parallel jobs may be writing their own) removes it with ``clean_temp_files``.
The finished file gets the permissions a plain ``open()`` would give it (0666 minus the umask), not
``mkstemp``'s owner-only 0600: on a shared cluster the group must be able to read the results.
A write that fails for want of space or permission, in whatever shape the writing library reports it,
leaves as ``zmdist.io_errors.OutputError`` naming the target (see that module).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, NoReturn

import numpy as np

from zmdist.io_errors import as_named

TEMP_PREFIX = ".tmp-"


def _file_mode() -> int:
    """0666 minus this process's umask (os.umask can only be read by setting it: set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``, on error removed.

    A failed write (full disk, read-only or forbidden folder) is re-raised as ``OutputError`` naming
    ``path``: safetensors, torch and numpy report it without the file name or even the errno."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=path.suffix, dir=path.parent)
    except OSError as err:
        _raise_named(err, path)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        _raise_named(err, path)


def _raise_named(err: BaseException, path: Path) -> NoReturn:
    named = as_named(err, path)
    if named is None:
        raise err
    raise named from err


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Save one array as ``.npy`` atomically (load with allow_pickle=False)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def atomic_torch_save(path: Path, obj: object) -> None:
    """``torch.save`` atomically, through a file object: into a path, a full disk reaches us only as
    "unexpected pos"; through Python's file, as the OSError itself."""
    import torch  # lazy: `zmdist --help` and the data stages need no torch here

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def atomic_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Tensors as ``.safetensors`` atomically (contiguous CPU copies, as safetensors needs them)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def atomic_copy(source: Path, path: Path) -> None:
    """Copy ``source``'s bytes to ``path`` atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


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


def clean_temp_dir(folder: Path) -> int:
    """Remove every temp file a killed run left directly in ``folder``; return how many.

    Only for a folder one process writes (a stage's own output, under its writer lock): there no temp
    file can belong to a write still in progress. Folders that several workers write at once use
    ``clean_temp_files`` with each worker's own targets."""
    removed = 0
    for leftover in folder.glob(f"{TEMP_PREFIX}*") if folder.is_dir() else []:
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed
