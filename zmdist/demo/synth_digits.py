"""Synthetic captioned 8x8 digits (demo only), made the way the UCI / scikit-learn handwritten digits were made.

The real set (``sklearn.datasets.load_digits``) comes from 32x32 binary bitmaps of handwritten digits,
normalised to the box, whose on-pixels were counted in non-overlapping 4x4 blocks, giving 8x8 arrays of
values 0..16. This module produces arrays of the same kind without ever touching those images:

* **hand-drawn strokes**: a few shape variants per digit (a ``1`` with or without flag and base, an open
  or closed ``4``, a ``7`` with or without bar, ...) built from arcs, lines and Bezier curves whose
  parameters are jittered per sample;
* **font glyphs**: the digits of the TrueType fonts matplotlib ships (DejaVu, STIX, Computer Modern),
  taken as dense point clouds.

Each sample's points get a smooth random (elastic) displacement, a random rotation, shear and aspect
change, are scaled so the glyph fills the box (aspect kept) and rasterised on a 64x64 grid, thickened
to a random pen width, reduced to a 32x32 bitmap and counted in 4x4 blocks. Everything is vectorised
numpy, grouped by shape variant; 20,000 samples take a few seconds on one core.

Captions name the digit in words (``"a photo of the digit seven, thick."``) and describe properties the
image really has (pen width, slant, width, printed or handwritten), so a contrastive batch has few
identical captions. Labels are returned for diagnostics only; the teacher trains on captions alone.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from zmdist.data.sklearn_digits import DIGIT_CLASSNAMES

GRID = 64  # working raster; reduced 2x2 to the 32x32 bitmap, then 4x4 blocks to 8x8

# Distortion and pen settings (radii in 64-grid pixels, i.e. half-pixels of the 32x32 bitmap).
STROKE_RADIUS = (1.5, 5.0)
FONT_RADIUS = (0.5, 4.0)
FILL = (0.92, 1.0)  # the glyph's larger side, as a fraction of the box
ELASTIC_AMP = 0.03
ROT_SD = 5.0
SHEAR_MEAN, SHEAR_SD = 0.08, 0.18
ASPECT_SD = 0.16

# Templates that put the digit's name (``{}``) in a caption. The zero-shot ensemble uses the same ones.
CAPTION_TEMPLATES = [
    "a photo of the digit {}",
    "a photo of the number {}",
    "an image of the digit {}",
    "the digit {}",
    "the number {}",
    "a digit {}",
    "a picture of a {}",
    "a small image of the digit {}",
]
HANDWRITTEN_TEMPLATES = ["a handwritten {}", "a handwritten digit {}", "the number {} written by hand"]
PRINTED_TEMPLATES = ["a printed {}", "a printed digit {}", "the number {} in a font"]


# --------------------------------------------------------------------------------------------------
# stroke primitives: every parameter is an (m,) array, the result is (m, n, 2) points (x right, y down)


def _arc(cx, cy, rx, ry, t0, t1, n=160):
    t = np.deg2rad(t0[:, None] + (t1 - t0)[:, None] * np.linspace(0.0, 1.0, n)[None, :])
    return np.stack([cx[:, None] + rx[:, None] * np.cos(t), cy[:, None] + ry[:, None] * np.sin(t)], axis=-1)


def _poly(*pts, n=70):
    """Polyline through points given as (x, y) pairs of (m,) arrays, ``n`` samples per segment."""
    s = np.linspace(0.0, 1.0, n)[None, :, None]
    segs = []
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        p0 = np.stack([x0, y0], -1)[:, None, :]
        p1 = np.stack([x1, y1], -1)[:, None, :]
        segs.append(p0 + (p1 - p0) * s)
    return np.concatenate(segs, axis=1)


def _bezier(p0, p1, p2, n=100):
    """Quadratic Bezier curve from ``p0`` to ``p2`` with control point ``p1`` (each an (x, y) pair)."""
    s = np.linspace(0.0, 1.0, n)[None, :, None]
    a, b, c = (np.stack(p, -1)[:, None, :] for p in (p0, p1, p2))
    return (1 - s) ** 2 * a + 2 * (1 - s) * s * b + s**2 * c


def _end(points):
    """Last point of a stroke as an (x, y) pair of (m,) arrays."""
    return points[:, -1, 0], points[:, -1, 1]


def _digit_variants() -> list[list[Callable[[Callable], np.ndarray]]]:
    """Per digit, a list of shape variants. Each takes ``j(base, sd=0.035)`` (per-sample jitter) and
    returns (m, P, 2) centre-line points in a unit box (x right, y down)."""

    def zero(j):
        t0 = j(-90, 40)
        return _arc(j(0.5), j(0.5), j(0.3, 0.05), j(0.48, 0.02), t0, t0 + j(370, 12), n=240)

    def one_plain(j):
        x = j(0.5)
        return _poly((x, j(0.0, 0.02)), (x + j(0.0, 0.04), j(1.0, 0.02)))

    def one_flag(j):
        x = j(0.5)
        return _poly((x - j(0.22, 0.06), j(0.22, 0.06)), (x, j(0.0, 0.02)), (x + j(0.0, 0.04), j(1.0, 0.02)))

    def one_base(j):
        x = j(0.5)
        xb = x + j(0.0, 0.03)
        return np.concatenate(
            [
                _poly((x - j(0.22, 0.06), j(0.2, 0.06)), (x, j(0.0, 0.02)), (xb, j(1.0, 0.02))),
                _poly((xb - j(0.25, 0.05), j(1.0, 0.02)), (xb + j(0.25, 0.05), j(1.0, 0.02))),
            ],
            axis=1,
        )

    def two_straight(j):
        top = _arc(j(0.5), j(0.3), j(0.32), j(0.28), j(-170, 12), j(25, 15))
        return np.concatenate([top, _poly(_end(top), (j(0.12), j(1.0, 0.02)), (j(0.9, 0.05), j(1.0, 0.03)))], 1)

    def two_curved(j):
        top = _arc(j(0.5), j(0.3), j(0.32), j(0.28), j(-165, 12), j(30, 15))
        neck = _bezier(_end(top), (j(0.55), j(0.72)), (j(0.12), j(1.0, 0.02)))
        return np.concatenate([top, neck, _poly(_end(neck), (j(0.9, 0.05), j(0.98, 0.03)))], 1)

    def three_round(j):
        up = _arc(j(0.48), j(0.27), j(0.3), j(0.25), j(-155, 12), j(90, 12))
        lo = _arc(j(0.48), j(0.74), j(0.33), j(0.26), j(-90, 12), j(150, 12))
        return np.concatenate([up, lo], 1)

    def three_flat(j):
        top = _poly((j(0.15), j(0.0, 0.02)), (j(0.82), j(0.0, 0.02)), (j(0.42), j(0.42)))
        lo = _arc(j(0.48), j(0.7), j(0.35), j(0.3), j(-110, 12), j(150, 12))
        return np.concatenate([top, lo], 1)

    def four_closed(j):
        x = j(0.68)
        return _poly((x, j(1.0, 0.02)), (x, j(0.0, 0.02)), (j(0.06), j(0.68)), (j(0.92), j(0.68)))

    def four_open(j):
        a = _poly((j(0.28), j(0.0, 0.02)), (j(0.12), j(0.62)), (j(0.92), j(0.62)))
        b = _poly((j(0.68), j(0.2, 0.08)), (j(0.68), j(1.0, 0.02)))
        return np.concatenate([a, b], 1)

    def five(j):
        a = _poly((j(0.85), j(0.0, 0.02)), (j(0.3), j(0.0, 0.02)), (j(0.24), j(0.45)))
        b = _arc(j(0.48), j(0.68), j(0.34), j(0.3), j(-125, 12), j(150, 12))
        return np.concatenate([a, b], 1)

    def five_round(j):
        a = _poly((j(0.85), j(0.0, 0.02)), (j(0.28), j(0.02, 0.02)), (j(0.22), j(0.42)))
        b = _arc(j(0.46), j(0.66), j(0.36), j(0.33), j(-150, 12), j(140, 12))
        return np.concatenate([a, b], 1)

    def six_curved(j):
        a = _arc(j(0.6), j(0.6), j(0.42), j(0.58), j(-55, 12), j(-180, 10))
        b = _arc(j(0.5), j(0.72), j(0.33), j(0.27), j(180, 10), j(-180, 10), n=200)
        return np.concatenate([a, b], 1)

    def six_straight(j):
        a = _poly((j(0.72), j(0.0, 0.02)), (j(0.2), j(0.68)))
        b = _arc(j(0.5), j(0.72), j(0.32), j(0.27), j(180, 10), j(-180, 10), n=200)
        return np.concatenate([a, b], 1)

    def seven(j):
        return _poly((j(0.1), j(0.0, 0.02)), (j(0.9), j(0.0, 0.02)), (j(0.4, 0.06), j(1.0, 0.02)))

    def seven_bar(j):
        a = _poly((j(0.1), j(0.0, 0.02)), (j(0.9), j(0.0, 0.02)), (j(0.4, 0.06), j(1.0, 0.02)))
        b = _poly((j(0.35), j(0.5)), (j(0.82), j(0.5)))
        return np.concatenate([a, b], 1)

    def seven_curved(j):
        a = _poly((j(0.1), j(0.0, 0.02)), (j(0.9), j(0.0, 0.02)))
        b = _bezier(_end(a), (j(0.5), j(0.45)), (j(0.42), j(1.0, 0.02)))
        return np.concatenate([a, b], 1)

    def eight(j):
        up = _arc(j(0.5), j(0.25), j(0.26), j(0.24), j(0, 30), j(360, 10), n=180)
        lo = _arc(j(0.5), j(0.73), j(0.32), j(0.27), j(0, 30), j(360, 10), n=200)
        return np.concatenate([up, lo], 1)

    def eight_small_top(j):
        up = _arc(j(0.5), j(0.27), j(0.2), j(0.25), j(0, 30), j(360, 10), n=180)
        lo = _arc(j(0.5), j(0.73), j(0.33), j(0.26), j(0, 30), j(360, 10), n=200)
        return np.concatenate([up, lo], 1)

    def nine_straight(j):
        loop = _arc(j(0.45), j(0.3), j(0.32), j(0.28), j(0, 10), j(360, 10), n=200)
        return np.concatenate([loop, _poly((j(0.77), j(0.3)), (j(0.72, 0.06), j(1.0, 0.02)))], 1)

    def nine_curved(j):
        loop = _arc(j(0.45), j(0.3), j(0.32), j(0.28), j(0, 10), j(360, 10), n=200)
        tail = _bezier((j(0.77), j(0.3)), (j(0.8), j(0.9)), (j(0.3), j(0.98)))
        return np.concatenate([loop, tail], 1)

    def nine_slanted(j):
        loop = _arc(j(0.5), j(0.28), j(0.3), j(0.27), j(0, 10), j(360, 10), n=200)
        return np.concatenate([loop, _poly((j(0.8), j(0.3)), (j(0.5, 0.06), j(1.0, 0.02)))], 1)

    return [
        [zero],
        [one_plain, one_flag, one_base],
        [two_straight, two_curved],
        [three_round, three_flat],
        [four_closed, four_open],
        [five, five_round],
        [six_curved, six_straight],
        [seven, seven_bar, seven_curved],
        [eight, eight_small_top],
        [nine_straight, nine_curved, nine_slanted],
    ]


# --------------------------------------------------------------------------------------------------
# font glyphs


def _font_dir() -> Path | None:
    try:
        import matplotlib

        d = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        return d if d.is_dir() else None
    except Exception:  # pragma: no cover - matplotlib is a dependency
        return None


FONT_FILES = [
    # (file, is_bold)
    ("DejaVuSans.ttf", False),
    ("DejaVuSans-Bold.ttf", True),
    ("DejaVuSans-Oblique.ttf", False),
    ("DejaVuSans-BoldOblique.ttf", True),
    ("DejaVuSerif.ttf", False),
    ("DejaVuSerif-Bold.ttf", True),
    ("DejaVuSerif-Italic.ttf", False),
    ("DejaVuSerif-BoldItalic.ttf", True),
    ("DejaVuSansMono.ttf", False),
    ("DejaVuSansMono-Bold.ttf", True),
    ("STIXGeneral.ttf", False),
    ("STIXGeneralBol.ttf", True),
    ("STIXGeneralItalic.ttf", False),
    ("STIXGeneralBolIta.ttf", True),
    ("cmr10.ttf", False),
    ("cmss10.ttf", False),
    ("cmtt10.ttf", False),
    ("cmb10.ttf", True),
]


@lru_cache(maxsize=1)
def _font_glyph_points() -> tuple[tuple[tuple[np.ndarray, bool], ...], ...]:
    """Per digit, a tuple of (points (P, 2) in a box of height 1, is_bold) for each usable font."""
    from PIL import ImageDraw, ImageFont

    d = _font_dir()
    out: list[list[tuple[np.ndarray, bool]]] = [[] for _ in range(10)]
    if d is None:
        return tuple(tuple(x) for x in out)
    sub = np.array([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    for fname, bold in FONT_FILES:
        path = d / fname
        if not path.is_file():
            continue
        try:
            font = ImageFont.truetype(str(path), size=40)
        except OSError:
            continue
        glyphs = []
        for k in range(10):
            img = Image.new("L", (96, 96), 0)
            ImageDraw.Draw(img).text((20, 10), str(k), fill=255, font=font)
            ys, xs = np.nonzero(np.asarray(img) > 127)
            if len(ys) < 50:
                break
            pts = (np.stack([xs, ys], -1)[:, None, :] + sub[None]).reshape(-1, 2)
            lo, hi = pts.min(0), pts.max(0)
            glyphs.append(((pts - lo) / (hi[1] - lo[1]), bold))
        if len(glyphs) == 10 and len({g[0].shape for g in glyphs}) > 1:
            for k in range(10):
                out[k].append(glyphs[k])
    return tuple(tuple(x) for x in out)


# --------------------------------------------------------------------------------------------------
# geometry, rasterisation, bitmap -> 8x8 counts


def _distort(pts: np.ndarray, rng: np.random.Generator, printed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Elastic displacement then rotation/shear/aspect about the glyph centre. Returns (points, slant)."""
    m = pts.shape[0]
    amp = 0.4 * ELASTIC_AMP if printed else ELASTIC_AMP
    x, y = pts[..., 0], pts[..., 1]
    dx = np.zeros_like(x)
    dy = np.zeros_like(y)
    for _ in range(3):
        fx, fy = rng.uniform(-1.6, 1.6, (2, m, 1))
        ph = rng.uniform(0, 2 * np.pi, (2, m, 1))
        ax, ay = rng.normal(0, amp, (2, m, 1))
        arg = 2 * np.pi * (fx * x + fy * y)
        dx += ax * np.sin(arg + ph[0])
        dy += ay * np.sin(arg + ph[1])
    x = x + dx
    y = y + dy
    cx = 0.5 * (x.min(1, keepdims=True) + x.max(1, keepdims=True))
    cy = 0.5 * (y.min(1, keepdims=True) + y.max(1, keepdims=True))
    x, y = x - cx, y - cy
    rot = np.deg2rad(rng.normal(0, 0.55 * ROT_SD if printed else ROT_SD, m))[:, None]
    shear = rng.normal(0.0 if printed else SHEAR_MEAN, 0.66 * SHEAR_SD if printed else SHEAR_SD, m)[:, None]
    aspect = np.exp(rng.normal(0, 0.6 * ASPECT_SD if printed else ASPECT_SD, m))[:, None]
    x = (x - shear * y) * aspect  # shear > 0: the top leans right (y points down)
    c, s = np.cos(rot), np.sin(rot)
    x, y = c * x - s * y, s * x + c * y
    slant = (shear - rot)[:, 0]  # rotation about the centre also tilts verticals; > 0 leans right
    return np.stack([x, y], -1), slant


