"""What an annotator gets from ``zmdist select``: the chosen samples' source paths and thumbnails.

``to_label.csv`` (``key,origin,shard,label``) lists each chosen key with the source path or id recorded at
shard time and its shard; its empty ``label`` column, once filled with class names (or indices), makes it a
labels file for ``zmdist train labels=`` and the next ``zmdist select labelled=`` (``zmdist.data.labels_csv``
ignores the other columns). The contact sheet shows the same samples as one PNG grid and one self-contained
HTML page, in the same order, each tile captioned with its key.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageOps

from zmdist.data.labels_csv import csv_text
from zmdist.data.manifest import Manifest
from zmdist.data.reader import iter_shard

TO_LABEL_COLUMNS = ["key", "origin", "shard", "label"]
THUMB = 96  # thumbnail side in pixels
CAPTION = 14  # caption strip under each thumbnail
PAD = 4
COLUMNS = 8  # tiles per row of the sheet
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Chosen:
    """One chosen sample as read from its shard."""

    key: str
    shard: str
    origin: str
    image: Image.Image


def read_chosen(manifest: Manifest, split: str, keys: list[str]) -> list[Chosen]:
    """The samples of ``keys`` (in that order) from the shards of ``split``; only their tar members are read."""
    wanted, found = set(keys), {}
    for shard, path in zip(manifest.split(split).shards, manifest.shard_paths(split)):
        try:
            for s in iter_shard(path, keys=wanted, expected=shard.count, origins=True):
                found[s["key"]] = Chosen(s["key"], s["shard"], s["origin"], s["image"])
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}: select reads the chosen samples' source paths and images from the "
                                    "shards; pass shards=WHERE if they moved") from err
    missing = [k for k in keys if k not in found]
    if missing:
        raise ValueError(f"{len(missing)} chosen keys are not in split {split!r} of the shards, e.g. {missing[:3]}: "
                         "the embeddings were made from another shard set")
    return [found[k] for k in keys]


def to_label_csv(samples: list[Chosen]) -> str:
    """``to_label.csv``: one row per sample, its ``label`` cell left for the annotator."""
    return csv_text(TO_LABEL_COLUMNS, [[s.key, s.origin, s.shard, ""] for s in samples])


def tile_box(index: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the thumbnail area of tile ``index`` in the sheet (row-major)."""
    row, col = divmod(index, COLUMNS)
    left, top = col * (THUMB + 2 * PAD) + PAD, row * (THUMB + CAPTION + 2 * PAD) + PAD
    return left, top, left + THUMB, top + THUMB


def _thumbnail(image: Image.Image) -> Image.Image:
    """The image scaled to fit ``THUMB`` x ``THUMB``, aspect ratio kept (small images are enlarged)."""
    return ImageOps.contain(image.convert("RGB"), (THUMB, THUMB))


def contact_sheet_png(samples: list[Chosen]) -> Image.Image:
    """A grid of ``COLUMNS`` tiles per row: each thumbnail centred in its ``tile_box``, its key under it."""
    rows = max(1, math.ceil(len(samples) / COLUMNS))
    cols = min(max(len(samples), 1), COLUMNS)
    sheet = Image.new("RGB", (cols * (THUMB + 2 * PAD), rows * (THUMB + CAPTION + 2 * PAD)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        left, top, right, bottom = tile_box(i)
        thumb = _thumbnail(sample.image)
        sheet.paste(thumb, (left + (THUMB - thumb.width) // 2, top + (THUMB - thumb.height) // 2))
        caption = sample.key
        while len(caption) > 1 and draw.textlength(caption) > THUMB:  # long keys: keep the end, which differs
            caption = caption[1:]
        draw.text((left, bottom + 1), caption, fill=(0, 0, 0))
    return sheet


def contact_sheet_html(samples: list[Chosen], title: str) -> str:
    """One self-contained page (thumbnails inlined as PNG data) with each sample's key, origin and shard."""
    tiles = []
    for s in samples:
        buf = io.BytesIO()
        _thumbnail(s.image).save(buf, format="PNG")
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        tiles.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(s.key)}">'
                     f"<figcaption><b>{html.escape(s.key)}</b><br>{html.escape(s.origin)}<br>"
                     f"<small>{html.escape(s.shard)}</small></figcaption></figure>")
    style = ("body{font-family:sans-serif}figure{display:inline-block;width:%dpx;margin:6px;vertical-align:top;"
             "word-break:break-all;font-size:12px}img{width:%dpx;height:%dpx;object-fit:contain;"
             "image-rendering:pixelated;background:#eee}" % (THUMB * 2, THUMB * 2, THUMB * 2))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body><h1>{html.escape(title)}</h1>\n" + "\n".join(tiles)
            + "\n</body></html>\n")
