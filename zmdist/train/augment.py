"""The training views: weak, strong (USB's RandAugment + Cutout by default) and eval.

What the views follow (USB = the repository ``microsoft/Semi-supervised-learning``, files
``semilearn/datasets/augmentation/randaugment.py`` and ``semilearn/datasets/cv_datasets/*.py``; ZeroMatch's
code, a USB fork, uses the same transforms; see ``docs/methods.md`` section 1):

- weak, ``img_size < 96`` (USB's CIFAR/SVHN/STL transform): resize to ``img_size`` (bicubic), random crop
  with reflect padding ``img_size // 8`` (USB: ``int(img_size * (1 - crop_ratio))``, crop_ratio 0.875),
  optional horizontal flip.
- weak, ``img_size >= 96`` (USB's ImageNet/Food101/iNat transform, ZeroMatch's Flowers102/RESISC45 one):
  resize to a square of side ``floor(img_size / 0.875)`` (bilinear, torchvision's default, as USB), random
  crop of ``img_size`` (no padding), optional horizontal flip. USB's weak view for large images has NO
  RandomResizedCrop: it appears in USB's *strong* view, see below.
- strong (``strong="usb"``, the default): the same geometric base as USB's strong view, i.e. for
  ``img_size < 96`` the weak view and for ``img_size >= 96`` a resize to ``floor(img_size / 0.875)`` then
  ``RandomResizedCrop(img_size, scale=(0.08, 1.0), ratio=(3/4, 4/3), bilinear)`` (USB's timm-style
  ``RandomResizedCropAndInterpolation`` defaults) and the optional flip; then USB's RandAugment:

  * ``n = 3`` ops drawn uniformly WITH replacement (USB: ``random.choices(ops, k=n)``) from the 14 ops of
    ``OPS`` below;
  * every drawn op is ALWAYS applied (no 0.5 probability), with a strength drawn uniformly over the op's
    whole range ``[min, max)`` (USB's ``m`` argument is unused; ``OPS`` holds USB's ranges);
  * then Cutout, always: a square of side up to half the image, filled with USB's grey
    ``(125, 123, 114)``.

  ``strong="torchvision"``: the weak view then ``torchvision.transforms.RandAugment(randaugment_ops,
  randaugment_magnitude)`` (torchvision's meaning of both; they are unused by ``"usb"``).
- eval, ``img_size < 96`` (USB's CIFAR eval): resize to ``img_size`` (bicubic) only.
- eval, ``img_size >= 96`` (USB's ImageNet/Food101/iNat eval, ZeroMatch's Flowers102/RESISC45/DTD one:
  USB semilearn/datasets/cv_datasets/imagenet.py:76-78 at commit 1ef4cbebcc0b368158315aeb425053858cf6c845,
  ZeroMatch train_zeromatch/semilearn/datasets/cv_datasets/framed.py:70-72 at commit
  8ca40799e79e6ac649d85e507b026c5ca391b397): resize the SHORTER side to ``floor(img_size / 0.875)``
  (bilinear, aspect kept; the weak view squashes to a square, as USB's), then centre crop ``img_size``.
  The weak view trains on ``img_size`` crops of images resized to ``img_size / 0.875``, so this shows
  evaluated objects at the scale they were trained at (a plain resize to ``img_size`` would show them
  0.875x smaller), and it is how the papers' figures were measured.

All views end with ``ToTensor`` and ``Normalize(mean, std)``: by default ``(0.5, 0.5, 0.5)`` for both (USB's
CIFAR normalisation, [-1, 1]); a pretrained student normalises as its backbone was trained
(``zmdist.models.student_init`` resolves the pair).

Randomness comes ONLY from torch's CPU default generator (``torch.rand``/``torch.randint``; torchvision's
transforms draw from it too): the trainer reseeds that generator per sample and view
(``zmdist.train.data.seeded``), so a resumed run reproduces every augmentation bit for bit. USB draws from
Python's ``random`` and numpy instead.

Deliberate differences from USB (the clean rule where USB has a quirk):

- Cutout side: USB draws ``v ~ U[0, 0.5) * width`` and fills PIL's inclusive rectangle
  ``(x0, y0, x0 + v, y0 + v)``, i.e. a side of ``floor(v) + 1`` pixels, uniform over ``1 .. width/2`` for
  an even width. Here the side is drawn uniformly over the integers ``1 .. max(1, width // 2)`` directly
  (the same distribution for even widths, never above half the image for odd ones).
- Cutout placement: USB's centre is ``np.random.uniform(w)`` (numpy reads that as ``U[1, w)``) and a square
  crossing the left/top border is shifted inside while one crossing the right/bottom border is clipped.
  Here the centre pixel is uniform over the image and the square is clipped at every border alike
  (DeVries & Taylor's Cutout).
- Ops keep USB's PIL calls and defaults: rotation, shears and translations use nearest resampling with
  black fill, shears act about the top-left corner, Posterize keeps ``int(v)`` bits (4..7), Solarize's
  threshold is ``v`` in ``[0, 256)``, and Brightness/Color/Contrast/Sharpness factors are in
  ``[0.05, 0.95]`` (FixMatch's ranges: these ops only weaken).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torchvision.transforms as T
from PIL import Image, ImageEnhance, ImageOps

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
LARGE_IMAGE = 96  # from this size on, USB's large-image (ImageNet-style) transforms
CROP_RATIO = 0.875  # USB's crop_ratio: resize to img_size / 0.875 before cropping large images
CUTOUT_FILL = (125, 123, 114)  # USB's Cutout colour
USB_N_OPS = 3  # USB's RandAugment(3, ...) for every strong view

Op = Callable[[Image.Image, float], Image.Image]


# --- the ops: pure functions img, v -> new img (v ignored by the ops that take no strength) ---------------
def auto_contrast(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.autocontrast(img)


def brightness(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(v)


def color(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Color(img).enhance(v)


def contrast(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(v)


def equalize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.equalize(img)


def identity(img: Image.Image, v: float) -> Image.Image:
    return img


def posterize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.posterize(img, max(1, int(v)))


def rotate(img: Image.Image, v: float) -> Image.Image:
    return img.rotate(v)


def sharpness(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Sharpness(img).enhance(v)


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs)


def shear_x(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, v, 0, 0, 1, 0))


def shear_y(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, 0, 0, v, 1, 0))


def solarize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.solarize(img, v)


def translate_x(img: Image.Image, v: float) -> Image.Image:
    """Shift by ``v`` x the width."""
    return _affine(img, (1, 0, v * img.size[0], 0, 1, 0))


def translate_y(img: Image.Image, v: float) -> Image.Image:
    """Shift by ``v`` x the height."""
    return _affine(img, (1, 0, 0, 0, 1, v * img.size[1]))


# USB's augment_list(): name -> (op, min, max); a strength is drawn uniformly in [min, max).
OPS: dict[str, tuple[Op, float, float]] = {
    "AutoContrast": (auto_contrast, 0.0, 1.0),
    "Brightness": (brightness, 0.05, 0.95),
    "Color": (color, 0.05, 0.95),
    "Contrast": (contrast, 0.05, 0.95),
    "Equalize": (equalize, 0.0, 1.0),
    "Identity": (identity, 0.0, 1.0),
    "Posterize": (posterize, 4.0, 8.0),
    "Rotate": (rotate, -30.0, 30.0),
    "Sharpness": (sharpness, 0.05, 0.95),
    "ShearX": (shear_x, -0.3, 0.3),
    "ShearY": (shear_y, -0.3, 0.3),
    "Solarize": (solarize, 0.0, 256.0),
    "TranslateX": (translate_x, -0.3, 0.3),
    "TranslateY": (translate_y, -0.3, 0.3),
}


def draw_ops(n: int = USB_N_OPS, generator: torch.Generator | None = None) -> list[tuple[str, float]]:
    """USB's choice: ``n`` op names drawn uniformly with replacement, each with a strength uniform over
    its whole range. ``generator=None`` draws from torch's default CPU generator."""
    names = list(OPS)
    picks = torch.randint(len(names), (n,), generator=generator).tolist()
    fractions = torch.rand(n, dtype=torch.float64, generator=generator).tolist()
    chosen = []
    for i, u in zip(picks, fractions):
        _, lo, hi = OPS[names[i]]
        chosen.append((names[i], lo + (hi - lo) * u))
    return chosen


