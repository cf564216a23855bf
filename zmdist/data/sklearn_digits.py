"""``sklearn-digits``: scikit-learn's 1,797 real handwritten 8x8 digits as a data source.

``load_digits()`` ships with scikit-learn (no download). Each sample is an (8, 8) array of ink counts
0..16 (the on-pixels of 4x4 blocks of a 32x32 bitmap); ``digits_array_to_image`` turns it into an 8x8
``"L"`` image, which the shard stage stores as RGB. Classes are ``zero..nine`` (``DIGIT_CLASSNAMES``, the
names prompts use), keys ``digits-0000``..; the set has no split of its own, so its default holdout
(``test_fraction=None``) is 0.2.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from zmdist.data.sources import SOURCES, Sample, Source, forbid_argument

DIGIT_CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEFAULT_TEST_FRACTION = 0.2


def digits_array_to_image(arr) -> Image.Image:
    """Turn an (8, 8) array of ink values 0..16 (ink = high) into an 8x8 ``"L"`` image, ``round(v*255/16)``."""
    a = np.asarray(arr, dtype=np.float64)
    if a.shape != (8, 8):
        raise ValueError(f"digits_array_to_image: expected an (8, 8) array, got shape {a.shape}")
    px = np.rint(np.clip(a, 0, 16) * 255.0 / 16.0).astype(np.uint8)
    return Image.fromarray(px)


@SOURCES.register("sklearn-digits")
def open_sklearn_digits(spec: str, argument: str) -> Source:
    """``sklearn-digits``: the real digits, one ``train`` split (holdout made by the shard stage)."""
    forbid_argument(spec, argument)
    from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import

    data = load_digits()
    samples = [
        Sample(f"digits-{i:04d}", f"sklearn-digits:{i}", functools.partial(digits_array_to_image, data.images[i]), int(target))
        for i, target in enumerate(data.target)
    ]
    return Source(spec, list(DIGIT_CLASSNAMES), {"train": samples}, own_splits=False,
                  default_test_fraction=DEFAULT_TEST_FRACTION)
