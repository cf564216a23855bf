"""The synthetic captioned digit corpus and the real-digit image convention."""

from __future__ import annotations

import re

import numpy as np
import pytest

from zmdist.data.sklearn_digits import DIGIT_CLASSNAMES, digits_array_to_image
from zmdist.demo.synth_digits import bitmaps_to_counts, render_digit_corpus


@pytest.fixture(scope="module")
def corpus():
    return render_digit_corpus(300, seed=3)


def test_classnames():
    assert DIGIT_CLASSNAMES == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_corpus_shapes_dtype_range(corpus):
    arrays, captions, labels = corpus
    assert arrays.shape == (300, 8, 8)
    assert arrays.dtype == np.uint8
    assert arrays.min() == 0 and arrays.max() == 16
    assert len(captions) == 300 and all(isinstance(c, str) for c in captions)
    assert labels.shape == (300,) and set(labels.tolist()) == set(range(10))
    # balanced classes, and every glyph has ink but does not fill the whole box
    assert np.bincount(labels, minlength=10).tolist() == [30] * 10
    ink = arrays.reshape(300, -1).sum(1)
    assert (ink > 0).all() and (ink < 16 * 64).all()


def test_corpus_is_deterministic_per_seed(corpus):
    arrays, captions, labels = corpus
    a2, c2, l2 = render_digit_corpus(300, seed=3)
    assert np.array_equal(arrays, a2) and captions == c2 and np.array_equal(labels, l2)
    a3, c3, _ = render_digit_corpus(300, seed=4)
    assert not np.array_equal(arrays, a3)
    assert captions != c3


def test_captions_name_exactly_the_labelled_digit(corpus):
    _, captions, labels = corpus
    for caption, label in zip(captions, labels):
        words = set(re.findall(r"[a-z]+", caption.lower()))
        named = [name for name in DIGIT_CLASSNAMES if name in words]
        assert named == [DIGIT_CLASSNAMES[label]], caption
    # varied captions, so a contrastive batch is not mostly duplicates
    assert len(set(captions)) > 100


def test_glyphs_are_distinguishable_by_class(corpus):
    # the class-mean images differ: a nearest-class-mean classifier on the corpus itself beats chance
    arrays, _, labels = corpus
    x = arrays.reshape(len(arrays), -1).astype(float)
    means = np.stack([x[labels == k].mean(0) for k in range(10)])
    pred = ((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == labels).mean() > 0.5


def test_bitmaps_to_counts():
    bm = np.zeros((2, 32, 32), dtype=bool)
    bm[0] = True
    bm[1, :4, :4] = True
    bm[1, 4, 4] = True
    counts = bitmaps_to_counts(bm)
    assert counts.shape == (2, 8, 8) and counts.dtype == np.uint8
    assert (counts[0] == 16).all()
    assert counts[1, 0, 0] == 16 and counts[1, 1, 1] == 1 and counts[1].sum() == 17


def test_digits_array_to_image_values():
    arr = np.zeros((8, 8), dtype=np.int64)
    arr.flat[:17] = np.arange(17)
    img = digits_array_to_image(arr)
    assert img.mode == "L" and img.size == (8, 8)
    px = np.asarray(img)
    expected = [round(v * 255 / 16) for v in range(17)]
    assert px.flat[:17].tolist() == expected
    assert px[0, 0] == 0 and px.flat[16] == 255 and px.flat[8] == 128
    # RGB conversion replicates the channel
    rgb = np.asarray(img.convert("RGB"))
    assert (rgb == px[..., None]).all()
    with pytest.raises(ValueError):
        digits_array_to_image(np.zeros((4, 4)))
