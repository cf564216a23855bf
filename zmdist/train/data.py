"""Training data: the labelled subset, the unlabelled stream joined to its pseudolabels, hold-out and eval.

Every pseudolabel sidecar is loaded once, into one ``PseudolabelStore`` (``load_sidecars``), which checks
them before training starts and serves the labelled-subset draw, the labelled batches and the stream.
The labelled subset is found from the sidecars' keys and labels; only those tar members are then read
and decoded. Augmentation randomness is seeded per (seed, epoch, key, view) inside the workers and
labelled batches per (seed, step, rank): a sample's views never depend on worker count, batch position
or where a run was resumed, so a killed-and-resumed run sees exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from zmdist.data.labels_csv import HumanLabels
from zmdist.data.manifest import Manifest, keys_digest
from zmdist.data.reader import ShardDataset, iter_shard, make_loader, shard_keys
from zmdist.formats import PseudolabelShard, PseudolabelStore
from zmdist.train.augment import Views
from zmdist.train.contract import LabelledBatch, StreamItem


def sample_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (keys are strings; Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def seeded(fn: Callable[[Image.Image], torch.Tensor], image: Image.Image, seed: int) -> torch.Tensor:
    """Apply a random transform with torch's CPU RNG fixed to ``seed`` (the views draw only from it).

    Seeds the CPU generator only: ``torch.manual_seed`` would also queue a CUDA re-seed, which costs
    ~80x more and is called once per sample and view here."""
    generator = torch.random.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        return fn(image)
    finally:
        generator.set_state(state)


def pseudolabel_targets(sidecar: PseudolabelShard, row: int, num_classes: int) -> np.ndarray:
    """The teacher's probability vector of one sample: stored full, or its renormalised top-k."""
    if sidecar.probs is not None:
        return sidecar.probs[row].astype(np.float32)
    soft = np.zeros(num_classes, np.float32)
    soft[sidecar.topk_classes[row]] = sidecar.topk_probs[row]
    return soft / soft.sum()


def load_sidecars(pl_dir: str | Path, manifest: Manifest, splits: list[str]) -> PseudolabelStore:
    """Load every sidecar of ``splits`` once and check it against its shard before training starts (not
    at the step that first meets the problem): present, readable, and holding exactly the shard's keys in
    its order (compared with the manifest's key digest; an older manifest without one, or a mismatch to
    explain, reads the keys from the tar headers; no image is decoded)."""
    store = PseudolabelStore(pl_dir)
    for split in dict.fromkeys(splits):
        for shard, path in zip(manifest.split(split).shards, manifest.shard_paths(split)):
            keys = store.shard(shard.name).keys.tolist()
            if shard.keys_sha256 is not None and keys_digest(keys) == shard.keys_sha256:
                continue
            have = set(keys)
            want = shard_keys(path)
            missing = [k for k in want if k not in have]
            if missing or len(have) != len(want):
                extra = sorted(have - set(want))
                raise ValueError(
                    f"pseudolabel sidecar for shard {shard.name} in {pl_dir} does not match the shard: "
                    f"{len(missing)} of its {len(want)} keys are missing (e.g. {missing[:3]}), {len(extra)} keys "
                    f"are not in the shard (e.g. {extra[:3]}); rerun `zmdist embed` and `zmdist pseudolabel` "
                    "for these shards")
    return store


class StreamSample:
    """``ShardDataset.sample_fn`` for training and eval streams: views seeded per key, joined to the
    sample's pseudolabel by (shard, key). A top-level class (not a closure) so DataLoader workers can be
    started with spawn as well as fork."""

    def __init__(self, views: Views, seed: int, store: PseudolabelStore | None, num_classes: int, strong: bool,
                 eval_view: bool = False):
        self.views, self.seed, self.store, self.num_classes = views, seed, store, num_classes
        self.strong, self.eval_view = strong, eval_view

    def __call__(self, rec: dict[str, Any]) -> StreamItem:
        image, key = rec["image"], rec["key"]
        if self.eval_view:
            weak = self.views.eval(image)
        else:
            weak = seeded(self.views.weak, image, sample_seed(self.seed, rec["epoch"], key, "weak"))
        strong = (seeded(self.views.strong, image, sample_seed(self.seed, rec["epoch"], key, "strong"))
                  if self.strong else torch.empty(0))
        pl, conf, soft = -1, 0.0, np.zeros(self.num_classes, np.float32)
        if self.store is not None:
            sidecar = self.store.shard(rec["shard"])
            try:
                row = sidecar.row(key)
            except KeyError:
                raise KeyError(f"shard {rec['shard']}: no pseudolabel for key {key!r} in {self.store.folder}: "
                               "rerun `zmdist pseudolabel` for these shards") from None
            pl, conf = int(sidecar.pseudolabel[row]), float(sidecar.confidence[row])
            soft = pseudolabel_targets(sidecar, row, self.num_classes)
        return StreamItem(weak, strong, rec["label"], pl, conf, torch.from_numpy(soft))


