"""The training views of zmdist.train.augment: USB's RandAugment + Cutout, seeded only by torch."""

from __future__ import annotations

import pickle
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from zmdist.train.augment import (OPS, USBRandAugment, apply_ops, cutout, cutout_box,
                                  describe_views, draw_ops, make_views, usb_randaugment)
from zmdist.train.data import seeded

USB_GREY = (125, 123, 114)  # USB's CutoutAbs colour


def textured(size: int = 40, offset: int = 0) -> Image.Image:
    """A deterministic RGB image with structure in every channel (so every op changes something)."""
    y, x = np.mgrid[0:size, 0:size]
    arr = np.stack([(x * 7 + y * 3 + offset) % 256, (x * 2 + y * 11) % 256, ((x ^ y) * 5) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def run_seeded(fn, img, seed: int) -> torch.Tensor:
    return seeded(fn, img, seed)


# --- determinism -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 96])
def test_strong_view_depends_only_on_torch_seed(size):
    """Catches a view drawing from Python's `random` or numpy (a resumed run would then see other
    augmentations), and a view that ignores torch's seed (every sample augmented alike)."""
    views = make_views(size, hflip=True)
    img = textured(48)
    outs = []
    for py_seed in (1, 2):
        random.seed(py_seed)
        np.random.seed(py_seed)
        outs.append(run_seeded(views.strong, img, 1234))
    assert torch.equal(outs[0], outs[1])
    others = [run_seeded(views.strong, img, s) for s in range(1, 6)]
    assert all(not torch.equal(outs[0], o) for o in others)
    assert torch.equal(run_seeded(views.weak, img, 7), run_seeded(views.weak, img, 7))


def test_usb_randaugment_uses_the_default_generator_like_an_explicit_one():
    """Catches USBRandAugment drawing from anything but torch's default CPU generator (the one
    `seeded` fixes): seeded by `seeded`, it must equal an explicit generator with the same seed."""
    img = textured(32)
    for seed in range(5):
        via_default = seeded(USBRandAugment(3), img, seed)
        explicit, _ = usb_randaugment(img, 3, torch.Generator().manual_seed(seed))
        assert np.array_equal(np.asarray(via_default), np.asarray(explicit))


def test_views_pickle_for_spawned_workers():
    """Catches a view holding a lambda/closure: DataLoader workers started with spawn pickle it."""
    views = make_views(32, hflip=True)
    clone = pickle.loads(pickle.dumps(views))
    img = textured(32)
    assert torch.equal(run_seeded(views.strong, img, 3), run_seeded(clone.strong, img, 3))


# --- shapes and normalisation ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 32, 96])
@pytest.mark.parametrize("strong", ["usb", "torchvision"])
def test_views_shape_dtype_range(size, strong):
    """Catches a view that returns the wrong size (e.g. RandomResizedCrop/Cutout changing it), a
    non-float tensor, or one not normalised to [-1, 1]."""
    views = make_views(size, hflip=True, strong=strong)
    for source in (textured(40), textured(300)):
        for name in ("weak", "strong", "eval"):
            for seed in range(3):
                out = run_seeded(getattr(views, name), source, seed)
                assert out.shape == (3, size, size) and out.dtype == torch.float32, name
                assert out.min() >= -1.0 and out.max() <= 1.0, name
                if name != "strong":  # strong ops may darken everything (Brightness 0.05)
                    assert out.min() < 0 < out.max(), name  # normalised: [0,1] was mapped onto [-1,1]


def test_large_images_follow_usb_large_transforms():
    """Catches the >= 96 px path falling back to the small-image pad-and-crop: weak is USB's resize to
    size/0.875 then random crop, strong USB's resize then RandomResizedCrop(0.08-1, 3/4-4/3)."""
    views = make_views(96, hflip=True)
    weak = views.weak.transforms
    assert isinstance(weak[0], T.Resize) and tuple(weak[0].size) == (109, 109)
    assert isinstance(weak[1], T.RandomCrop) and not weak[1].padding
    assert not any(isinstance(t, T.RandomResizedCrop) for t in weak)
    strong = views.strong.transforms
    rrc = [t for t in strong if isinstance(t, T.RandomResizedCrop)]
    assert len(rrc) == 1 and rrc[0].scale == (0.08, 1.0)
    assert rrc[0].ratio == pytest.approx((3 / 4, 4 / 3)) and tuple(rrc[0].size) == (96, 96)
    assert any(isinstance(t, USBRandAugment) for t in strong)
    small = make_views(95, hflip=False).weak.transforms
    assert isinstance(small[1], T.RandomCrop) and small[1].padding == 95 // 8
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in small)


# --- cutout ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [4, 17, 32])
def test_cutout_alone_fills_a_square_of_at_most_half_the_side(size):
    """Catches a Cutout larger than half the image, a fill colour other than USB's (125, 123, 114), a
    cut that is not the drawn box, and an empty cut."""
    img = Image.new("RGB", (size, size), (0, 200, 0))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        box = cutout_box(size, size, g)
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        assert x1 - x0 <= max(1, size // 2) and y1 - y0 <= max(1, size // 2)
        arr = np.asarray(cutout(img, box))
        hit = np.all(arr == USB_GREY, axis=-1)
        ys, xs = np.nonzero(hit)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == box
        assert hit.sum() == (x1 - x0) * (y1 - y0)
        assert np.all(arr[~hit] == (0, 200, 0))
    assert np.array_equal(np.asarray(img), np.full((size, size, 3), (0, 200, 0)))  # input untouched


def test_cutout_sides_cover_the_whole_range():
    """Catches a constant (or narrowed) Cutout size: USB draws the side uniformly up to half the image."""
    g = torch.Generator().manual_seed(1)
    sides = Counter()
    for _ in range(2000):
        x0, y0, x1, y1 = cutout_box(32, 32, g)
        sides[max(x1 - x0, y1 - y0)] += 1
    assert max(sides) == 16 and min(sides) == 1
    assert set(sides) == set(range(1, 17))
    assert sides[16] > 40 and sides[1] > 40  # roughly uniform, not a rare tail


def test_usb_randaugment_always_ends_with_cutout():
    """Catches Cutout applied only sometimes: with no ops drawn, the output must differ from the input
    exactly by one filled square."""
    img = Image.new("RGB", (32, 32), (0, 200, 0))
    for seed in range(20):
        out, ops = usb_randaugment(img, n=0, generator=torch.Generator().manual_seed(seed))
        assert ops == []
        assert np.all(np.asarray(out) == USB_GREY, axis=-1).sum() >= 1


# --- RandAugment ops -------------------------------------------------------------------------------------
def test_draw_ops_picks_n_ops_within_their_ranges():
    """Catches the wrong number of ops, a value outside its op's range, a fixed magnitude instead of a
    strength drawn over the full range, and drawing without replacement (USB uses random.choices)."""
    g = torch.Generator().manual_seed(0)
    values = {name: [] for name in OPS}
    repeated = 0
    for _ in range(400):
        ops = draw_ops(3, g)
        assert len(ops) == 3
        repeated += len({name for name, _ in ops}) < 3
        for name, v in ops:
            _, lo, hi = OPS[name]
            assert lo <= v < hi
            values[name].append(v)
    assert all(len(v) > 30 for v in values.values())  # every one of the 14 ops gets drawn
    for name, vs in values.items():
        _, lo, hi = OPS[name]
        assert min(vs) < lo + 0.1 * (hi - lo) and max(vs) > hi - 0.1 * (hi - lo), name  # full range
    assert repeated > 0  # with replacement
    assert len(draw_ops(5, g)) == 5


def test_usb_ops_table_is_usbs():
    """Catches an op list or range drifting from USB's augment_list()."""
    assert {name: (lo, hi) for name, (_, lo, hi) in OPS.items()} == {
        "AutoContrast": (0, 1), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95), "Contrast": (0.05, 0.95),
        "Equalize": (0, 1), "Identity": (0, 1), "Posterize": (4, 8), "Rotate": (-30, 30),
        "Sharpness": (0.05, 0.95), "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "Solarize": (0, 256),
        "TranslateX": (-0.3, 0.3), "TranslateY": (-0.3, 0.3)}


def test_usb_randaugment_applies_every_drawn_op_then_cutout():
    """Catches ops skipped at random (USB applies every drawn op) or applied out of order: the output
    equals the drawn ops applied one after the other, then the drawn Cutout."""
    img = textured(32)
    for seed in range(30):
        out, ops = usb_randaugment(img, 3, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        again = draw_ops(3, g)
        assert again == ops
        expected = cutout(apply_ops(img, again), cutout_box(32, 32, g))
        assert np.array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_op_is_pure_and_handles_its_range_ends(name):
    """Catches an op that fails at an end of its range, changes the image size/mode, mutates its input,
    or (but Identity) does nothing to a textured image."""
    fn, lo, hi = OPS[name]
    img = textured(32)
    before = np.asarray(img).copy()
    changed = False
    for v in (lo, (lo + hi) / 2 + 0.1 * (hi - lo), hi - 1e-6):
        out = fn(img, v)
        assert out.size == img.size and out.mode == "RGB"
        changed |= not np.array_equal(np.asarray(out), before)
    assert np.array_equal(np.asarray(img), before)
    assert changed == (name != "Identity")


# --- torchvision option ----------------------------------------------------------------------------------
def test_torchvision_strong_is_torchvisions_randaugment():
    """Catches strong="torchvision" not being torchvision's RandAugment(ops, magnitude) after the weak view."""
    views = make_views(32, hflip=True, strong="torchvision", randaugment_ops=2, randaugment_magnitude=7)
    ra = [t for t in views.strong.transforms if isinstance(t, T.RandAugment)]
    assert len(ra) == 1 and ra[0].num_ops == 2 and ra[0].magnitude == 7
    assert not any(isinstance(t, USBRandAugment) for t in views.strong.transforms)
    reference = T.Compose([
        T.Resize((32, 32), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(), T.RandAugment(2, 7),
        T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    img = textured(40)
    for seed in range(5):
        assert torch.equal(run_seeded(views.strong, img, seed), run_seeded(reference, img, seed))
    with pytest.raises(ValueError, match="usb"):
        make_views(32, hflip=True, strong="autoaugment")  # type: ignore[arg-type]


def test_describe_views_has_one_line_per_view():
    """Catches describe_views drifting from what make_views builds (the README quotes it)."""
    text = describe_views(32, True, "usb")
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["weak", "strong", "eval"]
    assert "reflect-pad 4" in lines[0] and "flip" in lines[0] and "1..16 px" in lines[1]
    assert "RandomResizedCrop 224" in describe_views(224, False, "usb").splitlines()[1]
    assert "RandAugment(num_ops=2, magnitude=9)" in describe_views(32, False, "torchvision", 2, 9)
