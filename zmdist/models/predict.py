"""Predictions of an exported student over image shards: one file per shard, then one CSV.

Each shard is predicted in batches that never mix shards (the last batch of a shard is short), so a
shard's numbers do not depend on which process or DataLoader worker read it: one process and several
write the same files, bit for bit.

Per-shard file (``OUT/<shard>.npz``, e.g. ``test-000000.npz``; plain NumPy, no pickle), rows in the tar's
order: ``keys`` (N,) str, ``labels`` (N,) int64 ground truth as the SHARDS' class index (-1 = none),
``prediction`` (N,) int64 and ``topk_classes`` (N, k) int64 as the MODEL's class index,
``confidence`` (N,) float32 (softmax probability of ``prediction``) and ``topk_probs`` (N, k) float32.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zmdist.atomic import atomic_path, atomic_save_npz
from zmdist.data.reader import iter_shard
from zmdist.stages.common import ShardJob
from zmdist.train.metrics import classification_metrics, confusion_matrix

FIELDS = ("keys", "labels", "prediction", "confidence", "topk_classes", "topk_probs")


@dataclass
class PredictionShard:
    keys: np.ndarray
    labels: np.ndarray
    prediction: np.ndarray
    confidence: np.ndarray
    topk_classes: np.ndarray
    topk_probs: np.ndarray

    def save(self, path: Path) -> None:
        atomic_save_npz(path, **{name: getattr(self, name) for name in FIELDS})

    @classmethod
    def load(cls, path: Path) -> "PredictionShard":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"prediction file {path} is unreadable ({err}): delete it and rerun `zmdist predict`, "
                             "which rebuilds missing files") from err
        missing = [name for name in FIELDS if name not in arrays]
        if missing:
            raise ValueError(f"prediction file {path} lacks fields {missing}: delete it and rerun `zmdist predict`")
        return cls(**{name: arrays[name] for name in FIELDS})


class ShardBatches(IterableDataset):
    """Batches of at most ``batch_size`` samples of one shard each, every DataLoader worker reading whole
    shards: ``(pixels, keys, labels, errors, slot)`` with ``slot`` the shard's position in ``jobs``. An
    undecodable image keeps its place (blank pixels, its ``errors`` entry set) so the shard completes."""

    def __init__(self, jobs: list[ShardJob], transform: Callable[[Image.Image], torch.Tensor], batch_size: int):
        self.jobs, self.transform, self.batch_size = jobs, transform, batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str], torch.Tensor, list[str], int]]:
        worker = get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker else (0, 1)
        blank = torch.zeros_like(self.transform(Image.new("RGB", (8, 8))))
        for slot in range(wid, len(self.jobs), nw):
            job = self.jobs[slot]
            rows: list[tuple[torch.Tensor, str, int, str]] = []
            for sample in iter_shard(job.path, skip_errors=True, expected=job.count):
                image = sample["image"]
                rows.append((blank if image is None else self.transform(image), sample["key"], sample["label"],
                             sample.get("error", "")))
                if len(rows) == self.batch_size:
                    yield _collate(rows, slot)
                    rows = []
            if rows:
                yield _collate(rows, slot)


def _collate(rows: list[tuple[torch.Tensor, str, int, str]], slot: int):
    pixels, keys, labels, errors = zip(*rows)
    return torch.stack(pixels), list(keys), torch.tensor(labels, dtype=torch.int64), list(errors), slot


def predict_shards(model: torch.nn.Module, jobs: list[ShardJob], *, batch_size: int, num_workers: int, k: int,
                   device: torch.device, amp: torch.dtype | None,
                   on_batch: Callable[[int], None] | None = None,
                   on_shard_written: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Predict ``jobs`` with ``model`` (eval mode, ``model.preprocess``; ``k`` <= its classes) and write each
    shard's file when its last batch is done. ``on_batch(images)`` drives a progress bar;
    ``on_shard_written(n)`` is called after the n-th file is on disk (tests kill the process there).
    Returns counts and the undecodable keys."""
    loader = DataLoader(ShardBatches(jobs, model.preprocess, batch_size), batch_size=None,
                        num_workers=min(num_workers, len(jobs)), pin_memory=device.type == "cuda")
    pending: dict[int, dict[str, list]] = {}
    skipped: list[dict[str, str]] = []
    written = images = 0
    with torch.inference_mode():
        for pixels, keys, labels, errors, slot in loader:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(pixels.to(device, non_blocking=True))
            top_probs, top_classes = (t.cpu().numpy() for t in logits.float().softmax(dim=1).topk(k, dim=1))
            buf = pending.setdefault(slot, {"rows": [], "seen": 0})
            for row, (key, error) in enumerate(zip(keys, errors)):
                buf["seen"] += 1
                if error:
                    skipped.append({"shard": jobs[slot].name, "key": key, "reason": error})
                else:
                    buf["rows"].append((key, int(labels[row]), top_classes[row], top_probs[row]))
            images += len(keys)
            if on_batch is not None:
                on_batch(len(keys))
            if buf["seen"] == jobs[slot].count:
                _shard_file(buf["rows"], k).save(jobs[slot].output)
                del pending[slot]
                written += 1
                if on_shard_written is not None:
                    on_shard_written(written)
    if pending:
        short = {jobs[slot].name: (buf["seen"], jobs[slot].count) for slot, buf in pending.items()}
        raise RuntimeError(f"shards ended early (got, manifest count): {short}; the shards or manifest are damaged")
    return {"shards_written": written, "images": images - len(skipped), "skipped_keys": skipped}


