"""``zmdist select``: choose which samples to label from their teacher embeddings.

Initial pools without labels: ``random``, ``centroid`` (k-means nearest-to-centroid), ``typiclust``,
``probcover``, ``updp`` (learned prompts + cluster head, saved for reuse). Later rounds, given the
labels so far (``labelled=FILE``; their classes are read from the embedding files): ``dropquery``,
``random``, ``entropy``, ``margin``, ``least-confidence``, ``coreset``.

``labelled=`` is a key list (``.txt``, one key per line; labels from the embedding files) or human labels
(``.csv`` with columns ``key,label``, ``zmdist.data.labels_csv``): then the labelled set is exactly the
file's keys and the label-based strategies learn from the file's labels (the shards need none).

Writes ``OUT/selected_keys.txt`` (the ``budget`` new keys, one per line) and ``OUT/labelled_keys.txt``
(the labelled keys plus the new ones): the latter is what ``zmdist train labelled_keys=FILE`` takes,
and what the next round's ``labelled=`` takes when the shards hold the labels. For an annotator it writes
``OUT/to_label.csv`` (``key,origin,shard,label``: each new key with its source path, the ``label`` column
empty); filled in, it is what ``zmdist train labels=FILE`` and the next round's ``labelled=`` take (for a
later round, append its rows to the earlier labels file). ``contact_sheet=true`` also writes
``OUT/contact_sheet.png`` and ``OUT/contact_sheet.html``: the new samples' thumbnails with their keys.
Runs in one process on this machine's GPU when present.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zmdist import dist
from zmdist.atomic import atomic_path, atomic_write_text, clean_temp_dir
from zmdist.config import ConfigError, flatten, option, to_dict
from zmdist.formats import open_embedding_run
from zmdist.provenance import hash_json, provenance, write_run_files
from zmdist.data.labels_csv import read_labels_csv
from zmdist.selection.annotate import contact_sheet_html, contact_sheet_png, read_chosen, to_label_csv
from zmdist.selection.pool import load_pool, read_keys
from zmdist.selection.probe import ProbeConfig
from zmdist.selection.strategies import NEEDS_LABELS, RuleConfig, Strategy, choose
from zmdist.selection.updp import UpdpConfig
from zmdist.stages.common import check_run_info, resolve_device, shards_spec, warn_single_class
from zmdist.stages.outdir import own_output

NAME = "select"
HELP = "choose which samples to label (DropQuery, centroid, TypiClust, ProbCover, UP-DP, uncertainty, coreset)"
SELECTED_FILE = "selected_keys.txt"
LABELLED_FILE = "labelled_keys.txt"
TO_LABEL_FILE = "to_label.csv"
SHEET_PNG = "contact_sheet.png"
SHEET_HTML = "contact_sheet.html"
INFO_FILE = "select_info.json"
# options that say where inputs are or how the run looks, not what it picks (inputs count by their content)
_NOT_SETTINGS = {"embeddings", "shards", "labelled", "device", "progress", "contact_sheet"}
log = logging.getLogger("zmdist")


@dataclass
class Config:
    embeddings: str = option(help="output of `zmdist embed` (folder, URL or pipe: template)")
    shards: str = option("", "where the shard set's manifest is now; empty = where `embed` read it")
    split: str = option("train", "split to choose from (the split `zmdist train` labels)")
    strategy: Strategy = option("centroid", "selection rule (dropquery, entropy, margin, least-confidence and "
                                            "coreset need labelled=FILE)")
    budget: int = option(10, "how many new keys to choose", min=1)
    labelled: str = option("", "the samples labelled so far: a key file (one key per line) or a CSV key,label of "
                               "human labels (FILE.csv; e.g. to_label.csv filled in); empty = none")
    contact_sheet: bool = option(False, "also write contact_sheet.png and contact_sheet.html: thumbnails of the "
                                        "chosen samples with their keys")
    seed: int = option(0, "seed of k-means++, probes, dropout passes and random draws")
    device: str = option("auto", "auto (GPU when present, else CPU), cpu, cuda, cuda:N")
    progress: bool = option(True, "show UP-DP training progress")
    rules: RuleConfig = option(factory=RuleConfig, help="k-means, DropQuery, TypiClust and ProbCover settings")
    probe: ProbeConfig = option(factory=ProbeConfig, help="the dropout linear probe of the label-based strategies")
    updp: UpdpConfig = option(factory=UpdpConfig, help="UP-DP training")


def run(cfg: Config, out: Path) -> dict[str, Any]:
    info = dist.detect()
    if info.world_size > 1:
        raise ConfigError(f"zmdist select runs in one process (got world size {info.world_size}): start it "
                          "without torchrun; it uses this machine's GPU when there is one")
    with own_output(out, NAME):
        return _select(cfg, out, resolve_device(cfg.device, info))


def _select(cfg: Config, out: Path, device: torch.device) -> dict[str, Any]:
    start = time.perf_counter()
    emb_info = open_embedding_run(cfg.embeddings, cfg.shards).info
    pool = load_pool(cfg.embeddings, cfg.split, cfg.shards)
    human = read_labels_csv(cfg.labelled, pool.classes) if cfg.labelled.lower().endswith(".csv") else None
    if human is not None:
        human.require_known(set(pool.keys.tolist()), f"split {cfg.split!r} of the embeddings")
        labelled_keys = sorted(human)
    else:
        labelled_keys = read_keys(cfg.labelled, "labelled") if cfg.labelled else []
    labelled = pool.index_of(labelled_keys, f"labelled={cfg.labelled}")
    labels = (torch.tensor([human[k] for k in labelled_keys], dtype=torch.long) if human is not None
              else torch.from_numpy(pool.labels[labelled.numpy()]))
    if cfg.strategy in NEEDS_LABELS and bool((labels < 0).any()):
        bad = [labelled_keys[i] for i in torch.nonzero(labels < 0).flatten().tolist()[:3]]
        raise ValueError(f"labelled={cfg.labelled}: keys without a label in the embedding files, e.g. {bad}: "
                         f"strategy={cfg.strategy} trains on the labels so far; give them in a CSV "
                         "labelled=FILE.csv (key,label)")
    if cfg.strategy in NEEDS_LABELS:
        warn_single_class(labels.numpy(), pool.classes, f"select: labelled={cfg.labelled}")
    settings = {k: v for k, v in flatten(to_dict(cfg)).items() if k.split(".")[0] not in _NOT_SETTINGS}
    compared = {"shards_fingerprint": emb_info.get("shards_fingerprint"),
                "teacher_fingerprint": emb_info.get("teacher_fingerprint"),
                "labelled_keys": hash_json(labelled_keys), **settings}
    if human is not None:  # the labels steer the label-based strategies' picks
        compared["labelled_labels"] = hash_json(dict(human))
    where = {"embeddings": shards_spec(cfg.embeddings),
             "labelled": str(Path(cfg.labelled).resolve()) if cfg.labelled else ""}
    # a rerun with the same inputs and settings recomputes the same picks; other ones would replace them
    if (out / INFO_FILE).is_file():
        check_run_info(out / INFO_FILE, compared, "selected keys", where)
    clean_temp_dir(out)  # files a killed run left half-written (UP-DP's model among them)
    rows, details = choose(cfg.strategy, pool.features, labelled, labels, len(pool.classes), cfg.budget,
                           rules=cfg.rules, probe=cfg.probe, updp=cfg.updp, seed=cfg.seed, device=device, out=out,
                           progress=cfg.progress)
    chosen = sorted(pool.keys[rows.numpy()].tolist())
    # read before anything is written: shards that cannot be read leave no half set of outputs
    samples = read_chosen(open_embedding_run(cfg.embeddings, cfg.shards).manifest, cfg.split, chosen)
    atomic_write_text(out / SELECTED_FILE, "".join(f"{k}\n" for k in chosen))
    atomic_write_text(out / LABELLED_FILE, "".join(f"{k}\n" for k in sorted(set(labelled_keys) | set(chosen))))
    atomic_write_text(out / TO_LABEL_FILE, to_label_csv(samples))
    if cfg.contact_sheet:
        with atomic_path(out / SHEET_PNG) as tmp:
            contact_sheet_png(samples).save(tmp, format="PNG")
        atomic_write_text(out / SHEET_HTML, contact_sheet_html(
            samples, f"zmdist select: {len(samples)} samples of split {cfg.split!r} by {cfg.strategy}"))
    known = pool.labels[rows.numpy()]
    histogram = np.bincount(known[known >= 0], minlength=len(pool.classes))
    results = {
        "stage": NAME, "strategy": cfg.strategy, "budget": cfg.budget, "selected": len(chosen),
        "labelled_before": len(labelled_keys), "labelled_after": len(labelled_keys) + len(chosen),
        "pool_size": len(pool), "device": str(device),
        "selected_keys_file": str(out / SELECTED_FILE), "labelled_keys_file": str(out / LABELLED_FILE),
        "to_label_file": str(out / TO_LABEL_FILE),
        "contact_sheet": [str(out / SHEET_PNG), str(out / SHEET_HTML)] if cfg.contact_sheet else [],
        "labels_from": "labelled= CSV" if human is not None else "embedding files",
        # ground truth of the chosen samples where the shards have it: how many classes the pick covers
        "selected_class_histogram": {c: int(n) for c, n in zip(pool.classes, histogram)},
        "classes_covered": int((histogram > 0).sum()),
        "details": details, "seconds": time.perf_counter() - start,
    }
    write_run_files(out, to_dict(cfg), {**results, **provenance(seed=cfg.seed, classes=pool.classes)})
    check_run_info(out / INFO_FILE, compared, "selected keys", where)  # recorded once done: a failed run leaves none
    log.info("select: %d keys by %s -> %s", len(chosen), cfg.strategy, out / SELECTED_FILE)
    return results
