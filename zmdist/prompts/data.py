"""The data of a prompt-tuning run: cached embeddings of a split, and who is labelled in each setting.

SSL: ``labels_per_class`` labelled images per class drawn with ``seed`` from the pool's ground truth, the rest
unlabelled; TRZSL (transductive zero-shot): every pool image of a SEEN class is labelled, the unseen classes'
images form the unlabelled pool and pseudolabels are drawn among the unseen classes only; UL: no label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch

from zmdist.data.location import Location
from zmdist.data.manifest import Manifest
from zmdist.formats import EmbeddingShard, check_split_keys, sidecar_name


@dataclass
class SplitEmbeddings:
    """Every embedded sample of one split, rows in manifest shard order then tar order."""

    keys: np.ndarray  # (N,) str
    shards: np.ndarray  # (N,) str: the image shard each row comes from
    labels: np.ndarray  # (N,) int64, -1 = no ground truth
    embeddings: torch.Tensor  # (N, D) float32, L2-normalised

    def __len__(self) -> int:
        return len(self.keys)


def load_split(emb_dir: Location, manifest: Manifest, split: str) -> SplitEmbeddings:
    """The embedding files of ``split`` (all of them: textual prompt tuning needs the whole pool in memory,
    N x D float32, e.g. 40 MB for 20,000 ViT-B/32 images)."""
    if split not in manifest.splits:
        raise ValueError(f"split {split!r} is not in the manifest of {manifest.location} (it has {sorted(manifest.splits)})")
    keys, shards, labels, embs, files = [], [], [], [], []
    for shard in manifest.split(split).shards:
        name = sidecar_name(shard.name)
        files.append(str(emb_dir.ref(name)))
        if emb_dir.exists(name) is False:
            raise FileNotFoundError(f"shard {shard.name} has no embedding file {emb_dir.ref(name)}: finish `zmdist embed` first")
        emb = EmbeddingShard.load(emb_dir.ref(name))
        if len(emb.keys) != shard.count:
            raise ValueError(f"embedding file {emb_dir.ref(name)} has {len(emb.keys)} rows but manifest.json says "
                             f"{shard.count} for {shard.name}: rerun `zmdist embed` into a new folder")
        keys.append(emb.keys.astype(str))
        shards.append(np.full(len(emb.keys), shard.name))
        labels.append(emb.labels.astype(np.int64))
        embs.append(emb.embeddings.astype(np.float32))
    if not keys:
        raise ValueError(f"split {split!r} of {manifest.location} has no shards")
    check_split_keys(split, files, keys)
    return SplitEmbeddings(np.concatenate(keys), np.concatenate(shards), np.concatenate(labels),
                           torch.from_numpy(np.concatenate(embs)))


def choose_seen_classes(n_classes: int, seen: list[int], fraction: float, seed: int) -> list[int]:
    """TRZSL's seen classes: ``seen`` when given (checked), else ``round(fraction * C)`` drawn with ``seed``
    (at least one seen and one unseen class), sorted."""
    if seen:
        bad = [c for c in seen if not 0 <= c < n_classes]
        if bad or len(set(seen)) != len(seen):
            raise ValueError(f"seen_classes: {seen} must be distinct class indices in [0, {n_classes})")
        if len(seen) == n_classes:
            raise ValueError("seen_classes: every class is seen; TRZSL needs at least one unseen class")
        return sorted(seen)
    if n_classes < 2:
        raise ValueError("TRZSL needs at least 2 classes (one seen, one unseen)")
    count = min(n_classes - 1, max(1, round(fraction * n_classes)))
    rng = np.random.default_rng(seed)
    return sorted(int(c) for c in rng.choice(n_classes, size=count, replace=False))


@dataclass
class Labelling:
    """Who is labelled (rows of the pool) and which classes pseudolabels may take."""

    labelled: np.ndarray  # (L,) rows of the pool with a usable ground-truth label
    unlabelled: np.ndarray  # (U,) rows of the pool that get pseudolabels
    candidate_classes: list[int]  # classes pseudolabels are drawn from
    seen_classes: list[int]  # TRZSL's seen classes (all classes for ssl / ul)


def make_labelling(labels: np.ndarray, n_classes: int, setting: Literal["ssl", "trzsl", "ul"], *,
                   labels_per_class: int, seen: list[int], seen_fraction: float, seed: int,
                   ssl_draw: Literal["seeded", "released"] = "seeded") -> Labelling:
    """The labelled / unlabelled split of the pool for ``setting`` (see the module docstring).

    ``ssl_draw="released"`` draws the SSL labels as the released code does (BatsResearch/
    menghini-neurips23-code at 2094fa5, ``methods/main_SSL.py``:105-145): per class, ``labels_per_class``
    rows with numpy's legacy generator re-seeded to 0 (its ``validation_seed``) before every class, so the
    same labels for every ``seed``; then 80% of them (``ratio_train_val``, again seeded 0) are trained on and
    the other 20% are its validation set, which its rounds never use (they keep the last epoch): those rows
    are neither labelled nor unlabelled here. The rest of the pool is unlabelled."""
    rows = np.arange(len(labels))
    everyone = list(range(n_classes))
    if setting == "ul":
        return Labelling(rows[:0], rows, everyone, everyone)
    if (labels < 0).all():
        raise ValueError(f"setting={setting} needs ground-truth labels in the pool's embedding files "
                         "('labels' are all -1): use setting=ul, or shard a labelled source")
    if setting == "ssl" and ssl_draw == "released":
        return _released_ssl_labelling(labels, rows, everyone, labels_per_class)
    if setting == "ssl":
        rng = np.random.default_rng(seed)
        picked = _per_class_draw(labels, rows, everyone, labels_per_class, lambda: rng)
        labelled = np.sort(picked)
        return Labelling(labelled, np.setdiff1d(rows, labelled), everyone, everyone)
    seen_classes = choose_seen_classes(n_classes, seen, seen_fraction, seed)
    is_seen = np.isin(labels, seen_classes)
    unseen = [c for c in everyone if c not in seen_classes]
    return Labelling(rows[is_seen], rows[~is_seen], unseen, seen_classes)


def _per_class_draw(labels: np.ndarray, rows: np.ndarray, classes: list[int], per_class: int,
                    generator: Callable[[], Any]) -> np.ndarray:
    """``per_class`` rows of each class, drawn without replacement by ``generator()`` (called once per class:
    one shared generator for the seeded draw, a fresh seed-0 one per class for the released draw), in class
    order; a class with fewer images is an error naming it."""
    picked = []
    for c in classes:
        have = rows[labels == c]
        if len(have) < per_class:
            raise ValueError(f"setting=ssl: class {c} has {len(have)} labelled images in the pool, fewer than "
                             f"labels_per_class={per_class}")
        picked.append(generator().choice(have, size=per_class, replace=False))
    return np.concatenate(picked) if picked else rows[:0]


def _released_ssl_labelling(labels: np.ndarray, rows: np.ndarray, everyone: list[int],
                            labels_per_class: int) -> Labelling:
    """The released code's SSL draw (see :func:`make_labelling`), in pool row order where it uses file order."""
    shots = _per_class_draw(labels, rows, everyone, labels_per_class, lambda: np.random.RandomState(0))
    train = np.random.RandomState(0).choice(len(shots), size=int(len(shots) * 0.8), replace=False)
    return Labelling(np.sort(shots[train]), np.setdiff1d(rows, shots), everyone, everyone)
