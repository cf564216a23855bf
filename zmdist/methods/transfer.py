"""Transferability scores from zero-shot embeddings, and the line that turns a score into a prediction.

IIMM (Niss, Vogt-Lowell, Tsiligkaridis, "Zero-Shot Embeddings Inform Learning and Forgetting with
Vision-Language Encoders", arXiv 2407.15731): with L2-normalised image embeddings ``x_i`` (labels ``y_i``,
``N`` images) and one L2-normalised text embedding ``t_c`` per class (``C`` classes),

    inter = 1/N * sum_i  1/(C-1) * sum_{c != y_i} x_i . t_c           (similarity to the WRONG class texts)
    intra = 2/(N(N-1)) * sum_{i<j} x_i . x_j                          (mean pairwise image similarity)
    IIMM  = (inter + intra) / 2

Why it streams: with ``s = sum_i x_i`` and ``q = sum_i ||x_i||^2``, ``sum_{i<j} x_i . x_j = (||s||^2 - q) / 2``,
so ``intra = (||s||^2 - q) / (N(N-1))`` (``q = N`` for unit rows) needs no N x N matrix; and with the
per-class sums ``S_c = sum_{y_i=c} x_i``, ``inter = 1/(N(C-1)) * sum_c S_c . (T - t_c)`` where ``T = sum_c t_c``.
Every quantity is a sum over images, so per-shard statistics (:class:`TransferStats`) add up exactly
(float64) across shards and ranks, in any order. ``N = 1`` has no pair (intra undefined: an error); a
class with one image is no special case (its image counts in the pairs and in ``inter`` like any other).

The baselines need the same sums plus the second moment ``M = sum_i x_i x_i^T`` (d x d):

- H-score (Bao, Li, Huang, Zhang, Zhang, Huang, Wang, "An Information-theoretic Approach to
  Transferability in Task Transfer Learning", ICIP 2019): ``tr(cov(f)^+ cov(E[f | y]))``.
- LogME (You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
  ICML 2021): the maximised log marginal likelihood per sample of a Bayesian linear regression from the
  features to each class's one-hot column, averaged over classes.
- GBC (Pandy et al., CVPR 2022): minus the summed Bhattacharyya coefficients of per-class diagonal
  Gaussians (needs the per-class sums of squares, O(C d)).

All scores see L2-normalised embeddings (zmdist's embedding files are normalised already; the functions
normalise again so that any array can be passed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _float64(values: ArrayLike) -> torch.Tensor:
    """A float64 COPY (never a view of the caller's data: :func:`normalise_rows` scales it in place)."""
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64, copy=True)
    return torch.from_numpy(np.array(values, dtype=np.float64))


def normalise_rows(emb: ArrayLike, what: str = "embeddings") -> torch.Tensor:
    """Rows scaled to unit L2 norm in float64 (a copy, scaled in place); an all-zero or non-finite row has
    no direction, so it is an error."""
    x = _float64(emb)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a (rows, dim) matrix, got shape {tuple(x.shape)}")
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    unusable = (norms == 0) | ~torch.isfinite(norms)
    if bool(unusable.any()):
        bad = int(unusable.squeeze(1).nonzero()[0])
        raise ValueError(f"{what}: row {bad} is all zeros or not finite and cannot be L2-normalised")
    return x.div_(norms)


