"""Read shards back for one rank of a distributed job, exactly once (eval) or in equal amounts (train).

We split work between ranks ourselves (no ``DistributedSampler``, no ``accelerate.prepare`` on the loader)
because the two things distributed training needs are easy to get subtly wrong with shard streams:

1. **Every rank must yield the same number of batches** in training, or DDP's all-reduce waits forever
   on the rank that ran out. Shards are uneven (the last one is short, skipped images shorten others).
2. **Evaluation must see every sample exactly once** across all ranks and DataLoader workers, even with
   fewer shards than ranks x workers.

How: for an epoch, the split's samples form one sequence: shards in an order, each shard's samples in an
order. ``eval`` uses manifest order and tar order; ``train`` permutes the shards and the samples inside
each shard with generators seeded by (seed, epoch), so every epoch differs and any epoch is reproducible.
Rank ``r`` of ``W`` takes the contiguous slice ``[r*T//W, (r+1)*T//W)`` of that sequence (T samples), so
ranks read disjoint samples, mostly whole shards (only a slice boundary shares a shard, each rank then
reading its own part of it); the slice is cut again, contiguously, between the rank's DataLoader workers.

- ``eval``: nothing more; ranks get ``floor`` or ``ceil`` of T/W samples, every sample exactly once.
- ``train``: every rank yields exactly ``samples_per_rank = ceil(T/W)``. A rank whose slice has
  ``floor(T/W)`` samples (only when W does not divide T) wraps around and yields the *first sample of its
  own slice* once more: per epoch exactly ``W*ceil(T/W) - T`` (at most W-1) samples are seen twice, at
  most one per rank, none is dropped, and which ones changes with the epoch's permutation.

Samples of a local shard are read in the permuted order by seeking in the tar (headers indexed once per
worker), so no shard is held in memory.

**Remote shards** (a URL or ``pipe:`` location, see ``zmdist.data.location``) cannot be seeked cheaply, so
they are read as streams, start to end (``access="stream"``, the default for remote locations; it can be
asked for locally too). Then a rank's slice is cut from each shard in *tar order* instead of a permuted
order, and each piece is shuffled by a seeded shuffle buffer of ``shuffle_buffer`` samples (WebDataset's
way) instead of a full permutation: the guarantees above are unchanged (same counts, eval exactly once in
the same order), training batches are less thoroughly mixed within a shard, and at most
``shuffle_buffer`` samples per worker wait in memory. The order is still a pure function of
(seed, epoch), so local and remote runs with ``access="stream"`` read the same batches.

**Resume without decoding**: ``set_epoch(epoch, skip_batches=k)`` makes the loader yield exactly the
batches ``k, k+1, ...`` of that epoch, in the order an uninterrupted loader would, without reading or
decoding the first ``k`` (for a stream, their bytes are read past but not decoded).

``assign_shards`` is the other way to split: whole shards per rank, for jobs that write one output file
per shard (``zmdist embed``); it balances sample counts but cannot make them equal.
"""

from __future__ import annotations

import heapq
import io
import json
import math
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zmdist.data.images import to_rgb
from zmdist.data.location import is_remote, open_ref
from zmdist.data.manifest import Manifest

MODES = ("train", "eval")
ACCESS = ("auto", "random", "stream")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")
_SHARD_ORDER, _SAMPLE_ORDER, _BUFFER_ORDER = 0, 1, 2  # independent random streams per (seed, epoch)