def stream_loader(shards: str | Path, split: str, rank: int, world: int, batch_size: int, num_workers: int,
                  sample: StreamSample, *, mode: str, seed: int, positions: list[np.ndarray] | None = None,
                  access: str = "auto", shuffle_buffer: int = 1000) -> tuple[ShardDataset, DataLoader]:
    """A per-rank loader (kept away from accelerate's ``prepare``: the rank split is ours)."""
    ds = ShardDataset(shards, split, rank, world, mode=mode, seed=seed, sample_fn=sample, positions=positions,
                      access=access, shuffle_buffer=shuffle_buffer)
    return ds, make_loader(ds, batch_size, num_workers)


@dataclass(frozen=True)
class Holdout:
    """A seeded slice of a split: per shard, the tar positions kept for training and those held out."""

    keep: list[np.ndarray]
    hold: list[np.ndarray]

    @property
    def size(self) -> int:
        return int(sum(len(h) for h in self.hold))


def split_holdout(counts: list[int], fraction: float, seed: int) -> Holdout:
    """Hold out ``max(1, round(fraction * total))`` samples drawn uniformly with ``seed`` (no labels used).

    Why: ZeroMatch's stage 0 keeps the weights that agree best with the teacher on images it did not train
    on; those images must come from the training split, never from the test split."""
    total = sum(counts)
    if not 0 < fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {fraction}")
    size = max(1, round(fraction * total))
    if size >= total:
        raise ValueError(f"holdout_fraction={fraction} leaves no training sample out of {total}")
    chosen = np.zeros(total, dtype=bool)
    chosen[np.random.default_rng([seed, 0x401D]).choice(total, size, replace=False)] = True
    keep, hold, start = [], [], 0
    for count in counts:
        flags = chosen[start:start + count]
        keep.append(np.flatnonzero(~flags))
        hold.append(np.flatnonzero(flags))
        start += count
    return Holdout(keep, hold)


def train_sample_size(total: int) -> int:
    """How many of a training split's ``total`` images the released ZeroMatch code evaluates stage 0 on:
    all up to 9,000, then ``int(0.2 * total)``, above 90,000 ``int(0.1 * total)`` (jichan3751/zeromatch
    @8ca4079, train_zeromatch/semilearn/datasets/cv_datasets/cifar.py:152-163; framed.py:140-151 the same).
    A sample keeps the periodic evaluation cheap on large splits; it only has to measure the fit."""
    if total > 90_000:
        return int(total * 0.1)
    if total > 9_000:
        return int(total * 0.2)
    return total


def split_train_sample(counts: list[int], seed: int) -> list[np.ndarray]:
    """Per shard, the tar positions of the training images a ``train_sample`` stage 0 is selected on:
    ``train_sample_size`` of them, drawn once with ``seed``, uniformly without replacement, as the released
    code does (``np.random.choice(n, size, replace=False)`` under ``args.seed``). Unlike ``split_holdout``
    nothing is removed from training: the phase trains on these images too."""
    total = sum(counts)
    chosen = np.zeros(total, dtype=bool)
    chosen[np.random.default_rng([seed, 0x5A3E]).choice(total, train_sample_size(total), replace=False)] = True
    return [np.flatnonzero(flags) for flags in np.split(chosen, np.cumsum(counts)[:-1])]


