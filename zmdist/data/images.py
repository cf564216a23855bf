"""Decode any image file fully and turn it into 8-bit RGB, saying what was done.

Every teacher and student sees RGB, so shards store only RGB and the conversion happens once, here, at
sharding time, where it can be counted and reported (``manifest.converted``) instead of being redone
silently by every reader. Rules:

- 16/32-bit integer and float images (``I;16``, ``I``, ``F``, ...) are rescaled by their *actual*
  min..max range to 0..255. Clipping would turn most 16-bit scans into flat white, and dividing by the
  type's maximum would make 12-bit sensor data nearly black.
- Alpha is composited onto black, i.e. colours are premultiplied by alpha. Fully transparent pixels often
  hold arbitrary leftover colours; premultiplying hides them, and one fixed background means teacher
  and student always see the same pixels. Palette images with a ``transparency`` entry count as alpha.
- Multi-frame files (animated GIF, multi-page TIFF) keep their first frame; that is counted too.
- Images of more than ``max_pixels`` pixels are down-scaled to at most that many, keeping the aspect ratio
  (``DecodedImage.original_size`` says from what), so no later stage needs gigabytes per image. JPEGs are
  decoded at a reduced scale straight away (``draft``); other formats are decoded once at full size.

Files are decoded completely (``Image.load()``), so a truncated file fails here with
``CorruptImageError`` rather than later inside a training worker.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image

ImageSource = Union[str, Path, Callable[[], Image.Image]]

MULTI_FRAME = "multi-frame->first frame"
DEFAULT_MAX_PIXELS = 16_000_000  # 4000x4000; far above any teacher's input size
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, Image.DecompressionBombError)


class CorruptImageError(ValueError):
    """An image that cannot be decoded (truncated, not an image, unsupported mode); the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image plus every conversion applied to get it (empty when the file already was RGB)."""

    image: Image.Image
    conversions: tuple[str, ...]
    original_size: tuple[int, int] | None = None  # (width, height) before down-scaling; None when not scaled


def fit_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """The largest (width, height) with the aspect ratio of ``size`` and at most ``max_pixels`` pixels."""
    width, height = size
    scale = math.sqrt(max_pixels / (width * height))
    new_w, new_h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    if new_w == 1 or new_h == 1:  # a 1-pixel side: the other one alone must fit
        new_w, new_h = min(new_w, max_pixels), min(new_h, max_pixels)
    while new_w * new_h > max_pixels:  # float rounding: at most a step or two
        new_w, new_h = (new_w - 1, new_h) if new_w >= new_h else (new_w, new_h - 1)
    return new_w, new_h


def _too_large(img: Image.Image, max_pixels: int | None) -> bool:
    return bool(max_pixels) and img.width * img.height > max_pixels


def _open_first_frame(source: ImageSource, max_pixels: int | None = None) -> tuple[Image.Image, int, tuple[int, int]]:
    """Open, fully decode and return the first frame, with the file's frame count and image size.

    With ``max_pixels``, a JPEG larger than that is decoded at the smallest 1/2, 1/4 or 1/8 scale that
    still has at least the target size (``draft``), so it is never held at full size.
    """
    with warnings.catch_warnings():
        if max_pixels:  # it will be scaled down anyway; PIL's hard limit (DecompressionBombError) still holds
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = source() if callable(source) else Image.open(source)
    file_size = img.size
    if _too_large(img, max_pixels) and img.format == "JPEG":
        img.draft(img.mode, fit_size(img.size, max_pixels))
    frames = int(getattr(img, "n_frames", 1))
    if frames > 1:
        img.seek(0)
        img.load()
        first = img.copy()  # detach from the still-open multi-frame file
        img.close()
        return first, frames, file_size
    img.load()
    return img, frames, file_size


def _decode(source: ImageSource, max_pixels: int | None = None) -> tuple[Image.Image, int, tuple[int, int]]:
    try:
        return _open_first_frame(source, max_pixels)
    except _DECODE_ERRORS as err:
        raise CorruptImageError(f"cannot decode image: {type(err).__name__}: {err}") from err


def load_image(source: ImageSource) -> Image.Image:
    """Fully decode a path (or a loader returning a PIL image); first frame of multi-frame files.

    Raises ``CorruptImageError`` naming the reason when the file is truncated or not decodable.
    """
    return _decode(source)[0]


def _rescale_to_uint8(img: Image.Image) -> Image.Image:
    """Map a high-bit-depth single-channel image onto 0..255 by its actual range (constant -> black)."""
    values = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return Image.new("L", img.size, 0)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    scaled = np.zeros_like(values) if hi == lo else (values - lo) * (255.0 / (hi - lo))
    scaled = np.where(finite, scaled, 0.0)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def _composite_on_black(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    black = Image.new("RGB", rgba.size, (0, 0, 0))
    return Image.composite(rgba.convert("RGB"), black, rgba.getchannel("A"))


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert any PIL mode to RGB; return the image and the conversion done (``"L->RGB"``) or None."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img, None
    try:
        if mode in _ALPHA_MODES or "transparency" in img.info:
            out = _composite_on_black(img)
        elif mode.startswith("I") or mode == "F":
            out = _rescale_to_uint8(img).convert("RGB")
        else:
            out = img.convert("RGB")
    except _DECODE_ERRORS as err:
        raise CorruptImageError(f"cannot convert mode {mode} to RGB: {err}") from err
    return out, f"{mode}->RGB"


def _downscale(img: Image.Image, max_pixels: int) -> Image.Image:
    """``img`` resized to ``fit_size`` (Lanczos after an integer box ``reduce``; nearest for palette)."""
    target = fit_size(img.size, max_pixels)
    factor = min(img.width // target[0], img.height // target[1]) // 2  # keep >= 2x for the final filter
    if factor >= 2 and img.mode not in ("1", "P"):
        img = img.reduce(factor)
    resample = Image.Resampling.NEAREST if img.mode in ("1", "P") else Image.Resampling.LANCZOS
    return img.resize(target, resample)


def read_rgb(source: ImageSource, max_pixels: int | None = None) -> DecodedImage:
    """Decode fully and convert to RGB, recording the multi-frame and mode conversions done.

    ``max_pixels`` (None or 0: no limit): a larger image is down-scaled to at most that many pixels,
    aspect ratio kept; ``original_size`` is then its size in the file.
    """
    img, frames, file_size = _decode(source, max_pixels)
    original = file_size if _too_large(img, max_pixels) or file_size != img.size else None
    if _too_large(img, max_pixels):
        try:
            img = _downscale(img, max_pixels)
        except (ValueError, OSError):  # a mode resize does not support (e.g. I;16): convert first
            img = _downscale(to_rgb(img)[0], max_pixels)
    rgb, conversion = to_rgb(img)
    done = ((MULTI_FRAME,) if frames > 1 else ()) + ((conversion,) if conversion else ())
    return DecodedImage(rgb, done, original)