def _shard_file(rows: list[tuple[str, int, np.ndarray, np.ndarray]], k: int) -> PredictionShard:
    if not rows:  # every image of the shard was undecodable (each is listed in the summary)
        return PredictionShard(np.array([], dtype=str), np.zeros(0, np.int64), np.zeros(0, np.int64),
                               np.zeros(0, np.float32), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
    keys, labels, classes, probs = zip(*rows)
    classes_arr, probs_arr = np.stack(classes).astype(np.int64), np.stack(probs).astype(np.float32)
    return PredictionShard(np.array(keys), np.array(labels, dtype=np.int64), classes_arr[:, 0].copy(),
                           probs_arr[:, 0].copy(), classes_arr, probs_arr)


# --- the table and the accuracy -------------------------------------------------------------------------
def label_map(data_classes: list[str], model_classes: list[str]) -> tuple[np.ndarray | None, list[str]]:
    """Index map shard class -> model class by name, and the shard classes the model does not know
    (then no accuracy can be computed: the map is None)."""
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [name for name in data_classes if name not in index]
    if unknown:
        return None, unknown
    return np.array([index[name] for name in data_classes] + [-1], dtype=np.int64), []


def split_metrics(files: list[PredictionShard], to_model: np.ndarray, num_classes: int) -> dict[str, Any] | None:
    """Top-1 and class-weighted accuracy over the labelled rows (None when no row has a label), computed
    as the train stage's evaluation does (the same confusion matrix and metrics)."""
    labels = np.concatenate([f.labels for f in files]) if files else np.zeros(0, np.int64)
    preds = np.concatenate([f.prediction for f in files]) if files else np.zeros(0, np.int64)
    has = labels >= 0
    if not has.any():
        return None
    cm = confusion_matrix(torch.from_numpy(preds[has]), torch.from_numpy(to_model[labels[has]]), num_classes)
    metrics = classification_metrics(cm)
    return {k: metrics[k] for k in ("top1", "class_weighted_accuracy", "samples")}


def write_csv(path: Path, parts: list[tuple[str, PredictionShard]], model_classes: list[str],
              data_classes: list[str], top_k: int) -> int:
    """``predictions.csv``: one row per predicted image, in manifest order (split, shard, tar order);
    returns the number of rows. Columns: key, split, label (predicted class name), confidence,
    true_label (the shards' class name, empty if none), then top2_label, top2_confidence, ... topK_*."""
    extra = [f"top{i}_{what}" for i in range(2, top_k + 1) for what in ("label", "confidence")]
    rows = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["key", "split", "label", "confidence", "true_label", *extra])
        for split, shard in parts:
            for i, key in enumerate(shard.keys.tolist()):
                label = int(shard.labels[i])
                ranked = [value for c, p in zip(shard.topk_classes[i, 1:].tolist(), shard.topk_probs[i, 1:].tolist())
                          for value in (model_classes[c], f"{p:.6f}")]
                writer.writerow([key, split, model_classes[int(shard.prediction[i])],
                                 f"{float(shard.confidence[i]):.6f}", data_classes[label] if label >= 0 else "",
                                 *ranked])
                rows += 1
    return rows