def select_labelled(store: PseudolabelStore | None, manifest: Manifest, split: str, labels_per_class: int,
                    seed: int, keys_file: str = "") -> list[str]:
    """The labelled subset: a key list file (e.g. from ``zmdist select``), or ``labels_per_class`` keys
    per class drawn with ``seed`` from the samples that have ground truth (read from the sidecars).
    Sorted, so it is a stable set."""
    if keys_file:
        path = Path(keys_file)
        if not path.is_file():
            raise FileNotFoundError(f"labelled_keys={keys_file}: no such file")
        keys = [k.strip() for k in path.read_text().splitlines() if k.strip()]
        if not keys:
            raise ValueError(f"labelled_keys={keys_file} lists no keys")
        return sorted(set(keys))
    if store is None:
        raise ValueError("drawing labels_per_class needs pseudolabels=DIR (its sidecars carry the labels) or "
                         "labelled_keys=FILE")
    keys_by_class: dict[int, list[str]] = {}
    for shard in manifest.split(split).shards:
        side = store.shard(shard.name)
        for key, label in zip(side.keys.tolist(), side.labels.tolist()):
            if label >= 0:
                keys_by_class.setdefault(label, []).append(key)
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for label in range(len(manifest.classes)):
        pool = sorted(keys_by_class.get(label, []))
        if len(pool) < labels_per_class:
            raise ValueError(f"labels_per_class={labels_per_class}, but class {manifest.classes[label]!r} has only "
                             f"{len(pool)} labelled samples in split {split!r}")
        chosen += [pool[i] for i in rng.choice(len(pool), labels_per_class, replace=False)]
    return sorted(chosen)


class LabelledSet:
    """The (small) labelled subset held in memory; batches drawn per (seed, step, rank) with replacement.

    Keys are located from the tar headers; only those members are read and decoded. Labels are the shards'
    unless ``labels`` (human labels, ``train labels=FILE``) gives them: then they are the file's, whatever
    the shards say or whether they say anything, and a key the split lacks is named by its line."""

    def __init__(self, manifest: Manifest, split: str, keys: list[str], views: Views, seed: int,
                 store: PseudolabelStore | None = None, labels: HumanLabels | None = None):
        wanted = set(keys)
        self.images: list[Image.Image] = []
        self.labels: list[int] = []
        self.keys: list[str] = []
        self.pseudolabels: list[int] = []
        for shard, path in zip(manifest.split(split).shards, manifest.shard_paths(split)):
            for s in iter_shard(path, keys=wanted, expected=shard.count):
                label = labels[s["key"]] if labels is not None else s["label"]
                if label < 0:
                    raise ValueError(f"labelled key {s['key']!r} (shard {shard.name}) has no label in the shards: "
                                     "give its label with labels=FILE (key,label)")
                self.images.append(s["image"])
                self.labels.append(label)
                self.keys.append(s["key"])
                self.pseudolabels.append(store.lookup(shard.name, s["key"])[0] if store is not None else -1)
        if labels is not None:
            labels.require_known(set(self.keys), f"split {split!r} of the shards")
        missing = wanted - set(self.keys)
        if missing:
            raise ValueError(f"{len(missing)} labelled keys are not in split {split!r}, e.g. {sorted(missing)[:3]}")
        self.views, self.seed = views, seed

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, start_step: int, rank: int, size: int, num_workers: int) -> DataLoader:
        """Step batches from ``start_step`` on, built in ``num_workers`` background processes."""
        return DataLoader(_LabelledSteps(self, start_step, rank, size), batch_size=None, num_workers=num_workers,
                          persistent_workers=False, prefetch_factor=4 if num_workers else None)

    def batch(self, step: int, rank: int, size: int) -> LabelledBatch:
        """Weak views, labels and pseudolabels of ``size`` samples for this step and rank."""
        rng = np.random.default_rng([self.seed, step, rank])
        idx = rng.integers(0, len(self.images), size)
        x = torch.stack([seeded(self.views.weak, self.images[i], sample_seed(self.seed, step, rank, int(i), j))
                         for j, i in enumerate(idx)])
        return LabelledBatch(x, torch.tensor([self.labels[i] for i in idx]),
                             torch.tensor([self.pseudolabels[i] for i in idx]))


class _LabelledSteps(torch.utils.data.IterableDataset):
    """Labelled batches for steps ``start, start+1, ...``; with several workers each takes every n-th step
    (DataLoader then returns them in step order)."""

    def __init__(self, labelled: LabelledSet, start: int, rank: int, size: int):
        self.labelled, self.start, self.rank, self.size = labelled, start, rank, size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        step = self.start + wid
        while True:
            yield self.labelled.batch(step, self.rank, self.size)
            step += nw
