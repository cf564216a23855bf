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

Files are decoded completely (``Image.load()``), so a truncated file fails here with
``CorruptImageError`` rather than later inside a training worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image

ImageSource = Union[str, Path, Callable[[], Image.Image]]

MULTI_FRAME = "multi-frame->first frame"
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, Image.DecompressionBombError)


class CorruptImageError(ValueError):
    """An image that cannot be decoded (truncated, not an image, unsupported mode); the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image plus every conversion applied to get it (empty when the file already was RGB)."""

    image: Image.Image
    conversions: tuple[str, ...]


def _open_first_frame(source: ImageSource) -> tuple[Image.Image, int]:
    """Open, fully decode and return the first frame, with the file's frame count."""
    img = source() if callable(source) else Image.open(source)
    frames = int(getattr(img, "n_frames", 1))
    if frames > 1:
        img.seek(0)
        img.load()
        first = img.copy()  # detach from the still-open multi-frame file
        img.close()
        return first, frames
    img.load()
    return img, frames


def _decode(source: ImageSource) -> tuple[Image.Image, int]:
    try:
        return _open_first_frame(source)
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


def read_rgb(source: ImageSource) -> DecodedImage:
    """Decode fully and convert to RGB, recording the multi-frame and mode conversions done."""
    img, frames = _decode(source)
    rgb, conversion = to_rgb(img)
    done = ((MULTI_FRAME,) if frames > 1 else ()) + ((conversion,) if conversion else ())
    return DecodedImage(rgb, done)