def assign_shards(counts: Sequence[int], rank: int, world: int) -> list[int]:
    """Whole shards for ``rank``: disjoint across ranks, balancing sample counts (for per-shard jobs).

    Greedy: largest shard first (ties: lower index) onto the least-loaded rank (ties: lower rank).
    Deterministic; returns the rank's shard indices in ascending order.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    loads = [(0, r) for r in range(world)]
    mine = []
    for index in sorted(range(len(counts)), key=lambda i: (-counts[i], i)):
        load, owner = heapq.heappop(loads)
        if owner == rank:
            mine.append(index)
        heapq.heappush(loads, (load + counts[index], owner))
    return sorted(mine)


def _split_member_name(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _check_member(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` cannot be a sample file of a zmdist shard, or None when it can.

    Shards hold flat ``KEY.EXT`` regular files with keys of ``[A-Za-z0-9_-]`` (README "Data formats").
    Anything else (``../x``, ``/abs/x``, ``dir/x``, links, devices, odd characters) did not come from
    ``zmdist shard``; it is refused rather than turned into a key that could clash or escape a folder.
    """
    name = member.name
    if not (member.isreg() or member.isdir()):
        return "is not a regular file (link or special member)"
    if member.isdir() or "/" in name or "\\" in name:
        return "has a path component (shards hold flat KEY.EXT files)"
    key, _ = _split_member_name(name)
    if not _KEY.fullmatch(key):
        return f"key {key!r} is not made of [A-Za-z0-9_-]"
    return None


class _ShardFile:
    """Random access to one tar shard's samples: member headers are indexed once, data read on demand."""

    def __init__(self, path: Path, expected: int | None = None):
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:")
            members = self._tar.getmembers()
        except (OSError, tarfile.TarError) as err:
            raise ValueError(f"shard {path} is not a readable tar ({err}): re-run `zmdist shard --overwrite`") from err
        self.samples: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
        for member in members:
            problem = _check_member(member)
            if problem is not None:
                self._tar.close()
                raise _refuse_member(path, member, problem)
            key, ext = _split_member_name(member.name)
            if not self.samples or self.samples[-1][0] != key:
                self.samples.append((key, {}))
            self.samples[-1][1][ext] = member
        if expected is not None and len(self.samples) != expected:
            self._tar.close()
            _check_count(path, len(self.samples), expected)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, position: int) -> tuple[str, dict[str, bytes]]:
        key, members = self.samples[position]
        files = {}
        for ext, member in members.items():
            handle = self._tar.extractfile(member)
            assert handle is not None, "regular members always have data"
            files[ext] = handle.read()
        return key, files

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> "_ShardFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refuse_member(where: object, member: tarfile.TarInfo, problem: str) -> ValueError:
    return ValueError(
        f"shard {where}: member {member.name!r} {problem}: refused (this set was not written by "
        "`zmdist shard`, or was changed since); rebuild it with `zmdist shard --overwrite`"
    )


def _check_count(where: object, found: int, expected: int | None) -> None:
    if expected is not None and found != expected:
        raise ValueError(
            f"shard {where} holds {found} samples but the manifest says {expected}: it changed "
            "after sharding; re-run `zmdist shard --overwrite`"
        )


def stream_shard(ref: Path | str, wanted: Callable[[int, str], bool] | None = None,
                 expected: int | None = None) -> Iterator[tuple[int, str, dict[str, bytes] | None]]:
    """(position, key, files) of every sample of a shard read start to end (remote or local), files only
    for samples where ``wanted(position, key)`` (None for the others: their bytes are passed over unread).

    Members are checked like random-access reads; the sample count is checked against ``expected`` when
    the stream is read to its end (a consumer that stops early gets no count check)."""
    try:
        raw = open_ref(ref)
    except OSError as err:
        raise ValueError(f"shard {ref} cannot be opened ({err})") from err
    with raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        position, key, files = -1, None, None
        for member in tar:
            problem = _check_member(member)
            if problem is not None:
                raise _refuse_member(ref, member, problem)
            name, ext = _split_member_name(member.name)
            if name != key:
                if expected is not None and position + 1 >= expected:  # before the last counted one is used
                    _check_count(ref, position + 2, expected)
                if key is not None:
                    yield position, key, files
                position, key = position + 1, name
                files = {} if wanted is None or wanted(position, name) else None
            if files is not None:
                handle = tar.extractfile(member)
                assert handle is not None, "regular members always have data"
                files[ext] = handle.read()
        if key is not None:
            yield position, key, files
        _check_count(ref, position + 1, expected)


