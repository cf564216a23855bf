"""The pure transferability functions (zmdist.methods.transfer) against brute force and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zmdist.methods.transfer import (
    TransferStats,
    fit_line,
    gbc,
    gbc_from_stats,
    h_score,
    h_score_from_stats,
    iimm,
    iimm_from_stats,
    logme,
    logme_from_stats,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_iimm(image: np.ndarray, text: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """The definition, literally: an N x N similarity matrix and a loop over every image's wrong classes."""
    x, t = _unit(image.astype(np.float64)), _unit(text.astype(np.float64))
    sims = x @ x.T
    i, j = np.triu_indices(len(x), k=1)
    intra = sims[i, j].mean()
    per_image = []
    for row, label in zip(x, labels):
        per_image.append(np.mean([row @ t[c] for c in range(len(t)) if c != label]))
    inter = float(np.mean(per_image))
    return (inter + intra) / 2, inter, float(intra)


def _task(n: int = 300, d: int = 24, c: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d))
    labels = rng.integers(0, c, n)
    image = centres[labels] + rng.normal(scale=1.5, size=(n, d))
    text = centres + rng.normal(scale=0.5, size=(c, d))
    return image, text, labels


def test_iimm_equals_brute_force_on_random_embeddings():
    """Kills: intra over all ordered pairs or including i == j, inter including the correct class,
    a missing / 2, or the text embeddings not normalised (the raw arrays here are not unit rows)."""
    image, text, labels = _task()
    got = iimm(image, text, labels)
    want = brute_iimm(image, text, labels)
    assert np.allclose(got, want, rtol=0, atol=1e-6)
    assert got[0] == pytest.approx((got[1] + got[2]) / 2, abs=1e-12)
    # tensors (float16 like the embedding files) give the same numbers as the float64 arrays they round to
    half = torch.from_numpy(image).half()
    assert np.allclose(iimm(half, torch.from_numpy(text), torch.from_numpy(labels)),
                       brute_iimm(half.double().numpy(), text, labels), atol=1e-6)


def test_iimm_hand_computed():
    """Two classes on the unit circle: images (1,0) [class 0], (0,1) [class 1]; texts (1,0), (0,1).
    Each image's only wrong text is orthogonal to it: inter = 0; the only pair is orthogonal: intra = 0.
    Swapping the labels makes each image's wrong text its own direction: inter = 1, IIMM = 0.5."""
    image, text = np.array([[1.0, 0.0], [0.0, 3.0]]), np.array([[2.0, 0.0], [0.0, 1.0]])
    assert iimm(image, text, [0, 1]) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    assert iimm(image, text, [1, 0]) == pytest.approx((0.5, 1.0, 0.0), abs=1e-12)
    # three images at 0, 90 and 180 degrees: pairs 0, -1, 0 -> intra = -1/3
    three = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert iimm(three, text, [0, 1, 0])[2] == pytest.approx(-1 / 3, abs=1e-12)


def test_shard_statistics_merge_exactly_in_any_order():
    """Kills: a merge that averages instead of summing, or per-shard intra terms averaged (wrong: pairs
    across shards count too), or a stats vector layout that scrambles fields on the way back."""
    image, text, labels = _task(n=257, seed=1)
    whole = iimm(image, text, labels)
    cuts = [0, 1, 40, 41, 130, 200, 257]  # includes one-image shards
    shards = [TransferStats.from_batch(image[a:b], labels[a:b], len(text)) for a, b in zip(cuts, cuts[1:])]
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 4, 2]):
        merged = shards[order[0]]
        for k in order[1:]:
            merged = merged + shards[k]
        result = iimm_from_stats(merged, text)
        assert (result.iimm, result.inter, result.intra) == pytest.approx(whole, abs=1e-12)
        assert h_score_from_stats(merged) == pytest.approx(h_score(image, labels, len(text)), rel=1e-9)
        assert gbc_from_stats(merged) == pytest.approx(gbc(image, labels, len(text)), rel=1e-9)
    back = merged.from_vector(merged.to_vector())
    for name in ("counts", "class_sums", "sq_norms", "second_moment", "class_squares"):
        assert torch.equal(getattr(back, name), getattr(merged, name))


