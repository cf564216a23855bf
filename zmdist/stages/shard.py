"""``zmdist shard``: turn a dataset into WebDataset tar shards plus ``manifest.json``.

``zmdist shard --verify DIR --out REPORT`` checks an existing set instead of writing one: every tar's
sample count against the manifest, keys unique across the set and made of ``[A-Za-z0-9_-]``, every image
decodable. Problems are printed and listed in ``REPORT/summary.json`` (``REPORT/verify.json`` when
``--out`` is ``DIR`` itself, so the set's own summary is kept) and the exit status is non-zero.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zmdist.atomic import atomic_write_text
from zmdist.config import option, to_dict
from zmdist.data.manifest import Manifest
from zmdist.data.reader import iter_shard
from zmdist.data.shards import write_shards
from zmdist.data.sources import Source, open_source
from zmdist.provenance import provenance, write_run_files
from zmdist.stages.outdir import own_output

NAME = "shard"
HELP = "write a dataset as WebDataset tar shards with a manifest"
log = logging.getLogger("zmdist")


@dataclass
class Config:
    source: str = option("", "SCHEME[:ARG], a registered source: imagefolder:PATH, csv:FILE (columns path,label[,split]), "
                             "sklearn-digits, or a benchmark as torchvision stores it: cifar10:ROOT, cifar100:ROOT, "
                             "flowers102:ROOT, dtd:ROOT[#N], eurosat:ROOT, resisc45:ROOT")
    download: bool = option(False, "fetch a missing benchmark dataset (cifar10, cifar100, flowers102, dtd, eurosat) "
                                   "into ROOT with torchvision first (needs internet)")
    split_file: str = option("", "flowers102/resisc45: the ELEVATER/FRAMED split lists instead of the dataset's own, "
                                 "a path with {split}: /data/framed/Flowers102/{split}.txt, .../RESICS45/{split}.json")
    shard_size: int = option(1000, "samples per tar shard", min=1)
    image_format: Literal["png", "jpg"] = option("png", "how images are stored in the shards (png is lossless)")
    jpeg_quality: int = option(95, "JPEG quality when image_format=jpg", min=0, max=100, min_exclusive=True)
    max_pixels: int = option(16_000_000, "images with more pixels are down-scaled to this many at shard time, "
                                         "aspect ratio kept (0: no limit)", min=0)
    test_fraction: float = option(0.0, "held-out test share per class for sources without their own splits (< 1)", min=0.0)
    seed: int = option(0, "seed of the sample shuffle before sharding and of the test split")
    overwrite: bool = option(False, "replace shards already in --out")
    progress: bool = option(True, "show a progress bar")
    verify: str = option("", "check the shard set in this folder (counts vs manifest, keys, decodable images) instead of sharding")


def run(cfg: Config, out: Path) -> dict[str, Any]:
    if cfg.verify:
        with own_output(out, NAME):
            return run_verify(cfg, Path(cfg.verify), out)
    if not cfg.source:
        raise ValueError("source: give the dataset to shard (e.g. source=imagefolder:/data/pets), or --verify DIR")
    if not 0.0 <= cfg.test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {cfg.test_fraction}")
    if cfg.shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {cfg.shard_size}")
    source = open_source(cfg.source, download=cfg.download, split_file=cfg.split_file)
    with own_output(out, NAME):
        return _write(cfg, source, out)


def _write(cfg: Config, source: Source, out: Path) -> dict[str, Any]:
    manifest = write_shards(
        source, out, shard_size=cfg.shard_size, image_format=cfg.image_format, jpeg_quality=cfg.jpeg_quality,
        seed=cfg.seed, test_fraction=cfg.test_fraction, overwrite=cfg.overwrite, progress=cfg.progress, max_pixels=cfg.max_pixels,
    )
    results = {
        "stage": NAME,
        "source": cfg.source,
        "classes": len(manifest.classes),
        "splits": {name: {"shards": len(manifest.counts(name)), "samples": sum(manifest.counts(name))}
                   for name in sorted(manifest.splits)},
        "skipped": manifest.skipped,
        "converted": manifest.converted,
    }
    for item in manifest.skipped:
        log.warning("shard: skipped %s (%s)", item["origin"], item["reason"])
    write_run_files(out, to_dict(cfg), {**results, **provenance(seed=cfg.seed, classes=manifest.classes)})
    return results


_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_LISTED = 20  # problems printed in the error message (all of them are in the summary)


def verify_shards(root: Path) -> tuple[list[str], dict[str, Any]]:
    """Every problem of the shard set in ``root`` (empty = sound) and counts of what was checked."""
    problems: list[str] = []
    stats = {"shards": 0, "samples": 0, "undecodable": 0}
    try:
        manifest = Manifest.load(root)
    except (OSError, ValueError) as err:
        return [f"manifest: {err}"], stats
    seen: dict[str, str] = {}
    for split in sorted(manifest.splits):
        for info, path in zip(manifest.split(split).shards, manifest.shard_paths(split)):
            stats["shards"] += 1
            found = 0
            try:
                for sample in iter_shard(path, skip_errors=True):
                    found += 1
                    key = sample["key"]
                    if not _KEY.fullmatch(key):
                        problems.append(f"{info.name}: key {key!r} is not made of [A-Za-z0-9_-]")
                    if key in seen:
                        problems.append(f"{info.name}: key {key!r} is also in {seen[key]}")
                    seen.setdefault(key, info.name)
                    if sample["image"] is None:
                        stats["undecodable"] += 1
                        problems.append(f"{info.name}: {sample['error']}")
            except ValueError as err:  # not a readable tar
                problems.append(f"{info.name}: {err}")
                continue
            stats["samples"] += found
            if found != info.count:
                problems.append(f"{info.name}: holds {found} samples but manifest.json says {info.count}; "
                                "rebuild the set with `zmdist shard --overwrite`")
    return problems, stats


def run_verify(cfg: Config, root: Path, out: Path) -> dict[str, Any]:
    problems, stats = verify_shards(root)
    results = {"stage": NAME, "verify": str(root), "ok": not problems, **stats, "problems": problems}
    for problem in problems:
        log.error("shard --verify: %s", problem)
    summary = {**results, **provenance()}
    if out.resolve() == root.resolve():  # keep the set's own summary.json and config.yaml
        atomic_write_text(out / "verify.json", json.dumps(summary, indent=2) + "\n")
    else:
        write_run_files(out, to_dict(cfg), summary)
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise ValueError(f"{root}: {len(problems)} problem(s) in the shard set:\n  {listed}{more}\n"
                         "Rebuild it with `zmdist shard --overwrite`.")
    log.info("shard --verify: %s is sound (%d shards, %d samples)", root, stats["shards"], stats["samples"])
    return results