def _rasterise(pts: np.ndarray, radius: np.ndarray, fill: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Points (m, P, 2) -> (m, 32, 32) bool bitmaps with the glyph scaled to fill the box, aspect kept."""
    m = pts.shape[0]
    lo = pts.min(1)
    hi = pts.max(1)
    size = (hi - lo).max(1)
    scale = (GRID * fill - 2 * radius - 1) / np.maximum(size, 1e-6)
    centre = 0.5 * (lo + hi)
    shift = rng.normal(0, 0.8, (m, 2))
    g = (pts - centre[:, None, :]) * scale[:, None, None] + (GRID / 2 + shift)[:, None, :]
    ij = np.clip(np.floor(g).astype(np.int64), 0, GRID - 1)
    flat = (np.arange(m)[:, None] * GRID * GRID + ij[..., 1] * GRID + ij[..., 0]).ravel()
    occ = np.zeros(m * GRID * GRID, dtype=bool)
    occ[flat] = True
    occ = occ.reshape(m, GRID, GRID)
    # Pen width: dilate by alternating 3x3 cross / square steps (an octagonal disc), per-sample steps.
    steps = np.rint(radius).astype(np.int64)
    for it in range(int(steps.max(initial=0))):
        d = occ.copy()
        d[:, 1:, :] |= occ[:, :-1, :]
        d[:, :-1, :] |= occ[:, 1:, :]
        d[:, :, 1:] |= occ[:, :, :-1]
        d[:, :, :-1] |= occ[:, :, 1:]
        if it % 2 == 1:
            e = d.copy()
            e[:, 1:, 1:] |= occ[:, :-1, :-1]
            e[:, :-1, :-1] |= occ[:, 1:, 1:]
            e[:, 1:, :-1] |= occ[:, :-1, 1:]
            e[:, :-1, 1:] |= occ[:, 1:, :-1]
            d = e
        grow = steps > it
        occ = np.where(grow[:, None, None], d, occ)
    half = occ.reshape(m, 32, 2, 32, 2).sum((2, 4))
    return half >= 2


def bitmaps_to_counts(bitmaps: np.ndarray) -> np.ndarray:
    """(m, 32, 32) binary bitmaps -> (m, 8, 8) uint8 on-pixel counts of the 4x4 blocks (0..16)."""
    m = bitmaps.shape[0]
    return bitmaps.reshape(m, 8, 4, 8, 4).sum((2, 4)).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# captions


def _caption(rng: np.random.Generator, name: str, printed: bool, bold: bool, thin: bool, slant: float, aspect: float) -> str:
    u = rng.random()
    if u < 0.55:
        tpl = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    else:
        pool = PRINTED_TEMPLATES if printed else HANDWRITTEN_TEMPLATES
        tpl = pool[rng.integers(len(pool))]
    words = []
    if bold:
        words.append("bold" if rng.random() < 0.5 else "thick")
    elif thin:
        words.append("thin")
    if slant > 0.2:
        words.append("slanted right")
    elif slant < -0.2:
        words.append("slanted left")
    if aspect < 0.45:
        words.append("narrow")
    elif aspect > 0.85:
        words.append("wide")
    keep = [w for w in words if rng.random() < 0.6]
    if len(keep) > 2:
        keep = keep[:2]
    text = tpl.format(name)
    if keep:
        text += ", " + ", ".join(keep)
    return text + "."


# --------------------------------------------------------------------------------------------------


def render_digit_corpus(
    n: int, seed: int, *, printed_fraction: float = 0.3
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Render ``n`` captioned synthetic digits, deterministic for ``seed``.

    Returns ``(arrays, captions, labels)``: arrays (n, 8, 8) uint8 with values 0..16 (ink = high), the
    same kind as ``sklearn.datasets.load_digits().images``; one caption per sample naming its digit in
    words (``DIGIT_CLASSNAMES``); labels (n,) int64 for diagnostics. A ``printed_fraction`` of the
    samples come from font glyphs (if matplotlib's fonts are found), the rest from jittered strokes.
    """
    if n < 0:
        raise ValueError("render_digit_corpus: n must be >= 0")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    fonts = _font_glyph_points()
    have_fonts = all(len(f) > 0 for f in fonts)
    printed = (rng.random(n) < printed_fraction) & have_fonts
    variants = _digit_variants()

    arrays = np.zeros((n, 8, 8), dtype=np.uint8)
    slant = np.zeros(n)
    aspect = np.zeros(n)
    radius = np.zeros(n)
    bold = np.zeros(n, dtype=bool)

    groups: list[tuple[np.ndarray, Callable[[int], tuple[np.ndarray, np.ndarray]]]] = []
    for k in range(10):
        idx = np.nonzero((labels == k) & ~printed)[0]
        which = rng.integers(len(variants[k]), size=len(idx))
        for v, fn in enumerate(variants[k]):
            sel = idx[which == v]
            if len(sel):
                groups.append((sel, ("stroke", fn)))
        idx = np.nonzero((labels == k) & printed)[0]
        if len(idx):
            which = rng.integers(len(fonts[k]), size=len(idx))
            for v, glyph in enumerate(fonts[k]):
                sel = idx[which == v]
                if len(sel):
                    groups.append((sel, ("font", glyph)))

    for sel, (kind, obj) in groups:
        m = len(sel)
        if kind == "stroke":

            def j(base, sd=0.035, _m=m):
                return base + sd * rng.standard_normal(_m)

            pts = obj(j)
            r = rng.uniform(*STROKE_RADIUS, m)
            is_print = False
            b = r > STROKE_RADIUS[0] + 0.7 * (STROKE_RADIUS[1] - STROKE_RADIUS[0])
        else:
            pts_g, is_bold = obj
            pts = np.broadcast_to(pts_g[None], (m,) + pts_g.shape)
            r = rng.uniform(FONT_RADIUS[0], FONT_RADIUS[1] - (1.0 if is_bold else 0.0), m)
            is_print = True
            b = np.full(m, is_bold) | (r > FONT_RADIUS[1] - 1.5)
        pts, sl = _distort(pts, rng, is_print)
        fill = rng.uniform(*FILL, m)
        bm = _rasterise(pts, r, fill, rng)
        arrays[sel] = bitmaps_to_counts(bm)
        w = pts[..., 0].max(1) - pts[..., 0].min(1)
        h = pts[..., 1].max(1) - pts[..., 1].min(1)
        slant[sel], aspect[sel], radius[sel], bold[sel] = sl, w / np.maximum(h, 1e-6), r, b

    thin = radius < STROKE_RADIUS[0] + 0.25 * (STROKE_RADIUS[1] - STROKE_RADIUS[0])
    captions = [
        _caption(rng, DIGIT_CLASSNAMES[labels[i]], bool(printed[i]), bool(bold[i]), bool(thin[i] and not printed[i]), slant[i], aspect[i])
        for i in range(n)
    ]
    return arrays, captions, labels