def _decode(shard: str, key: str, files: dict[str, bytes], draft: int | None = None) -> tuple[Image.Image, int]:
    """RGB image and label (-1 when the sample has no ``.cls``).

    ``draft``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's ``draft``)
    as long as both sides stay >= ``draft`` pixels: several times faster when the consumer shrinks the
    image to that size anyway (a teacher's 224 px input from a 4000 px photo); pixels differ slightly
    from a full decode followed by the same resize."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    if ext is None:
        raise ValueError(f"shard {shard}: sample {key!r} has no image (members: {sorted(files)})")
    try:
        image = Image.open(io.BytesIO(files[ext]))
        if draft and image.format == "JPEG":
            image.draft("RGB", (draft, draft))
        image.load()
    except OSError as err:
        raise ValueError(f"shard {shard}: sample {key!r} has an undecodable image ({err}): re-run `zmdist shard`") from err
    label = int(files["cls"].decode("ascii")) if "cls" in files else -1
    return to_rgb(image)[0], label


def iter_shard(path: Path | str, *, skip_errors: bool = False, positions: Sequence[int] | None = None,
               keys: set[str] | None = None, expected: int | None = None, draft: int | None = None,
               origins: bool = False) -> Iterator[dict]:
    """Samples of one shard in tar order: ``{"key", "image" (PIL RGB), "label" (int, -1 = none), "shard"}``,
    with ``origins`` also ``"origin"``: the source path or id its ``.json`` recorded at shard time ("" if none).

    ``path`` is a local file or a remote reference (``Location.ref``: URL or ``pipe:`` command, read as
    a stream). ``positions`` (tar sample positions, ascending for remote shards) or ``keys`` read only
    those samples: a local shard's members are located from the tar headers and only their bytes are read
    and decoded (e.g. the 40 labelled samples of a large split); a remote stream passes the others unread.
    ``expected`` checks the shard's sample count (the manifest's). An undecodable sample raises, or with
    ``skip_errors`` comes as ``{"key", "image": None, "error", ...}`` so a caller that must account for
    every key (``zmdist embed``) can report it instead of stopping. ``draft``: JPEGs may be decoded at a
    reduced scale keeping both sides >= ``draft`` (see ``_decode``).
    """
    name = _shard_name(path)
    for key, files in _raw_samples(path, positions, keys, expected):
        try:
            image, label = _decode(name, key, files, draft)
        except ValueError as err:
            if not skip_errors:
                raise
            yield {"key": key, "image": None, "label": -1, "shard": name, "error": str(err)}
            continue
        sample = {"key": key, "image": image, "label": label, "shard": name}
        if origins:
            sample["origin"] = _origin(name, key, files)
        yield sample


def _origin(shard: str, key: str, files: dict[str, bytes]) -> str:
    """The source path or id a sample's ``.json`` recorded at shard time ("" when it has none)."""
    if "json" not in files:
        return ""
    try:
        return str(json.loads(files["json"]).get("origin") or "")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"shard {shard}: sample {key!r} has an unreadable .json ({err}): "
                         "re-run `zmdist shard`") from err


def _shard_name(ref: Path | str) -> str:
    """The shard's file name (``train-000003.tar``), also for a URL or a ``pipe:`` command."""
    return Path(ref).name if not is_remote(ref) else str(ref).rstrip("/").split("/")[-1].split()[0]


def _raw_samples(path: Path | str, positions: Sequence[int] | None, keys: set[str] | None,
                 expected: int | None) -> Iterator[tuple[str, dict[str, bytes]]]:
    if is_remote(path):
        chosen = None if positions is None else set(int(p) for p in positions)
        if positions is not None and list(positions) != sorted(chosen):
            raise ValueError("positions must be ascending for a remote shard (it is read as a stream)")

        def wanted(position: int, key: str) -> bool:
            return (chosen is None or position in chosen) and (keys is None or key in keys)

        for _, key, files in stream_shard(path, wanted, expected):
            if files is not None:
                yield key, files
        return
    with _ShardFile(Path(path), expected) as shard:
        if positions is None:
            positions = range(len(shard))
        for position in positions:
            if keys is None or shard.samples[position][0] in keys:
                yield shard.read(position)


def shard_keys(path: Path | str) -> list[str]:
    """Sample keys of one shard in tar order, from the headers only (no image is read; a remote shard is
    streamed through once)."""
    if is_remote(path):
        return [key for _, key, _ in stream_shard(path, lambda position, key: False)]
    with _ShardFile(Path(path)) as shard:
        return [key for key, _ in shard.samples]