@dataclass
class TransferStats:
    """Additive sufficient statistics of a task's normalised image embeddings (one shard, or many merged).

    ``counts[c]`` images of class ``c``, ``class_sums[c]`` the sum of their embeddings, ``sq_norms`` the sum
    of squared row norms (``N`` up to rounding), and optionally, for the baselines, ``second_moment`` =
    ``sum x x^T`` (O(d^2) memory, O(N d^2) time: ``second_moment=False`` keeps IIMM at O(N d)) and
    ``class_squares[c]`` = the per-dimension sum of squares of class ``c``'s embeddings (GBC)."""

    counts: torch.Tensor          # (C,) float64 (float so one all-reduce carries everything)
    class_sums: torch.Tensor      # (C, d) float64
    sq_norms: torch.Tensor        # () float64
    second_moment: torch.Tensor | None = None  # (d, d) float64
    class_squares: torch.Tensor | None = None  # (C, d) float64, kept with second_moment

    @classmethod
    def zeros(cls, num_classes: int, dim: int, second_moment: bool = True) -> "TransferStats":
        return cls(torch.zeros(num_classes, dtype=torch.float64), torch.zeros(num_classes, dim, dtype=torch.float64),
                   torch.zeros((), dtype=torch.float64),
                   torch.zeros(dim, dim, dtype=torch.float64) if second_moment else None,
                   torch.zeros(num_classes, dim, dtype=torch.float64) if second_moment else None)

    @classmethod
    def from_batch(cls, image_emb: ArrayLike, labels: ArrayLike, num_classes: int,
                   second_moment: bool = True, block: int = 8192) -> "TransferStats":
        """Statistics of one batch (a shard); labels must be ground-truth classes in ``[0, num_classes)``.

        Rows are converted to float64 and normalised ``block`` at a time in one reused buffer: memory is
        O(block * d) whatever the batch size, and no 100 MB temporaries are allocated per shard (their
        page faults cost more than the arithmetic)."""
        src = image_emb.detach().cpu() if isinstance(image_emb, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(image_emb))
        if src.ndim != 2:
            raise ValueError(f"image_emb: expected a (rows, dim) matrix, got shape {tuple(src.shape)}")
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long()
        n, dim = src.shape
        if y.shape != (n,):
            raise ValueError(f"labels: expected {n} labels (one per image), got shape {tuple(y.shape)}")
        if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels: values must lie in [0, {num_classes}) (ground-truth classes; -1 = unlabelled "
                             f"is not allowed), got min {int(y.min())}, max {int(y.max())}")
        stats = cls.zeros(num_classes, dim, second_moment)
        stats.counts += torch.bincount(y, minlength=num_classes).to(torch.float64)
        buffer = torch.empty(min(block, n), dim, dtype=torch.float64)
        for begin in range(0, n, block):
            part = buffer[: min(block, n - begin)]
            part.copy_(src[begin : begin + len(part)])
            norms = torch.linalg.vector_norm(part, dim=1, keepdim=True)
            unusable = (norms == 0) | ~torch.isfinite(norms)
            if bool(unusable.any()):
                bad = begin + int(unusable.squeeze(1).nonzero()[0])
                raise ValueError(f"image_emb: row {bad} is all zeros or not finite and cannot be L2-normalised")
            part.div_(norms)
            stats.class_sums.index_add_(0, y[begin : begin + len(part)], part)
            stats.sq_norms += torch.linalg.vector_norm(part, dim=1).square().sum()
            if stats.second_moment is not None:
                stats.second_moment.addmm_(part.T, part)
                stats.class_squares.index_add_(0, y[begin : begin + len(part)], part.square())
        return stats

    def __add__(self, other: "TransferStats") -> "TransferStats":
        if self.class_sums.shape != other.class_sums.shape:
            raise ValueError(f"cannot merge statistics of shape {tuple(self.class_sums.shape)} and "
                             f"{tuple(other.class_sums.shape)} (other class count or embedding size)")
        if (self.second_moment is None) != (other.second_moment is None):
            raise ValueError("cannot merge statistics with and without the second moment")
        if self.second_moment is None:
            moment = squares = None
        else:
            moment, squares = self.second_moment + other.second_moment, self.class_squares + other.class_squares
        return TransferStats(self.counts + other.counts, self.class_sums + other.class_sums,
                             self.sq_norms + other.sq_norms, moment, squares)

    # -- one flat float64 vector, so a single all-reduce (SUM) merges every rank's statistics ---------
    def to_vector(self) -> torch.Tensor:
        parts = [self.counts, self.class_sums.flatten(), self.sq_norms.reshape(1)]
        if self.second_moment is not None:
            parts += [self.second_moment.flatten(), self.class_squares.flatten()]
        return torch.cat(parts)

    def from_vector(self, vector: torch.Tensor) -> "TransferStats":
        """Statistics shaped like ``self`` read back from ``vector`` (as ``to_vector`` laid them out)."""
        c, d = self.class_sums.shape
        moment = squares = None
        if self.second_moment is not None:
            start = c + c * d + 1
            moment = vector[start:start + d * d].reshape(d, d).clone()
            squares = vector[start + d * d:].reshape(c, d).clone()
        return TransferStats(vector[:c].clone(), vector[c:c + c * d].reshape(c, d).clone(),
                             vector[c + c * d].clone(), moment, squares)

    @property
    def num_images(self) -> int:
        return int(round(float(self.counts.sum())))

    def _need_moment(self, score: str) -> torch.Tensor:
        if self.second_moment is None:
            raise ValueError(f"{score} needs the second moment: build the statistics with second_moment=True")
        return self.second_moment


@dataclass(frozen=True)
class IIMMResult:
    iimm: float
    inter: float
    intra: float


