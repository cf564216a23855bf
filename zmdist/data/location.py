"""Where a folder of shards, embeddings or pseudolabels lives: on disk, behind a URL, or behind a command.

A *location* is what a user passes as ``shards=``, ``embeddings=`` or ``pseudolabels=``:

- a local folder: ``/data/pets-shards`` (random access into tars, every check done on disk);
- a URL of a folder: ``https://host/pets-shards``, ``http://...``, ``gs://bucket/pets-shards``,
  ``s3://bucket/pets-shards``; a file ``NAME`` in it is ``URL/NAME``;
- a WebDataset ``pipe:`` command template with ``{name}`` standing for the file name, e.g.
  ``pipe:cat /mnt/lustre/pets/{name}`` or ``pipe:aws s3 cp --quiet s3://bucket/pets/{name} -``.

Remote files are opened with WebDataset's ``gopen`` (``curl`` for http(s), ``gsutil`` for ``gs://``;
``s3://`` goes through ``aws s3 cp ... -``, the pipe WebDataset's docs recommend), so every scheme
WebDataset reads, zmdist reads, with no I/O code of its own. Remote files are read as streams, start to end:
``zmdist.data.reader`` reads remote shards sequentially (see its docstring for how training order then
differs). Stages always write to a local folder.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_URL = re.compile(r"^(https?|gs|s3)://")
NAME_FIELD = "{name}"


@dataclass(frozen=True)
class Location:
    """A folder of files: local (``path``) or remote (``spec``: a URL or a ``pipe:`` template)."""

    spec: str

    @classmethod
    def parse(cls, spec: str | Path) -> "Location":
        text = str(spec)
        if text.startswith("pipe:") and NAME_FIELD not in text:
            raise ValueError(
                f"{text!r}: a pipe: location needs {NAME_FIELD} where the file name goes, "
                "e.g. 'pipe:cat /data/shards/{name}'"
            )
        if not text:
            raise ValueError("empty location: give a folder, a URL (https://, s3://, gs://) or a pipe: template")
        return cls(text.rstrip("/") if _URL.match(text) else text)

    @property
    def is_local(self) -> bool:
        return not (self.spec.startswith("pipe:") or _URL.match(self.spec))

    @property
    def path(self) -> Path:
        """The local folder (only for local locations)."""
        if not self.is_local:
            raise ValueError(f"{self.spec} is remote; this operation needs a local folder")
        return Path(self.spec)

    def ref(self, name: str) -> Path | str:
        """What readers open for file ``name``: a local ``Path``, or a URL / ``pipe:`` command string."""
        if self.is_local:
            return Path(self.spec) / name
        if self.spec.startswith("pipe:"):
            return self.spec.replace(NAME_FIELD, name)
        return f"{self.spec}/{name}"

    def exists(self, name: str) -> bool | None:
        """Whether file ``name`` exists; None for remote locations (known only when it is read)."""
        return (Path(self.spec) / name).is_file() if self.is_local else None

    def read_bytes(self, name: str) -> bytes:
        """The whole file; a missing remote file raises ``FileNotFoundError`` naming the URL or command."""
        with open_ref(self.ref(name)) as handle:
            return handle.read()

    def __str__(self) -> str:
        return self.spec


def is_remote(ref: Path | str) -> bool:
    return isinstance(ref, str) and (ref.startswith("pipe:") or bool(_URL.match(ref)))


def open_ref(ref: Path | str) -> IO[bytes]:
    """Open a file a ``Location.ref`` names, for reading from the start (remote: a stream via ``gopen``)."""
    if not is_remote(ref):
        return open(ref, "rb")
    from webdataset.gopen import gopen

    url = str(ref)
    if url.startswith("s3://"):
        url = f"pipe:aws s3 cp --quiet {url} -"
    try:
        return _CheckedStream(gopen(url, "rb"), str(ref))
    except Exception as err:  # gopen raises ValueError/OSError/subprocess errors depending on the scheme
        raise FileNotFoundError(f"cannot open {ref} ({err})") from err


class _CheckedStream(io.RawIOBase):
    """A gopen stream whose failure (curl's 404, a command's non-zero exit) surfaces as
    ``FileNotFoundError`` naming the file, instead of an empty read or a bare ``IOError`` at close."""

    def __init__(self, stream: IO[bytes], ref: str):
        self._stream, self._ref = stream, ref

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        return self._read(size)

    def _read(self, size: int) -> bytes:
        try:
            return self._stream.read(size)
        except Exception as err:
            raise FileNotFoundError(f"cannot read {self._ref} ({err})") from err

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._stream.close()
        except Exception as err:
            raise FileNotFoundError(f"cannot read {self._ref} ({err})") from err
        finally:
            super().close()
