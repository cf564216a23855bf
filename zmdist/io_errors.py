"""Output that cannot be written (full disk, quota, read-only or forbidden folder), told in one line.

Libraries report such a failure in many shapes, so a stage cannot catch it as ``OSError`` alone:

- ``OSError`` with its errno (``open``, ``mkstemp``, ``np.savez`` on a file object);
- safetensors' ``SafetensorError`` ("I/O error: No space left on device (os error 28)": a Rust error, no errno);
- ``torch.save`` into a file object: a ``RuntimeError`` whose ``__context__`` is the ``OSError``;
- short writes that lost the errno: numpy's ``tofile`` ("13460 requested and 7136 written") and
  PyTorch's zip writer into a path ("unexpected pos 704 vs 598"), both only ever a full disk.

``write_errno`` finds the errno in any of them; ``atomic.atomic_path`` re-raises what it recognises as
``OutputError(errno, strerror, TARGET)`` so the message names the file being written (not its temp file);
``zmdist.cli`` and the cluster task runner (``zmdist.cluster.task``) print ``describe``'s one line.

Exit status: ``EXIT_DISK_FULL`` = 74 (EX_IOERR) when the file system or the quota is full, and
``EXIT_NOT_WRITABLE`` = 73 (EX_CANTCREAT, "an output file cannot be created") when the folder is read-only
or not ours to write. Two codes because the remedies differ (free space vs. fix permissions or pick
another --out); in both cases nothing finished is lost and the same command resumes.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

EXIT_DISK_FULL = 74
EXIT_NOT_WRITABLE = 73
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# Permission errors also come from reading an input: they count as write failures only for a path under
# --out or a file ``atomic_path`` was writing (an ``OutputError``). A read-only file system is always one.
_PERMISSION = frozenset({errno.EACCES, errno.EPERM})
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written|unexpected pos \d+ vs \d+")
_CLEAR_ERRORS = (ValueError, LookupError)  # the project's own one-line errors: never reinterpreted


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    while err is not None and all(err is not s for s in seen) and len(seen) < 16:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def write_errno(err: BaseException) -> int | None:
    """The errno of a failed write (one of ``FULL | NOT_WRITABLE``) found in ``err`` or its chain, else None."""
    if isinstance(err, _CLEAR_ERRORS):
        return None
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in FULL | NOT_WRITABLE:
            return link.errno
        text = str(link)
        for match in _ERRNO_IN_TEXT.finditer(text):
            code = int(match.group(1) or match.group(2))
            if code in FULL | NOT_WRITABLE:
                return code
        if _SHORT_WRITE.search(text):
            return errno.ENOSPC
    return None


class WriteFailure(Exception):
    """A stage stopped by a failed write: ``describe``'s one line and the exit status it means.

    ``zmdist STAGE`` prints the line; the cluster task runner raises this in place of the library's error,
    so a submitit job's error ends in the same line."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message, exit_status)  # both in args: it pickles, as submitit's errors must

    @property
    def message(self) -> str:
        return self.args[0]

    @property
    def exit_status(self) -> int:
        return self.args[1]

    def __str__(self) -> str:
        return self.message


def _failed_path(err: BaseException) -> Path | None:
    """The file or folder named by the outermost ``OSError`` of the chain that names one (an ``OutputError``'s
    target before the temp file under it), else None."""
    for link in _chain(err):
        if isinstance(link, OSError) and link.filename:
            return Path(os.fsdecode(link.filename))
    return None


class OutputError(OSError):
    """A failed write of the file ``filename`` (raised by ``atomic_path``, from the library's own error)."""


def as_named(err: BaseException, path: Path) -> OutputError | None:
    """``err`` as ``OutputError(errno, strerror, path)`` when it is a failed write of ``path`` (or of its temp
    file beside it, or of a folder above it), else None: an input read while writing stays what it was."""
    code = write_errno(err)
    named = _failed_path(err)
    if code is None or (named is not None and named.parent != path.parent and named not in (path, *path.parents)):
        return None
    return OutputError(code, os.strerror(code), str(path))


def _of_out(path: Path, out: Path) -> bool:
    """Whether ``path`` is ``out``, in it, or a folder above it (being created for it)."""
    path, out = path.absolute(), out.absolute()
    return path == out or out in path.parents or path in out.parents


def describe(err: BaseException, out: Path) -> WriteFailure | None:
    """One line for a failed write of a stage writing into ``out`` (the path, what is free there, what to do)
    and its exit status; None when ``err`` is not a failed write."""
    code = write_errno(err)
    if code is None:
        return None
    named = _failed_path(err)
    writing = any(isinstance(link, OutputError) for link in _chain(err))
    if code in _PERMISSION and not writing and (named is None or not _of_out(named, out)):
        return None  # e.g. an input file we may not read: not an output problem
    path = named or out
    keep = "then rerun the same command: finished files are kept, partial ones are discarded"
    if code in FULL:
        folder = next((p for p in (path, *path.parents) if p.exists()), Path("."))
        free = shutil.disk_usage(folder).free
        what = "disk full" if code == errno.ENOSPC else "disk quota exceeded"
        return WriteFailure(f"{what} (errno {code}) writing {path}: {free:,} bytes free on that file system; free "
                            f"space or point --out elsewhere, {keep}", EXIT_DISK_FULL)
    reason = os.strerror(code).lower()
    if _of_out(path, out):
        return WriteFailure(f"--out {out} is not writable ({reason}, errno {code}, writing {path}): make it writable "
                            f"or point --out elsewhere, {keep}", EXIT_NOT_WRITABLE)
    return WriteFailure(f"cannot write {path} ({reason}, errno {code}): make it writable, {keep}", EXIT_NOT_WRITABLE)