def iimm_from_stats(stats: TransferStats, text_emb: ArrayLike) -> IIMMResult:
    """IIMM from merged statistics and the (C, d) class text embeddings (normalised here)."""
    t = normalise_rows(text_emb, "text_emb")
    num_classes, dim = stats.class_sums.shape
    if t.shape != (num_classes, dim):
        raise ValueError(f"text_emb: expected ({num_classes}, {dim}) (one text embedding per class), got {tuple(t.shape)}")
    if num_classes < 2:
        raise ValueError("IIMM needs at least 2 classes: the inter-modal term averages over the incorrect classes")
    n = float(stats.counts.sum())
    if n < 2:
        raise ValueError(f"IIMM needs at least 2 images (the intra-modal term is a mean over pairs i<j), got {n:.0f}")
    others = t.sum(dim=0, keepdim=True) - t                       # row c: sum of the texts of every class but c
    inter = float((stats.class_sums * others).sum()) / (n * (num_classes - 1))
    total = stats.class_sums.sum(dim=0)
    intra = float((total @ total - stats.sq_norms) / (n * (n - 1)))
    return IIMMResult((inter + intra) / 2, inter, intra)


def iimm(image_emb: ArrayLike, text_emb: ArrayLike, labels: ArrayLike) -> tuple[float, float, float]:
    """``(iimm, inter, intra)`` of one task: image embeddings (N, d), class text embeddings (C, d), labels (N,).

    NumPy arrays or tensors; both embeddings are L2-normalised here. Same result as merging per-shard
    :class:`TransferStats` (which is how ``zmdist transfer score`` computes it)."""
    t = _float64(text_emb)
    stats = TransferStats.from_batch(image_emb, labels, t.shape[0], second_moment=False)
    result = iimm_from_stats(stats, t)
    return result.iimm, result.inter, result.intra


def _psd_pinv(matrix: torch.Tensor, rtol: float) -> torch.Tensor:
    """Pseudo-inverse of a symmetric PSD matrix, dropping eigenvalues below ``rtol`` x the largest (rank-
    deficient covariances are the rule for normalised embeddings, which lie on a sphere)."""
    values, vectors = torch.linalg.eigh(matrix)
    keep = values > rtol * values.max().clamp_min(0)
    inv = torch.where(keep, 1.0 / torch.where(keep, values, torch.ones_like(values)), torch.zeros_like(values))
    return (vectors * inv) @ vectors.T


def h_score_from_stats(stats: TransferStats, rtol: float = 1e-10) -> float:
    """H-score (Bao et al., ICIP 2019): ``tr(cov(f)^+ cov(E[f|y]))``, larger = more transferable.

    ``cov(f)`` is the (population) feature covariance ``M/N - mu mu^T``; ``cov(E[f|y])`` the covariance of
    each sample's class mean, ``sum_c n_c/N (mu_c - mu)(mu_c - mu)^T``. The inverse is a pseudo-inverse
    (eigenvalues below ``rtol`` x the largest dropped), as in the authors' use of ``pinv``."""
    moment = stats._need_moment("H-score")
    n = float(stats.counts.sum())
    if n < 2:
        raise ValueError("H-score needs at least 2 images")
    mean = stats.class_sums.sum(dim=0) / n
    cov_f = moment / n - torch.outer(mean, mean)
    present = stats.counts > 0
    sums, counts = stats.class_sums[present], stats.counts[present]
    cov_g = (sums.T / counts) @ sums / n - torch.outer(mean, mean)
    return float(torch.trace(_psd_pinv(cov_f, rtol) @ cov_g))


def h_score(image_emb: ArrayLike, labels: ArrayLike, num_classes: int | None = None) -> float:
    """H-score of normalised ``image_emb`` (N, d) with ``labels`` (N,); see :func:`h_score_from_stats`."""
    y = np.asarray(labels)
    stats = TransferStats.from_batch(image_emb, y, num_classes or int(y.max()) + 1)
    return h_score_from_stats(stats)