@dataclass(frozen=True)
class Piece:
    """Samples of one shard (by index in the split) to read, at these tar positions, in this order."""

    shard: int
    positions: np.ndarray


def _even_bounds(total: int, parts: int, index: int) -> tuple[int, int]:
    return index * total // parts, (index + 1) * total // parts


def samples_per_rank(total: int, world: int, rank: int, mode: str) -> int:
    """What one rank yields per epoch: ``ceil(total/world)`` in train, its own slice size in eval."""
    if mode == "train":
        return math.ceil(total / world)
    start, stop = _even_bounds(total, world, rank)
    return stop - start


def worker_plan(
    counts: Sequence[int],
    rank: int,
    world: int,
    worker: int,
    num_workers: int,
    *,
    mode: str,
    seed: int,
    epoch: int,
    align: int = 1,
    permute_within: bool = True,
) -> list[Piece]:
    """The pieces one DataLoader worker of one rank reads in an epoch (see the module docstring).

    The rank's ``samples_per_rank`` are cut into ``align``-sized chunks dealt contiguously to workers,
    so with ``align`` = batch size every worker but the last yields whole batches. ``permute_within``
    False keeps tar order inside shards (train mode over streams).
    """
    total = sum(counts)
    if mode == "train":
        shard_order = np.random.default_rng([seed, epoch, _SHARD_ORDER]).permutation(len(counts))
    else:
        shard_order = np.arange(len(counts))

    def order_within(shard: int) -> np.ndarray:
        if mode == "train" and permute_within:
            return np.random.default_rng([seed, epoch, _SAMPLE_ORDER, shard]).permutation(counts[shard])
        return np.arange(counts[shard])

    def sequence_slice(start: int, stop: int) -> list[Piece]:
        pieces, offset = [], 0
        for shard in shard_order:
            count = counts[shard]
            lo, hi = max(start - offset, 0), min(stop - offset, count)
            if lo < hi:
                pieces.append(Piece(int(shard), order_within(int(shard))[lo:hi]))
            offset += count
            if offset >= stop:
                break
        return pieces

    rank_start, rank_stop = _even_bounds(total, world, rank)
    own = rank_stop - rank_start
    wanted = samples_per_rank(total, world, rank, mode)
    chunks = math.ceil(wanted / align)
    first, last = _even_bounds(chunks, num_workers, worker)
    virtual, virtual_stop = first * align, min(last * align, wanted)
    pieces: list[Piece] = []
    while virtual < virtual_stop:  # indices past the rank's own slice wrap to its start (train only)
        lo = virtual % own
        hi = min(own, lo + virtual_stop - virtual)
        pieces += sequence_slice(rank_start + lo, rank_start + hi)
        virtual += hi - lo
    return pieces


def chunks_per_worker(samples: int, align: int, num_workers: int) -> list[int]:
    """How many ``align``-sized chunks (batches) each worker yields from ``samples`` (``worker_plan``'s deal)."""
    chunks = math.ceil(samples / align)
    return [hi - lo for lo, hi in (_even_bounds(chunks, num_workers, w) for w in range(num_workers))]


def resume_roles(sizes: Sequence[int], done: int) -> tuple[int, list[int]]:
    """After a DataLoader yielded ``done`` batches from workers holding ``sizes`` batches each: the worker
    whose turn is next, and how many batches each has yielded.

    A DataLoader over an ``IterableDataset`` takes batches from its workers in turn (0, 1, ..., skipping
    workers that ran out). A resumed loader starts again at worker 0, so its worker ``i`` plays the role
    of worker ``(next + i) % n`` with that worker's yielded batches skipped: it then yields the remaining
    batches in the uninterrupted order."""
    if not 0 <= done <= sum(sizes):
        raise ValueError(f"cannot skip {done} batches of an epoch that has {sum(sizes)}")
    consumed, worker = [0] * len(sizes), 0
    for _ in range(done):
        while consumed[worker] >= sizes[worker]:
            worker = (worker + 1) % len(sizes)
        consumed[worker] += 1
        worker = (worker + 1) % len(sizes)
    return worker, consumed


