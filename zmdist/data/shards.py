"""Write a source as WebDataset tar shards plus ``manifest.json`` (format: see ``zmdist.data.manifest``).

Crash safety: each shard is written under a ``.tmp-`` name and renamed when complete, and the manifest
is written last, so a folder without a manifest is unfinished and a rerun simply starts over (it
removes shard-named files and temp leftovers from the killed run first). Every input file ends up either
in a shard or in ``manifest.skipped`` with a reason: nothing is dropped silently.
"""

from __future__ import annotations

import io
import json
import random
import re
from collections import Counter
from itertools import chain, islice
from pathlib import Path
from typing import Iterator

from webdataset import TarWriter

from zmdist.atomic import TEMP_PREFIX, atomic_path
from zmdist.data.images import DEFAULT_MAX_PIXELS, CorruptImageError, read_rgb
from zmdist.data.manifest import IMAGE_FORMATS, MANIFEST_NAME, Manifest, ShardInfo, SplitInfo, keys_digest
from zmdist.data.sources import Sample, Source, display_path, open_source
from zmdist.progress import Progress

_SHARD_NAME = re.compile(r"^[A-Za-z0-9_]+-\d{6}\.tar$")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def _encode(sample: Sample, image_format: str, jpeg_quality: int, converted: Counter, skipped: list,
            max_pixels: int | None = None, downscaled: list | None = None) -> dict | None:
    """One tar record for the sample, or None (and a ``skipped`` entry) when it cannot be decoded.

    Images over ``max_pixels`` are down-scaled; their original (width, height) is appended to ``downscaled``.
    """
    origin = display_path(sample.origin)  # a plug-in source may hand over a non-UTF-8 file name
    try:
        decoded = read_rgb(sample.loader, max_pixels)
    except CorruptImageError as err:
        skipped.append({"origin": origin, "reason": str(err)})
        return None
    converted.update(decoded.conversions)
    if decoded.original_size is not None and downscaled is not None:
        downscaled.append(decoded.original_size)
    buf = io.BytesIO()
    if image_format == "jpg":
        decoded.image.save(buf, format="JPEG", quality=jpeg_quality)
    else:
        decoded.image.save(buf, format="PNG")
    record = {"__key__": sample.key, image_format: buf.getvalue()}
    if sample.label is not None:
        record["cls"] = str(sample.label).encode("ascii")
    meta = {"key": sample.key, "origin": origin, "label": sample.label}
    record["json"] = json.dumps(meta).encode("utf-8")
    return record


def _write_split(records: Iterator[dict], out_dir: Path, split: str, shard_size: int) -> tuple[list[ShardInfo], int]:
    """Stream records into shards of ``shard_size``; return the shards and how many had a label."""
    shards: list[ShardInfo] = []
    labelled = 0
    record = next(records, None)
    while record is not None:
        name = shard_name(split, len(shards))
        keys: list[str] = []
        # mtime 0 and PAX headers: reproducible bytes, and keys of any length.
        with atomic_path(out_dir / name) as tmp, TarWriter(str(tmp), encoder=False, mtime=0, format="PAX_FORMAT") as tar:
            for record in chain([record], islice(records, shard_size - 1)):
                tar.write(record)
                keys.append(record["__key__"])
                labelled += "cls" in record
        shards.append(ShardInfo(name, len(keys), keys_digest(keys)))
        record = next(records, None)
    return shards, labelled


def _clear_previous_run(out_dir: Path) -> None:
    """Remove shard files and temp leftovers of an unfinished (or overwritten) earlier run."""
    for path in out_dir.iterdir():
        if path.is_file() and (_SHARD_NAME.match(path.name) or path.name.startswith(TEMP_PREFIX)):
            path.unlink()


def write_shards(
    source: Source | str,
    out_dir: Path | str,
    *,
    shard_size: int = 1000,
    image_format: str = "png",
    jpeg_quality: int = 95,
    seed: int = 0,
    test_fraction: float | None = None,
    progress: bool = True,
    overwrite: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Manifest:
    """Shard every split of ``source`` into ``out_dir`` and return the saved manifest.

    Samples are shuffled with ``seed`` before writing (shards are then not class-clustered, and reruns
    are identical); ``seed`` also drives the ``test_fraction`` holdout of sources without own splits
    (``None``: the source's default). Images that cannot be decoded are listed in ``skipped``. Images of
    more than ``max_pixels`` pixels (``None``/0: no limit) are down-scaled to that many, aspect ratio kept,
    and counted in ``warnings`` with the largest original size.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if max_pixels is not None and max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0: no limit), got {max_pixels}")
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds finished shards ({MANIFEST_NAME}): pass overwrite=True (--overwrite) "
            "to replace them, or choose another output folder"
        )
    if isinstance(source, str):
        source = open_source(source)
    splits = source.splits(test_fraction, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    _clear_previous_run(out_dir)

    skipped = list(source.skipped)
    warnings = list(source.warnings)
    converted: Counter = Counter()
    downscaled: list[tuple[int, int]] = []
    infos: dict[str, SplitInfo] = {}
    for split in sorted(splits, key=lambda name: (name != "train", name)):
        samples = list(splits[split])
        random.Random(f"{seed}:{split}").shuffle(samples)
        bar = Progress(len(samples), f"shard {split}", "img", enabled=progress)
        encoded = (_encode(s, image_format, jpeg_quality, converted, skipped, max_pixels, downscaled)
                   for s in bar.iterate(samples))
        shards, labelled = _write_split((r for r in encoded if r is not None), out_dir, split, shard_size)
        bar.close()
        total = sum(s.count for s in shards)
        if total == 0:
            warnings.append(f"split {split!r} has no decodable images")
        infos[split] = SplitInfo(shards, total, labelled)
    if downscaled:
        width, height = max(downscaled, key=lambda size: (size[0] * size[1], size))
        warnings.append(
            f"{len(downscaled)} image(s) over max_pixels={max_pixels} were down-scaled (aspect ratio kept); "
            f"largest original {width}x{height}"
        )
    if not any(info.total for info in infos.values()):
        reasons = "; ".join(f"{s['origin']}: {s['reason']}" for s in skipped[:3])
        raise ValueError(f"{source.spec}: no image could be written ({len(skipped)} skipped, e.g. {reasons})")
    manifest = Manifest(
        source=source.spec,
        classes=list(source.classes),
        image_format=image_format,
        splits=infos,
        skipped=skipped,
        converted=dict(converted),
        warnings=warnings,
    )
    manifest.save(out_dir)
    return manifest