def logme_from_stats(stats: TransferStats, tol: float = 1e-8, max_iter: int = 1000) -> float:
    """LogME (You et al., ICML 2021): per class ``c`` (target ``y`` = one-hot column of ``c``), the Bayesian
    linear model ``y ~ N(F w, 1/beta)``, ``w ~ N(0, 1/alpha)`` has log evidence

        L = N/2 log beta + D/2 log alpha - N/2 log 2pi - beta/2 ||F m - y||^2 - alpha/2 ||m||^2 - 1/2 log|A|

    with ``A = alpha I + beta F^T F`` and ``m = beta A^-1 F^T y``; alpha and beta are maximised by the
    paper's fixed point ``gamma = sum beta s_k / (alpha + beta s_k)``, ``alpha = gamma / ||m||^2``,
    ``beta = (N - gamma) / ||F m - y||^2`` (``s_k`` the eigenvalues of ``F^T F``). LogME = mean over classes of
    ``L / N``; larger = more transferable.

    Everything comes from the streamed sums (``F^T F = M``, ``F^T y = S_c``, ``y^T y = n_c``), in the
    eigenbasis of ``M``. Clean choices: iterate until alpha and beta change by less than ``tol`` (relative),
    where the authors' code stops after at most 11 steps (at 1e-2 relative change); and average over the
    classes that have images in the scored split (a class without any has an all-zero target, whose
    evidence grows without bound as alpha and beta do: it would swamp the mean)."""
    moment = stats._need_moment("LogME")
    n = float(stats.counts.sum())
    dim = moment.shape[0]
    values, vectors = torch.linalg.eigh(moment)
    s = values.clamp_min(0)
    evidences = []
    for c in torch.nonzero(stats.counts > 0).flatten().tolist():
        z = vectors.T @ stats.class_sums[c]               # F^T y in the eigenbasis
        yy = float(stats.counts[c])
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            m = beta * z / (alpha + beta * s)
            m2 = float(m @ m)
            residual = max(float((s * m * m).sum() - 2 * (m @ z) + yy), 1e-300)
            gamma = float((beta * s / (alpha + beta * s)).sum())
            new_alpha, new_beta = gamma / max(m2, 1e-300), (n - gamma) / residual
            done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        m = beta * z / (alpha + beta * s)
        residual = float((s * m * m).sum() - 2 * (m @ z) + yy)
        evidence = (n / 2 * math.log(beta) + dim / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                    - beta / 2 * residual - alpha / 2 * float(m @ m) - 0.5 * float(torch.log(alpha + beta * s).sum()))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def logme(image_emb: ArrayLike, labels: ArrayLike, num_classes: int | None = None) -> float:
    """LogME of normalised ``image_emb`` (N, d) with ``labels`` (N,); see :func:`logme_from_stats`."""
    y = np.asarray(labels)
    stats = TransferStats.from_batch(image_emb, y, num_classes or int(y.max()) + 1)
    return logme_from_stats(stats)


def gbc_from_stats(stats: TransferStats, var_floor: float = 1e-12) -> float:
    """GBC (Pandy, Agostinelli, Uijlings, Ferrari, Mensink, "Transferability Estimation using Bhattacharyya
    Class Separability", CVPR 2022): each class a Gaussian with diagonal covariance; for every ordered
    pair of classes ``i != j`` the Bhattacharyya coefficient ``BC = exp(-D_B)`` with

        D_B = 1/8 sum_k (mu_ik - mu_jk)^2 / s_k + 1/2 sum_k [ln s_k - (ln s_ik + ln s_jk) / 2],  s = (s_i + s_j) / 2

    and ``GBC = -sum_{i != j} BC_ij``: 0 for perfectly separated classes, ``-C(C-1)`` for identical ones;
    larger = more transferable. Variances are per-class population variances from the streamed sums,
    floored at ``var_floor``. Differences from the paper, both for streaming: no PCA to 64 dimensions
    first (it needs a second pass), and classes without images are left out. Every class with images
    needs at least 2 (a variance), else this is an error."""
    squares = stats.class_squares
    if squares is None:
        raise ValueError("GBC needs the per-class squares: build the statistics with second_moment=True")
    present = stats.counts > 0
    counts = stats.counts[present]
    if bool((counts < 2).any()):
        raise ValueError("GBC needs at least 2 images in every class of the split (a variance per class); "
                         f"counts: {stats.counts.long().tolist()}. Drop gbc from baselines for this task")
    mean = stats.class_sums[present] / counts[:, None]
    var = (squares[present] / counts[:, None] - mean.square()).clamp_min(var_floor)
    log_var = var.log()
    total = 0.0
    for i in range(len(mean)):
        s = (var[i] + var) / 2
        distance = (mean[i] - mean).square().div(s).sum(1) / 8 + 0.5 * (s.log() - (log_var[i] + log_var) / 2).sum(1)
        coefficients = torch.exp(-distance)
        total += float(coefficients.sum() - coefficients[i])
    return -total


def gbc(image_emb: ArrayLike, labels: ArrayLike, num_classes: int | None = None) -> float:
    """GBC of normalised ``image_emb`` (N, d) with ``labels`` (N,); see :func:`gbc_from_stats`."""
    y = np.asarray(labels)
    stats = TransferStats.from_batch(image_emb, y, num_classes or int(y.max()) + 1)
    return gbc_from_stats(stats)


