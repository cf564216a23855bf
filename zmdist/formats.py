"""Embedding shards and pseudolabel sidecars: one ``.npz`` per image shard, aligned with it.

Both are plain uncompressed NumPy archives (never pickle: they load with ``allow_pickle=False``), named
after the image shard (``train-000003.tar`` -> ``train-000003.npz``), with rows in the tar's sample
order. The full layout is documented in the README ("Data formats"); this module is the only code that
reads or writes them.

Embedding file (``zmdist embed``): ``keys`` (N,) str, ``labels`` (N,) int64 (-1 = no label),
``embeddings`` (N, D) float16, L2-normalised image features of the teacher.

Pseudolabel sidecar (``zmdist pseudolabel``): ``keys``, ``labels`` (ground truth, -1 if none),
``pseudolabel`` (N,) int64, ``confidence`` / ``margin`` / ``entropy`` (N,) float32, ``topk_classes``
(N, k) int64 and ``topk_probs`` (N, k) float32, and ``probs`` (N, C) float16 when C is small enough.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zmdist.atomic import atomic_save_npz
from zmdist.data.location import Location, is_remote, open_ref
from zmdist.data.manifest import Manifest
from zmdist.jsonfile import read_json

EMBED_INFO_FILE = "embed_info.json"  # beside the embedding files: shards folder, splits, teacher, classes
EMBEDDING_FIELDS = ("keys", "labels", "embeddings")
PSEUDOLABEL_FIELDS = ("keys", "labels", "pseudolabel", "confidence", "margin", "entropy", "topk_classes", "topk_probs")


def sidecar_name(shard_name: str) -> str:
    """``train-000003.tar`` -> ``train-000003.npz``."""
    return Path(shard_name).with_suffix(".npz").name


# How each kind of file is rebuilt: the stage writes missing files on a rerun and skips existing ones.
_REBUILD = {"embedding": "`zmdist embed`", "pseudolabel": "`zmdist pseudolabel`"}


def first_duplicate(keys: np.ndarray) -> tuple[int, int] | None:
    """Rows ``(i, j)``, ``i < j``, of the first repeated key in row order (``j`` as small as possible), or
    None when every key is distinct. One sort, O(N log N): cheap next to reading the file."""
    keys = np.asarray(keys).astype(str)
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    repeats = order[1:][ranked[1:] == ranked[:-1]]
    if not len(repeats):
        return None
    second = int(repeats.min())
    return int(np.flatnonzero(keys == keys[second])[0]), second


def _check_rows(arrays: dict[str, np.ndarray], path: Path | str, what: str) -> None:
    """Refuse a key that appears twice (a key -> row map would silently keep one of the rows) and a
    non-finite value in any float field (one NaN row turns a mean, a k-means or a trained head into NaN)."""
    rebuild = _REBUILD.get(what, "the stage that wrote it")
    pair = first_duplicate(arrays["keys"])
    if pair is not None:
        raise ValueError(f"{what} file {path}: key {str(arrays['keys'][pair[1]])!r} appears twice (rows {pair[0]} "
                         f"and {pair[1]}); every sample has one row: the file was not written by {rebuild} for "
                         f"one shard; delete it and rerun {rebuild}")
    for name, values in arrays.items():
        if values.dtype.kind != "f" or bool(np.isfinite(values).all()):
            continue
        bad_rows = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
        row = int(bad_rows[0])
        example = " (e.g. `precision=fp32` if float16 overflowed)" if what == "embedding" else ""
        raise ValueError(f"{what} file {path}: row {row} (key {str(arrays['keys'][row])!r}) of {name!r} holds NaN or "
                         f"inf ({len(bad_rows)} of {len(values)} rows do); fix the cause{example} and rerun "
                         f"{rebuild} into a fresh folder")


def _load(path: Path | str, required: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """Arrays of a local file, or of a remote one (a ``Location.ref``: URL or ``pipe:`` command, read whole),
    checked: the fields are there with one row per key, keys are distinct and float values finite."""
    rebuild = _REBUILD.get(what, "the stage that wrote it")
    if is_remote(path):
        with open_ref(path) as handle:
            source: Any = io.BytesIO(handle.read())
    elif not Path(path).is_file():
        raise FileNotFoundError(f"{what} file {path} is missing")
    else:
        source = path
    try:
        with np.load(source, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # BadZipFile: truncated or corrupt
        raise ValueError(f"{what} file {path} is unreadable, truncated or corrupt ({err}); delete it and rerun "
                         f"{rebuild}, which rebuilds missing files") from err
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ValueError(f"{what} file {path} lacks fields {missing}; delete it and rerun {rebuild}")
    n = len(arrays["keys"])
    wrong = [name for name, a in arrays.items() if len(a) != n]
    if wrong:
        raise ValueError(f"{what} file {path}: fields {wrong} do not have {n} rows like 'keys'")
    _check_rows(arrays, path, what)
    return arrays


def check_split_keys(split: str, files: list[str], keys: list[np.ndarray]) -> None:
    """Refuse a key held by two files of one split (``keys[i]`` are the keys of ``files[i]``; each file's
    own keys are distinct, :func:`_load` checked): readers that concatenate a split map keys to rows."""
    pair = first_duplicate(np.concatenate(keys)) if keys else None
    if pair is None:
        return
    ends = np.cumsum([len(k) for k in keys])
    first, second = (int(np.searchsorted(ends, row, side="right")) for row in pair)
    key = str(keys[second][pair[1] - (ends[second - 1] if second else 0)])
    raise ValueError(f"split {split!r}: key {key!r} is in two embedding files, {files[first]} and {files[second]}; "
                     "a sample must be in one shard: they are not the files `zmdist embed` wrote for one shard set "
                     "(rerun `zmdist embed` into a fresh folder)")


@dataclass
class EmbeddingShard:
    keys: np.ndarray
    labels: np.ndarray
    embeddings: np.ndarray

    def save(self, path: Path) -> None:
        atomic_save_npz(path, keys=self.keys, labels=self.labels, embeddings=self.embeddings)

    @classmethod
    def load(cls, path: Path | str) -> "EmbeddingShard":
        return cls(**_load(path, EMBEDDING_FIELDS, "embedding"))


@dataclass
class PseudolabelShard:
    keys: np.ndarray
    labels: np.ndarray
    pseudolabel: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    entropy: np.ndarray
    topk_classes: np.ndarray
    topk_probs: np.ndarray
    probs: np.ndarray | None = None
    _index: dict[str, int] | None = field(default=None, repr=False, compare=False)

    def save(self, path: Path) -> None:
        arrays = {name: getattr(self, name) for name in PSEUDOLABEL_FIELDS}
        if self.probs is not None:
            arrays["probs"] = self.probs
        atomic_save_npz(path, **arrays)

    @classmethod
    def load(cls, path: Path | str) -> "PseudolabelShard":
        arrays = _load(path, PSEUDOLABEL_FIELDS, "pseudolabel")
        return cls(**{name: arrays[name] for name in (*PSEUDOLABEL_FIELDS, "probs") if name in arrays})

    def row(self, key: str) -> int:
        """Row of ``key`` (a dict built once per shard, so a join is O(1) per sample)."""
        if self._index is None:
            self._index = {str(k): i for i, k in enumerate(self.keys)}
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"no pseudolabel for key {key!r} in this sidecar") from None


class PseudolabelStore:
    """Join samples to their pseudolabels by (shard, key), loading each sidecar once, on first use."""

    def __init__(self, folder: str | Path):
        self.folder = Location.parse(folder)  # a local folder, a URL or a pipe: template
        if self.folder.is_local and not self.folder.path.is_dir():
            raise FileNotFoundError(f"pseudolabel folder {self.folder} does not exist: run `zmdist pseudolabel` first")
        self._shards: dict[str, PseudolabelShard] = {}

    def shard(self, shard_name: str) -> PseudolabelShard:
        if shard_name not in self._shards:
            path = self.folder.ref(sidecar_name(shard_name))
            if self.folder.exists(sidecar_name(shard_name)) is False:
                raise FileNotFoundError(
                    f"no pseudolabel sidecar for shard {shard_name} (expected {path}): rerun `zmdist pseudolabel`"
                )
            self._shards[shard_name] = PseudolabelShard.load(path)
        return self._shards[shard_name]

    def lookup(self, shard_name: str, key: str) -> tuple[int, float]:
        """(pseudolabel, confidence) of one sample; a missing key is an error naming shard and key."""
        sidecar = self.shard(shard_name)
        try:
            row = sidecar.row(key)
        except KeyError:
            raise KeyError(f"shard {shard_name}: no pseudolabel for key {key!r} in {self.folder}") from None
        return int(sidecar.pseudolabel[row]), float(sidecar.confidence[row])


@dataclass(frozen=True)
class EmbeddingRun:
    """An ``embed`` output opened for reading: where its files are, its ``embed_info.json``, and the
    manifest of the shard set it embedded (the stages that read embeddings all need these three)."""

    folder: Location
    info: dict[str, Any]
    manifest: Manifest


def open_embedding_run(embeddings: str, shards: str = "") -> EmbeddingRun:
    """Open the embeddings at ``embeddings`` (folder, URL or ``pipe:``); ``shards`` says where the shard set's
    manifest is now (default: where ``embed`` read it). A folder without ``embed_info.json`` is refused
    saying to run ``zmdist embed`` first."""
    folder = Location.parse(embeddings)
    if folder.exists(EMBED_INFO_FILE) is False:
        raise FileNotFoundError(f"embeddings={folder} has no {EMBED_INFO_FILE}: run `zmdist embed` first")
    info = read_json(folder.ref(EMBED_INFO_FILE), "rerun `zmdist embed` into a fresh folder to rebuild it",
                     folder.read_bytes(EMBED_INFO_FILE))
    return EmbeddingRun(folder, info, Manifest.load(shards or info["shards"]))