def test_a_class_with_one_image_and_empty_classes():
    """A class with exactly one image (and a class with none) is scored like the definition says: the
    single image joins the pairs and the inter term; the empty class is still a wrong class for others."""
    image, text, labels = _task(n=60, c=5, seed=2)
    labels = labels % 3  # classes 3, 4 empty
    labels[7] = 3        # class 3 has exactly one image
    assert np.allclose(iimm(image, text, labels), brute_iimm(image, text, labels), atol=1e-9)
    stats = TransferStats.from_batch(image, labels, 5)
    # the baselines ignore the classes without images: the same as the task without classes 4 (empty)
    assert h_score_from_stats(stats) == pytest.approx(h_score(image, labels, 4), rel=1e-9)
    assert logme_from_stats(stats) == pytest.approx(logme(image, labels, 4), rel=1e-9)
    assert logme_from_stats(stats) == pytest.approx(brute_logme(image, labels, 4), abs=1e-6)


def test_bad_inputs_are_refused_with_a_reason():
    image, text, labels = _task(n=10, c=3)
    with pytest.raises(ValueError, match="at least 2 images"):
        iimm(image[:1], text, labels[:1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        iimm(image, text, np.where(labels == 0, -1, labels))
    with pytest.raises(ValueError, match="row 4 is all zeros or not finite"):
        bad = image.copy()
        bad[4] = 0
        iimm(bad, text, labels)
    with pytest.raises(ValueError, match="row 6 is all zeros or not finite"):
        bad = image.copy()
        bad[6, 2] = np.nan
        iimm(bad, text, labels)
    with pytest.raises(ValueError, match="at least 2 classes"):
        iimm(image, text[:1], np.zeros(10, int))
    with pytest.raises(ValueError, match="one text embedding per class"):
        iimm_from_stats(TransferStats.from_batch(image, labels, 3), text[:, :5])
    with pytest.raises(ValueError, match="second moment"):
        h_score_from_stats(TransferStats.from_batch(image, labels, 3, second_moment=False))


def test_h_score_hand_computed():
    """Class 0 = {(1,0), (0,1)}, class 1 = {(-1,0), (0,1)}: mean (0, 1/2), cov(f) = diag(1/2, 1/4), class
    means deviate by (+-1/2, 0): cov(E[f|y]) = diag(1/4, 0), so H = (1/4)/(1/2) = 0.5. Perfectly separated
    points (each class one direction) give H = rank of cov(f) = 1.
    Kills: an uncentred covariance, class means not weighted by class frequency, or inv instead of pinv
    (the second case has a singular covariance)."""
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 1.0]])
    assert h_score(x, [0, 0, 1, 1]) == pytest.approx(0.5, abs=1e-12)
    assert h_score(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), [0, 0, 1, 1]) == pytest.approx(1.0, abs=1e-9)
    # unequal class sizes: 3 in class 0 at (1,0), 1 in class 1 at (0,1): still perfectly separated -> 1
    assert h_score(np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]]), [0, 0, 0, 1]) == pytest.approx(1.0, abs=1e-9)