# --------------------------------------------------------------------------------------------------
# Score -> gain / forgetting: ordinary least squares on a handful of measured tasks


@dataclass(frozen=True)
class LineFit:
    """``y = slope * x + intercept`` fitted by least squares on ``n`` tasks, with what an interval needs."""

    slope: float
    intercept: float
    r2: float            # 1 - SS_res / SS_tot
    pearson_r: float
    loo_rmse: float      # root mean squared leave-one-out prediction error
    loo_mae: float
    residual_std: float  # sqrt(SS_res / (n - 2))
    n: int
    x_mean: float
    sxx: float           # sum (x_i - x_mean)^2

    def predict(self, x: float, level: float = 0.95) -> tuple[float, float, float]:
        """(prediction, low, high): the ``level`` prediction interval of ONE new task's value at ``x``,
        ``yhat +- t_{n-2} * s * sqrt(1 + 1/n + (x - x_mean)^2 / Sxx)`` (wider than the mean's confidence
        interval: it includes the new task's own scatter around the line)."""
        from scipy.stats import t as student_t

        if not 0 < level < 1:
            raise ValueError(f"level: must lie in (0, 1), got {level}")
        yhat = self.slope * x + self.intercept
        half = float(student_t.ppf((1 + level) / 2, self.n - 2)) * self.residual_std * math.sqrt(
            1 + 1 / self.n + (x - self.x_mean) ** 2 / self.sxx)
        return yhat, yhat - half, yhat + half


def fit_line(x: ArrayLike, y: ArrayLike) -> LineFit:
    """Least-squares line of ``y`` on ``x`` with R^2 and the exact leave-one-out errors.

    The leave-one-out residual of point ``i`` is ``e_i / (1 - h_ii)`` with the leverage
    ``h_ii = 1/n + (x_i - x_mean)^2 / Sxx`` (the same numbers as refitting n times without point i).
    Needs 3 or more tasks (an interval has n - 2 degrees of freedom), x not all equal, and y not all equal:
    a constant target has no variance to explain (R^2 is 0/0) and zero residuals, so its interval would have
    zero width, a certainty the few measured tasks cannot give. (Equality is tested on the values, not on
    ``Sxx``/``Syy``: the mean of equal floats can differ from them by rounding, so ``Syy`` need not be 0.)"""
    xs, ys = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"fit_line: {xs.size} scores but {ys.size} targets")
    n = xs.size
    if n < 3:
        raise ValueError(f"fit_line: needs at least 3 tasks (the interval has n - 2 degrees of freedom), got {n}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ValueError("fit_line: scores and targets must be finite numbers")
    if np.ptp(xs) == 0:
        raise ValueError("fit_line: every task has the same score: a line cannot be fitted")
    if np.ptp(ys) == 0:
        raise ValueError(f"fit_line: every task has the same target value ({ys[0]:g}): there is nothing to predict "
                         "(R^2 undefined, a zero-width interval); drop this target or measure tasks where it differs")
    x_mean, y_mean = xs.mean(), ys.mean()
    dx, dy = xs - x_mean, ys - y_mean
    sxx, syy = float(dx @ dx), float(dy @ dy)
    slope = float(dx @ dy) / sxx
    intercept = float(y_mean - slope * x_mean)
    residuals = ys - (slope * xs + intercept)
    ss_res = float(residuals @ residuals)
    leverage = 1 / n + dx ** 2 / sxx
    if np.any(leverage >= 1 - 1e-12):
        raise ValueError("fit_line: leaving one task out leaves all the others at the same score: "
                         "leave-one-out errors are undefined; measure tasks with more varied scores")
    loo = residuals / (1 - leverage)
    r2 = 1 - ss_res / syy
    pearson = float(dx @ dy) / math.sqrt(sxx * syy)
    return LineFit(slope=slope, intercept=intercept, r2=float(r2), pearson_r=pearson,
                   loo_rmse=float(np.sqrt(np.mean(loo ** 2))), loo_mae=float(np.mean(np.abs(loo))),
                   residual_std=math.sqrt(ss_res / (n - 2)), n=n, x_mean=float(x_mean), sxx=sxx)


def extrapolated(x: float, fitted: ArrayLike, margin: float = 0.1) -> bool:
    """Whether a new task's score ``x`` lies more than ``margin`` x the fitted scores' range outside that range.
    The line (and its interval, which assumes the line holds) is only evidence where tasks were measured."""
    xs = np.asarray(fitted, dtype=np.float64)
    low, high = float(xs.min()), float(xs.max())
    slack = margin * (high - low)
    return not low - slack <= x <= high + slack