def apply_ops(img: Image.Image, ops: list[tuple[str, float]]) -> Image.Image:
    """Apply ``ops`` (as drawn by ``draw_ops``) in order, every one of them."""
    for name, v in ops:
        img = OPS[name][0](img, v)
    return img


def cutout_box(width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """The Cutout square ``(x0, y0, x1, y1)`` (end exclusive), clipped to the image: side uniform over the
    integers ``1 .. max(1, width // 2)``, centre pixel uniform over the image (so the box is never empty;
    see the module docstring)."""
    u_side, u_x, u_y = torch.rand(3, dtype=torch.float64, generator=generator).tolist()
    half = max(1, width // 2)
    side = 1 + min(half - 1, math.floor(u_side * half))
    cx, cy = min(width - 1, math.floor(u_x * width)), min(height - 1, math.floor(u_y * height))
    x0, y0 = cx - side // 2, cy - side // 2
    return max(0, x0), max(0, y0), min(width, x0 + side), min(height, y0 + side)


def cutout(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A copy of ``img`` with ``box`` filled with USB's grey."""
    bands = len(img.getbands())
    fill: int | tuple[int, ...] = CUTOUT_FILL[0] if bands == 1 else (*CUTOUT_FILL, 255)[:bands]
    out = img.copy()
    if box[2] > box[0] and box[3] > box[1]:
        out.paste(fill, box)
    return out


def usb_randaugment(img: Image.Image, n: int = USB_N_OPS,
                    generator: torch.Generator | None = None) -> tuple[Image.Image, list[tuple[str, float]]]:
    """USB's RandAugment on a PIL image: ``n`` drawn ops, all applied, then Cutout. Returns the image and
    the ops applied (for logging and tests)."""
    ops = draw_ops(n, generator)
    img = apply_ops(img, ops)
    return cutout(img, cutout_box(*img.size, generator=generator)), ops


class USBRandAugment:
    """``usb_randaugment`` as a transform (a module-level class so DataLoader workers can pickle it)."""

    def __init__(self, n: int = USB_N_OPS):
        self.n = n

    def __call__(self, img: Image.Image) -> Image.Image:
        return usb_randaugment(img, self.n)[0]

    def __repr__(self) -> str:
        return f"USBRandAugment(n={self.n}, strengths=full range, cutout<=1/2)"


@dataclass(frozen=True)
class Views:
    """The three views of an image, each PIL image -> float tensor CxHxW normalised by ``make_views``'s
    mean and std ([-1, 1] for the default 0.5/0.5)."""

    weak: Callable[[Image.Image], torch.Tensor]
    strong: Callable[[Image.Image], torch.Tensor]
    eval: Callable[[Image.Image], torch.Tensor]


def _large_resize(img_size: int) -> T.Resize:
    side = int(math.floor(img_size / CROP_RATIO))
    return T.Resize((side, side), interpolation=T.InterpolationMode.BILINEAR)


def make_views(img_size: int, hflip: bool, strong: Literal["usb", "torchvision"] = "usb",
               randaugment_ops: int = 3, randaugment_magnitude: int = 10,
               mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> Views:
    """The weak, strong and eval views (see the module docstring and ``describe_views``).

    ``randaugment_ops``/``randaugment_magnitude`` are torchvision's RandAugment arguments, used only by
    ``strong="torchvision"``; ``"usb"`` always draws USB's 3 ops at strengths over their full ranges.
    ``mean``/``std`` (one value per RGB channel) are every view's final ``Normalize``."""
    if strong not in ("usb", "torchvision"):
        raise ValueError(f"strong augmentation must be 'usb' or 'torchvision', not {strong!r}")
    finish = [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    resize = T.Resize((img_size, img_size), interpolation=T.InterpolationMode.BICUBIC)
    flip = [T.RandomHorizontalFlip()] if hflip else []
    if img_size < LARGE_IMAGE:
        weak = [resize, T.RandomCrop(img_size, padding=max(1, img_size // 8), padding_mode="reflect"), *flip]
        strong_base = weak
    else:
        weak = [_large_resize(img_size), T.RandomCrop(img_size), *flip]
        strong_base = [_large_resize(img_size),
                       T.RandomResizedCrop(img_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                           interpolation=T.InterpolationMode.BILINEAR), *flip]
    if strong == "usb":
        strong_ops = [*strong_base, USBRandAugment(USB_N_OPS)]
    else:
        strong_ops = [*weak, T.RandAugment(randaugment_ops, randaugment_magnitude)]
    evaluation = [resize] if img_size < LARGE_IMAGE else [
        T.Resize(int(math.floor(img_size / CROP_RATIO)), interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(img_size)]
    return Views(T.Compose(weak + finish), T.Compose(strong_ops + finish), T.Compose(evaluation + finish))


def describe_views(img_size: int, hflip: bool, strong: Literal["usb", "torchvision"] = "usb",
                   randaugment_ops: int = 3, randaugment_magnitude: int = 10,
                   mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> str:
    """One line each for weak, strong and eval, as ``make_views`` builds them (for logs and the README)."""
    flip = ", random horizontal flip" if hflip else ""
    big = int(math.floor(img_size / CROP_RATIO))
    if img_size < LARGE_IMAGE:
        weak = f"resize to {img_size} (bicubic), reflect-pad {max(1, img_size // 8)} and random crop {img_size}{flip}"
        base = "the weak view"
    else:
        weak = f"resize to {big} (bilinear), random crop {img_size}{flip}"
        base = (f"resize to {big}, RandomResizedCrop {img_size} (scale 0.08-1, ratio 3/4-4/3, bilinear)"
                f"{flip}")
    if strong == "usb":
        strong_line = (f"{base}, then USB RandAugment: {USB_N_OPS} of {len(OPS)} ops drawn with replacement, "
                       "each always applied at a strength uniform over its range, then Cutout (square of side "
                       f"1..{max(1, img_size // 2)} px, fill {CUTOUT_FILL})")
    else:
        strong_line = f"the weak view, then torchvision RandAugment(num_ops={randaugment_ops}, " \
                      f"magnitude={randaugment_magnitude})"
    evaluation = (f"resize to {img_size} (bicubic)" if img_size < LARGE_IMAGE
                  else f"resize the shorter side to {big} (bilinear), centre crop {img_size}")
    return "\n".join([f"weak:   {weak}", f"strong: {strong_line}",
                      f"eval:   {evaluation}; every view ends with ToTensor, {_describe_normalize(mean, std)}"])


def _describe_normalize(mean: Sequence[float], std: Sequence[float]) -> str:
    values = lambda v: ", ".join(f"{x:g}" for x in v)  # noqa: E731
    if len(set(mean)) == len(set(std)) == 1 and mean[0] == std[0]:
        return f"Normalize(mean=std={mean[0]:g})"
    return f"Normalize(mean=({values(mean)}), std=({values(std)}))"
