"""Synthetic data generators for the offline embedded default (no downloads, no real images).

``zmdist.synth.digits`` renders captioned 8x8 digit glyphs the way the UCI / scikit-learn handwritten
digits were made (32x32 binary bitmaps, counted in 4x4 blocks), so a tiny CLIP teacher can be
pretrained on them and then evaluated zero-shot on the real ``sklearn.datasets.load_digits()``.
"""

from zmdist.synth.digits import DIGIT_CLASSNAMES, digits_array_to_image, render_digit_corpus

__all__ = ["DIGIT_CLASSNAMES", "digits_array_to_image", "render_digit_corpus"]