def buffer_order(count: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order a shuffle buffer of ``buffer`` items emits ``0..count-1`` read in sequence (WebDataset's
    ``shuffle``): each new item joins the buffer and, once it is full, a random one leaves. Computed ahead
    from the RNG alone, so a reader knows the order before it reads, and never holds more than ``buffer``."""
    pending: list[int] = []
    order = np.empty(count, dtype=np.int64)
    out = 0
    for item in range(count):
        pending.append(item)
        if len(pending) >= buffer:
            j = int(rng.integers(len(pending)))
            order[out], pending[j] = pending[j], pending[-1]
            pending.pop()
            out += 1
    while pending:
        j = int(rng.integers(len(pending)))
        order[out], pending[j] = pending[j], pending[-1]
        pending.pop()
        out += 1
    return order


class ShardDataset(IterableDataset):
    """One rank's view of a sharded split; yields ``sample_fn(record)`` for every sample it reads, where
    ``record = {"image" (PIL RGB), "label" (-1 = unlabelled), "key", "shard", "epoch"}`` (e.g. two augmented
    views seeded per key and epoch, joined to the sample's pseudolabel by (shard, key)).

    ``mode="eval"``: each sample exactly once over all ranks and workers, in manifest/tar order.
    ``mode="train"``: exactly ``len(self)`` = ``ceil(total/world)`` samples per rank per epoch, order
    shuffled from (seed, epoch); call ``set_epoch`` before each epoch. ``positions`` restricts the split
    to these tar positions per shard (a hold-out slice, say) with the same guarantees. ``shards`` is a
    local folder or a remote location (``zmdist.data.location``); ``access`` picks random access or
    streams (``auto``: streams for remote shards; see the module docstring). Worker processes get a copy
    of the dataset when a DataLoader iterator starts, so do not use ``persistent_workers`` (``make_loader``
    does not): persistent workers would keep the first epoch's order.
    """

    def __init__(
        self,
        shards: Path | str,
        split: str,
        rank: int = 0,
        world: int = 1,
        *,
        mode: str = "train",
        seed: int = 0,
        sample_fn: Callable[[dict], Any],
        positions: Sequence[np.ndarray] | None = None,
        access: str = "auto",
        shuffle_buffer: int = 1000,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if access not in ACCESS:
            raise ValueError(f"access must be one of {ACCESS}, got {access!r}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world size {world}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        manifest = Manifest.load(shards)
        self.paths = manifest.shard_paths(split)
        self.shard_counts = manifest.counts(split)
        if access == "random" and any(is_remote(p) for p in self.paths):
            raise ValueError(f"access='random' needs local shards; {shards} is remote (use 'stream' or 'auto')")
        self.stream = access == "stream" or (access == "auto" and any(is_remote(p) for p in self.paths))
        self.shuffle_buffer = shuffle_buffer
        # ``positions``: per shard (split order), the tar positions this dataset covers (e.g. the training
        # split without a hold-out slice); the planner works on their counts, reads map back to the tar.
        if positions is not None and len(positions) != len(self.paths):
            raise ValueError(f"positions has {len(positions)} entries but split {split!r} has {len(self.paths)} shards")
        self.positions = None if positions is None else [np.sort(np.asarray(p, dtype=np.int64)) for p in positions]
        self.counts = self.shard_counts if positions is None else [len(p) for p in self.positions]
        self.total = sum(self.counts)
        if self.total == 0:
            raise ValueError(f"split {split!r} in {shards} has no samples: check the manifest's skipped list")
        if mode == "train" and world > self.total:
            raise ValueError(
                f"world size {world} exceeds the {self.total} samples of split {split!r}: every rank needs at "
                "least one sample per epoch; use fewer processes or more data"
            )
        self.classes = manifest.classes
        self.split, self.rank, self.world, self.mode = split, rank, world, mode
        self.seed, self.sample_fn = seed, sample_fn
        self.epoch = 0
        self.skip_batches = 0
        self.align = 1

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Pick the epoch's shuffle (train), and with ``skip_batches`` start at that batch of the epoch (a
        resumed run: the skipped samples are not decoded); call in the main process before iterating."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if skip_batches < 0:
            raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
        self.epoch, self.skip_batches = epoch, skip_batches

    def align_to(self, batch_size: int) -> None:
        """Split work between workers in whole batches, so ``len(loader) == ceil(len(self)/batch_size)``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.align = batch_size

    def __len__(self) -> int:
        return samples_per_rank(self.total, self.world, self.rank, self.mode)

    def plan(self, worker: int = 0, num_workers: int = 1) -> list[Piece]:
        """The pieces this worker reads this epoch, as tar positions in read order (after ``skip_batches``)."""
        role, skip = worker, 0
        if self.skip_batches:
            sizes = chunks_per_worker(len(self), self.align, num_workers)
            following, consumed = resume_roles(sizes, self.skip_batches)
            role = (following + worker) % num_workers
            skip = consumed[role] * self.align
        pieces = worker_plan(
            self.counts, self.rank, self.world, role, num_workers,
            mode=self.mode, seed=self.seed, epoch=self.epoch, align=self.align, permute_within=not self.stream,
        )
        if self.positions is not None:
            pieces = [Piece(p.shard, self.positions[p.shard][p.positions]) for p in pieces]
        if self.stream and self.mode == "train":
            pieces = [Piece(p.shard, p.positions[buffer_order(len(p.positions), self.shuffle_buffer, np.random.default_rng(
                [self.seed, self.epoch, _BUFFER_ORDER, p.shard, int(p.positions[0])]))]) for p in pieces]
        return _drop_first(pieces, skip)

    def _records(self, pieces: list[Piece]) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        """Raw (shard name, key, files) in plan order, keeping one shard open at a time."""
        if self.stream:
            for piece in pieces:
                yield from self._streamed(piece)
            return
        current: _ShardFile | None = None
        try:
            for piece in pieces:
                if current is None or current.path != self.paths[piece.shard]:
                    if current is not None:
                        current.close()
                    current = _ShardFile(self.paths[piece.shard], self.shard_counts[piece.shard])
                for position in piece.positions:
                    key, files = current.read(int(position))
                    yield current.path.name, key, files
        finally:
            if current is not None:
                current.close()

    def _streamed(self, piece: Piece) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        """One piece read from its shard's stream: samples wait (undecoded) until their turn in the piece's
        order, which ``buffer_order`` bounds to about ``shuffle_buffer`` of them."""
        ref = self.paths[piece.shard]
        order = [int(p) for p in piece.positions]
        wanted, pending, turn = set(order), {}, 0
        stream = stream_shard(ref, lambda position, key: position in wanted, self.shard_counts[piece.shard])
        try:
            for position, key, files in stream:
                if files is not None:
                    pending[position] = (key, files)
                while turn < len(order) and order[turn] in pending:
                    key, files = pending.pop(order[turn])
                    turn += 1
                    yield _shard_name(ref), key, files
                if turn == len(order):
                    break
        finally:
            stream.close()
        if turn < len(order):
            raise ValueError(f"shard {ref} ended before sample position {order[turn]}: it is shorter than the manifest says")

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for shard, key, files in self._records(self.plan(worker, num_workers)):
            image, label = _decode(shard, key, files)
            yield self.sample_fn({"image": image, "label": label, "key": key, "shard": shard, "epoch": self.epoch})


def _drop_first(pieces: list[Piece], count: int) -> list[Piece]:
    """``pieces`` without their first ``count`` samples (in read order)."""
    kept = []
    for piece in pieces:
        if count >= len(piece.positions):
            count -= len(piece.positions)
            continue
        kept.append(Piece(piece.shard, piece.positions[count:]))
        count = 0
    return kept


def make_loader(dataset: ShardDataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader over one rank's ``ShardDataset`` (rank splitting is already done by the dataset; keep
    it away from ``accelerator.prepare``, which would split or dispatch it again).

    Aligns the dataset's worker split to ``batch_size`` (see ``ShardDataset.align_to``), so every rank
    gets ``ceil(len(dataset)/batch_size)`` batches whatever ``num_workers`` is.
    """
    dataset.align_to(batch_size)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, persistent_workers=False)
