"""Pieces several stages share: the teacher's config, shard planning across workers, run-info checks."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from zmdist.atomic import atomic_write_text
from zmdist.config import option
from zmdist.data.location import Location
from zmdist.data.manifest import Manifest, keys_digest
from zmdist.data.reader import assign_shards, shard_keys
from zmdist.dist import DistInfo
from zmdist.formats import sidecar_name
from zmdist.jsonfile import read_json
from zmdist.provenance import hash_json

log = logging.getLogger("zmdist")


@dataclass
class TeacherConfig:
    model: str = option("ViT-B-32", "open_clip model name (tiny offline ones: zmdist-tiny-vit, zmdist-micro-vit), "
                                    "hf-hub:org/repo, or local-dir:PATH (a folder with open_clip_config.json + weights)")
    pretrained: str = option("", "open_clip pretrained tag, a local checkpoint path, or random (random weights, on "
                                 "purpose); required for a registered model name, empty for hf-hub:/local-dir: "
                                 "models (they bring their weights)")
    model_config: str = option("", "extra open_clip model-config JSON file or folder to register first")
    cache_dir: str = option("", "folder open_clip downloads tags and hf-hub: repos into and reads them from "
                                "(offline: a pre-filled hub cache + HF_HUB_OFFLINE=1); empty = HF_HUB_CACHE")


Precision = Literal["auto", "fp32", "bf16", "fp16"]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision``: ``auto`` = bf16 on GPUs that have it, fp16 on older GPUs,
    full fp32 on the CPU (CPU autocast is slower than fp32 for these small matmuls)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    from zmdist.dist import default_device

    return default_device(info.local_rank) if spec == "auto" else torch.device(spec)


@dataclass(frozen=True)
class ShardJob:
    """One image shard and the per-shard file a stage writes for it."""

    index: int
    split: str
    name: str
    count: int
    path: Path | str  # local file, or a remote reference (URL / pipe: command)
    output: Path
    keys_sha256: str | None = None  # from the manifest (None: an older manifest)


def plan_shards(manifest: Manifest, splits: list[str], out: Path, info: DistInfo) -> tuple[list[ShardJob], list[ShardJob]]:
    """All shards of ``splits`` and this worker's share of them (disjoint across ranks and array tasks,
    balanced by sample count, identical on every rerun so a rerun finds its own finished files)."""
    unknown = [s for s in splits if s not in manifest.splits]
    if unknown:
        raise ValueError(f"splits: {unknown} not in the manifest of {manifest.location} (it has {sorted(manifest.splits)})")
    jobs: list[ShardJob] = []
    for split in splits or sorted(manifest.splits):
        for shard, path in zip(manifest.split(split).shards, manifest.shard_paths(split)):
            jobs.append(ShardJob(len(jobs), split, shard.name, shard.count, path, out / sidecar_name(shard.name),
                                 shard.keys_sha256))
    mine = assign_shards([j.count for j in jobs], info.worker_index, info.num_workers)
    return jobs, [jobs[i] for i in mine]


# What each compared run-info entry is, and how to get such a change, for the refusal message.
_WHAT_CHANGED = {
    "shards_fingerprint": "shards (the shard set was rebuilt or changed: other keys, counts or classes)",
    "teacher_fingerprint": "teacher (another model, config or weights file content, tag or random-weight seed)",
    "prompts_fingerprint": "prompts (other templates or class names)",
    "jpeg_draft": "jpeg_draft (JPEGs decoded at reduced scale or in full)",
    "splits": "splits",
    "labelled_keys": "labelled_keys (the labelled= file lists other keys)",
    "table_sha256": "table (the CSV file's content)",
    "fit_fingerprint": "fit (the fit.json's content)",
    "scores_read": "scores (the new tasks' scores as read)",
}


def check_run_info(path: Path, compared: dict[str, Any], what: str, recorded: dict[str, Any] | None = None) -> None:
    """Write ``compared`` + ``recorded`` to ``path``, or check an existing file's ``compared`` entries match:
    a rerun must not mix two runs' files. Entries are content fingerprints (``shards_fingerprint``,
    ``teacher_fingerprint``, ``prompts_fingerprint``), not paths, so a moved shard folder or checkpoint
    resumes and a shard set rebuilt in place (another seed) is refused. ``recorded`` entries (paths, the
    teacher's config) are informative and refreshed on a matching rerun. A refusal names what changed."""
    recorded = recorded or {}
    if path.is_file():
        old = read_json(path, f"it records what made the {what} in {path.parent}, so they cannot be checked; "
                              f"start afresh with a new --out folder, or delete {path.parent}")
        diff = {k: (old.get(k), v) for k, v in compared.items() if old.get(k) != v}
        if diff:
            details = "; ".join(
                f"{_WHAT_CHANGED.get(k, k)}: was {a!r}, now {b!r}"
                + (" (made by an older zmdist that did not record it)" if a is None else "")
                for k, (a, b) in diff.items()
            )
            changed = ", ".join(_WHAT_CHANGED.get(k, k).split(" (")[0] for k in diff)
            raise ValueError(
                f"{path.parent} already holds {what} made with other settings: {changed} changed ({details}). "
                f"To start afresh use a new --out folder, or delete {path.parent}."
            )
        if all(old.get(k) == v for k, v in recorded.items()):
            return
    atomic_write_text(path, json.dumps({**compared, **recorded}, indent=2) + "\n")


def warn_single_class(labels: np.ndarray | Sequence[int], classes: list[str], what: str) -> bool:
    """Log a warning when every labelled sample (label >= 0) is of one class, and say whether it did.

    Why a warning and not an error: the run is valid (TRZSL with one seen class, a deliberately one-class
    probe), but a model trained on one class's labels learns nothing that tells classes apart, which is
    rarely what a user who labelled a handful of keys meant."""
    known = np.asarray(labels, dtype=np.int64)
    known = known[known >= 0]
    present = np.unique(known)
    if len(present) != 1:
        return False
    index = int(present[0])
    log.warning("%s: all %d labelled samples are of class %r (index %d): what trains on them cannot learn to tell "
                "classes apart; label samples of at least 2 classes", what, len(known),
                classes[index] if index < len(classes) else str(index), index)
    return True


def shards_fingerprint(jobs: list[ShardJob], classes: list[str]) -> str:
    """A content fingerprint of the shards ``jobs`` cover: class names, and per shard its split, name,
    manifest count and the digest of its keys in tar order. A set rebuilt with another seed puts other
    keys in each shard, so it differs; the same set moved elsewhere (or served remotely) matches.

    The key digests come from the manifest, written at shard time, so nothing is read from the tars
    (a remote set would be streamed whole). A manifest of an older zmdist has none: then the keys are read
    from the tar headers, and each tar's sample count is checked against the manifest's. (With digests
    the count is checked where each shard is read; ``zmdist shard --verify`` checks a whole set.)"""
    parts: list[Any] = [list(classes)]
    for job in jobs:
        digest = job.keys_sha256
        if digest is None:
            keys = shard_keys(job.path)
            check_count(job, len(keys))
            digest = keys_digest(keys)
        parts.append([job.split, job.name, job.count, digest])
    return hash_json(parts)


def shards_spec(spec: str) -> str:
    """A location as recorded in run-info files: local folders made absolute, URLs and pipes as given."""
    location = Location.parse(spec)
    return str(location.path.resolve()) if location.is_local else location.spec


def check_count(job: ShardJob, found: int) -> None:
    if found != job.count:
        raise ValueError(
            f"shard {job.path} holds {found} samples but manifest.json says {job.count}: the shard or the "
            "manifest changed after sharding; rebuild the set with `zmdist shard --overwrite` "
            "(`zmdist shard --verify DIR` lists every problem)"
        )


WHOLE_FOLDER = "*"  # the shard list of a lock held over a whole output folder (``WorkerLock.whole_folder``)


class WorkerLock:
    """``OUT/.lock-task{i}-rank{r}``: one process of one run writes (and cleans the temp files of) its
    shards of ``OUT``.

    Why per worker, and why that is enough: every worker removes only the temp files of ITS OWN shards
    (``clean_temp_files(j.output for j in mine)``) and writes only those, and the shards of the workers of
    one run (ranks, array tasks) are disjoint, so they must not block each other, while one run-wide lock
    could not even be shared by array tasks on other hosts. A second command on the same ``OUT`` is
    caught in two ways: with the same layout its worker i collides with the first run's worker i on the
    lock file (created atomically with ``O_EXCL``); with another layout (other world size or task count)
    its worker finds a live lock file whose shard list overlaps its own (every lock file lists its
    worker's shards, and the scan happens after creating our own lock, so of two racing starts at least
    one sees the other). Either way it refuses, naming the host and pid, instead of deleting the running
    worker's half-written files.

    Stale locks (a killed run): on this host, a lock whose pid is not alive is taken over with a warning.
    On another host the pid cannot be checked, so a live lock's mtime is refreshed every
    ``heartbeat_s`` by a daemon thread and a lock not refreshed for ``stale_s`` is stale; a worker that
    meets another host's lock on its own name waits (at most ``stale_s``) to see whether it is refreshed:
    refreshed = a live run, refused; not = taken over (a SLURM job requeued on another node right after
    a kill resumes by itself)."""

    heartbeat_s = 30.0
    stale_s = 180.0

    def __init__(self, out: Path, task_index: int, rank: int, shards: list[str], what: str):
        self.path = out / f".lock-task{task_index}-rank{rank}"
        self.out = out
        self.shards = sorted(shards)
        self.what = what
        self.token = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                      "shards": self.shards, "stage": what}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def whole_folder(cls, out: Path, what: str) -> "WorkerLock":
        """The lock of a run that writes ``out`` from one process (``OUT/.lock-task0-rank0``): its shard list
        is ``WHOLE_FOLDER``, which overlaps every other lock, so any second writer of ``out`` is refused."""
        return cls(out, 0, 0, [WHOLE_FOLDER], what)

    # -- reading other locks ------------------------------------------------------------------------
    @classmethod
    def _read(cls, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written or garbled: judged by its age alone

    @classmethod
    def is_stale(cls, path: Path, data: dict[str, Any]) -> bool:
        if data.get("host") == socket.gethostname() and isinstance(data.get("pid"), int):
            return not _pid_alive(data["pid"])
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > cls.stale_s

    def _busy(self, path: Path, data: dict[str, Any]) -> ValueError:
        return ValueError(
            f"{self.out} is being written by another `zmdist {data.get('stage', self.what)}` run "
            f"(host {data.get('host')}, "
            f"pid {data.get('pid')}, lock {path}). Wait for it to finish; if that run is gone, delete {path} "
            f"(or wait {int(self.stale_s)} s for it to count as stale), or use a new --out folder."
        )

    # -- taking and releasing ---------------------------------------------------------------------------
    def acquire(self) -> "WorkerLock":
        self.out.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                data = self._read(self.path)
                if data is None:
                    continue  # released in between: try again
                if not self.is_stale(self.path, data) and not self._wait_stale(self.path, data):
                    raise self._busy(self.path, data) from None
                log.warning("taking over the stale lock %s of host %s pid %s (that run is gone)",
                            self.path, data.get("host"), data.get("pid"))
                moved = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                try:  # rename first: of two processes taking over, only one moves it
                    os.replace(self.path, moved)
                except FileNotFoundError:
                    continue
                now = self._read(moved)
                if now != data and now is not None and not self.is_stale(moved, now):
                    os.replace(moved, self.path)  # we moved a fresh lock another taker just made: give it back
                    raise self._busy(self.path, now) from None
                moved.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(self.token, fh)
            break
        else:
            raise ValueError(f"could not take the lock {self.path}: another process keeps taking it")
        for other in sorted(self.out.glob(".lock-task*-rank*")):
            if other == self.path or ".stale-" in other.name:
                continue
            data = self._read(other)
            if data is None or self.is_stale(other, data):
                continue
            theirs = set(data.get("shards") or [])
            if theirs & set(self.shards) or WHOLE_FOLDER in theirs | set(self.shards):
                self.release()
                raise self._busy(other, data)
        self._thread = threading.Thread(target=self._beat, name="zmdist-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    @classmethod
    def _wait_stale(cls, path: Path, data: dict[str, Any]) -> bool:
        """For another host's lock: wait until it is refreshed (live: False) or goes stale (True)."""
        if data.get("host") == socket.gethostname():
            return False
        try:
            first = path.stat().st_mtime
        except FileNotFoundError:
            return True
        log.warning("%s is held by host %s pid %s: waiting up to %d s to see whether that run is alive",
                    path, data.get("host"), data.get("pid"), int(cls.stale_s))
        while True:
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                return True
            if mtime != first:
                return False
            if time.time() - mtime > cls.stale_s:
                return True
            time.sleep(min(cls.heartbeat_s / 3, max(0.05, cls.stale_s - (time.time() - mtime) + 0.05)))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        data = self._read(self.path)
        if data and data.get("pid") == self.token["pid"] and data.get("host") == self.token["host"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "WorkerLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