def _evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """LogME's log evidence per sample, straight from the paper's formula with explicit inverses."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    return (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - 0.5 * np.linalg.slogdet(a)[1]) / n


def brute_logme(f: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """An independent LogME: the paper's fixed point on the raw feature matrix, explicit inverse each step,
    then the maximum checked to be stationary (finite differences in log alpha, log beta)."""
    f = _unit(f.astype(np.float64))
    n, d = f.shape
    s = np.linalg.eigvalsh(f.T @ f)
    values = []
    for c in range(num_classes):
        y = (labels == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(2000):
            a = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a, f.T @ y)
            gamma = np.sum(beta * s / (alpha + beta * s))
            alpha, beta = gamma / (m @ m), (n - gamma) / np.sum((f @ m - y) ** 2)
        h = 1e-4
        for da, db in ((h, 0), (0, h)):
            up = _evidence(f, y, alpha * np.exp(da), beta * np.exp(db))
            down = _evidence(f, y, alpha * np.exp(-da), beta * np.exp(-db))
            assert abs(up - down) / (2 * h) < 1e-5, "the fixed point is not a maximum of the evidence"
        values.append(_evidence(f, y, alpha, beta))
    return float(np.mean(values))


def test_logme_equals_an_independent_brute_force():
    """Kills: a wrong sign or factor in the evidence, the fixed point updating alpha with the wrong
    norm, or F^T y taken from the wrong class row (each is off by far more than 1e-6)."""
    image, _, labels = _task(n=120, d=8, c=3, seed=3)
    assert logme(image, labels, 3) == pytest.approx(brute_logme(image, labels, 3), abs=1e-6)


def test_baselines_rank_a_separable_task_above_a_random_one():
    image, _, labels = _task(n=400, d=16, c=4, seed=4)
    noise = np.random.default_rng(5).normal(size=image.shape)
    assert h_score(image, labels) > h_score(noise, labels)
    assert logme(image, labels) > logme(noise, labels)


def brute_gbc(image: np.ndarray, labels: np.ndarray) -> float:
    """GBC literally: per-class np.mean / np.var, the Bhattacharyya distance of each ordered pair."""
    x = _unit(image.astype(np.float64))
    classes = np.unique(labels)
    mu = {c: x[labels == c].mean(0) for c in classes}
    var = {c: x[labels == c].var(0) for c in classes}
    total = 0.0
    for i in classes:
        for j in classes:
            if i != j:
                s = (var[i] + var[j]) / 2
                d = np.sum((mu[i] - mu[j]) ** 2 / s) / 8 + 0.5 * np.sum(np.log(s) - 0.5 * (np.log(var[i]) + np.log(var[j])))
                total += np.exp(-d)
    return -total


def test_gbc_equals_brute_force_and_hand_values():
    """Two classes drawn from the same points have D_B = 0, BC = 1 per ordered pair: GBC = -2 exactly;
    far-apart classes give ~0. Kills: a missing 1/8, the log-determinant term's sign, or sums over
    unordered pairs only (would give -1)."""
    image, _, labels = _task(n=200, d=6, c=4, seed=7)
    assert gbc(image, labels) == pytest.approx(brute_gbc(image, labels), rel=1e-9)
    same = np.random.default_rng(8).normal(size=(10, 3))
    assert gbc(np.concatenate([same, same]), [0] * 10 + [1] * 10) == pytest.approx(-2.0, abs=1e-9)
    far = np.concatenate([np.eye(3)[0] + 0.01 * same, np.eye(3)[1] + 0.01 * same])
    assert gbc(far, [0] * 10 + [1] * 10) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 images in every class"):
        gbc(image[:5], [0, 0, 1, 1, 2])


def test_fit_line_hand_computed():
    """x = 0..3, y = 1, 3, 2, 5: Sxx = 5, Sxy = 5.5, slope = intercept = 1.1, residuals -0.1, 0.8, -1.3, 0.6,
    SS_res = 2.7, SS_tot = 8.75, R^2 = 1 - 2.7/8.75; s = sqrt(2.7/2); the 95% prediction interval at
    x = 1.5 is 2.75 +- t(0.975, 2) s sqrt(1 + 1/4), t = 4.302653.
    Kills: R^2 from the correlation of the wrong pair, n - 1 instead of n - 2, a confidence (not
    prediction) interval (drops the 1 under the root)."""
    fit = fit_line([0, 1, 2, 3], [1, 3, 2, 5])
    assert (fit.slope, fit.intercept) == pytest.approx((1.1, 1.1), abs=1e-12)
    assert fit.r2 == pytest.approx(1 - 2.7 / 8.75, abs=1e-12)
    assert fit.pearson_r ** 2 == pytest.approx(fit.r2, abs=1e-12)
    yhat, low, high = fit.predict(1.5)
    half = 4.302652729911275 * math.sqrt(2.7 / 2) * math.sqrt(1.25)
    assert (yhat, low, high) == pytest.approx((2.75, 2.75 - half, 2.75 + half), abs=1e-9)


def test_fit_line_leave_one_out_equals_refitting():
    """The closed-form LOO residual e_i / (1 - h_ii) equals refitting without each task.
    Kills: leverage without the 1/n term, or plain residuals reported as LOO errors."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=9)
    y = 2 * x + rng.normal(scale=0.3, size=9)
    errors = []
    for i in range(9):
        keep = np.arange(9) != i
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        errors.append(y[i] - (slope * x[i] + intercept))
    fit = fit_line(x, y)
    assert fit.loo_rmse == pytest.approx(float(np.sqrt(np.mean(np.square(errors)))), rel=1e-10)
    assert fit.loo_mae == pytest.approx(float(np.mean(np.abs(errors))), rel=1e-10)


def test_fit_line_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="at least 3 tasks"):
        fit_line([0, 1], [0, 1])
    with pytest.raises(ValueError, match="same score"):
        fit_line([1, 1, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="leave-one-out"):
        fit_line([0, 0, 0, 5], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="level"):
        fit_line([0, 1, 2], [0, 1, 3]).predict(1.0, level=1.5)
