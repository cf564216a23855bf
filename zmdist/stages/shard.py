"""``zmdist shard``: turn a dataset into WebDataset tar shards plus ``manifest.json``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zmdist.config import option, to_dict
from zmdist.data.shards import write_shards
from zmdist.data.sources import open_source
from zmdist.provenance import provenance, write_run_files

NAME = "shard"
HELP = "write a dataset as WebDataset tar shards with a manifest"
log = logging.getLogger("zmdist")


@dataclass
class Config:
    source: str = option(help="SCHEME[:ARG], a registered source: imagefolder:PATH, csv:FILE (columns path,label[,split]), sklearn-digits")
    shard_size: int = option(1000, "samples per tar shard")
    image_format: Literal["png", "jpg"] = option("png", "how images are stored in the shards (png is lossless)")
    jpeg_quality: int = option(95, "JPEG quality when image_format=jpg")
    test_fraction: float = option(0.0, "held-out test share per class for sources without their own splits")
    seed: int = option(0, "seed of the sample shuffle before sharding and of the test split")
    overwrite: bool = option(False, "replace shards already in --out")
    progress: bool = option(True, "show a progress bar")


def run(cfg: Config, out: Path) -> dict[str, Any]:
    if not 0.0 <= cfg.test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {cfg.test_fraction}")
    if cfg.shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {cfg.shard_size}")
    source = open_source(cfg.source)
    manifest = write_shards(
        source, out, shard_size=cfg.shard_size, image_format=cfg.image_format, jpeg_quality=cfg.jpeg_quality,
        seed=cfg.seed, test_fraction=cfg.test_fraction, overwrite=cfg.overwrite, progress=cfg.progress,
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
