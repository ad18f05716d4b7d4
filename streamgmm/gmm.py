"""Online Gaussian mixture model: stepwise EM over normalised sufficient statistics.

The model keeps, per component k, the expected sufficient statistics of the
stream in a numerically stable centred form: the weight ``s0_k = E[gamma_k]``,
the mean ``mu_k`` and the scatter ``C_k`` (covariance about mu_k, before the
regularisation). A mini-batch B is folded in as in Cappé & Moulines (2009):

    s <- (1 - eta) s + eta s_B

where ``s_B`` are the batch's statistics under the responsibilities of the
model as it was before the batch. The step ``eta`` is the compounded per-event
step ``eta_i = max(eta_min, (i + t0) ** -alpha)`` over the events i of the
batch, so the result does not depend on how the stream is cut into batches;
with ``alpha = 1`` the statistics are the exact running average of
everything seen. ``half_life`` sets ``eta_min`` so that an event's influence
halves after that many events: a forgetting model for drifting streams.

The M-step is closed form: ``w_k = s0_k``, ``Sigma_k = C_k + reg_covar I``.
Combining centred statistics (the parallel-variance formula) avoids the
cancellation of ``E[x x^T] - mu mu^T`` on large-magnitude data.

Layout follows scikit-learn's ``sklearn/mixture/_gaussian_mixture.py``: input
checks, per-covariance-type estimators chosen by a dict, probability
estimators, initialisation, then the estimator.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import validate_data

from .checkpoint import load_state, save_state
from .defaults import MIN_WARMUP, MODEL_DEFAULTS

COVARIANCE_TYPES = ("full", "diag", "spherical")
MAX_ABS_INPUT = 1e100
_LOG_2PI = math.log(2.0 * math.pi)
_TINY = np.finfo(np.float64).tiny
_SCAN_WINDOW = 64  # rows of the warm-up's first scan window after a flag (it doubles after)
#: The warm-up KDE's kernel width, in running standard deviations of each field. Chosen
#: on the 24 labelled sets of benchmarks/trust.py (benchmarks/warmup_density.py): the
#: widths 0.65 to 0.85 leave no set with under 15% anomalies more than 0.1 below
#: HalfSpaceTrees (narrower ones fail vertebral, wider ones wine); 0.7 has the best
#: mean within them. Silverman's rule, which narrows as events accumulate, failed
#: vertebral, with a pool mean lower by 0.001.
KDE_BANDWIDTH = 0.7
_MAX_BUFFER_PIECES = 16  # warm-up buffer pieces before they are joined into one


# ---------------------------------------------------------------------------
# input checks


def _check_values(X: np.ndarray) -> np.ndarray:
    """Refuse NaN, infinities and values too large to square, saying what to do."""
    if X.size and not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinity; drop or repair those rows first")
    if X.size and np.abs(X).max() > MAX_ABS_INPUT:
        raise ValueError(
            f"X has values beyond ±{MAX_ABS_INPUT:g}, which cannot be squared in float64; "
            "rescale the features (standardize=True does it)"
        )
    return X


def _make_rng(random_state: Any) -> np.random.Generator:
    """A fresh Generator from ``random_state``: None, an int, a Generator or a RandomState."""
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


# ---------------------------------------------------------------------------
# per-covariance-type estimators
#
# scatter: full (K, d, d), diag (K, d), spherical (K,)  -- per unit weight,
# about the component mean, without regularisation.


def _batch_scatter_full(X, resp, nk, means):
    scatter = np.empty((means.shape[0], X.shape[1], X.shape[1]))
    for k in range(means.shape[0]):
        diff = X - means[k]
        scatter[k] = (resp[:, k, None] * diff).T @ diff / nk[k]
    return scatter


def _batch_scatter_diag(X, resp, nk, means):
    # centred per component: E[x^2] - mu^2 loses every digit on data far from zero;
    # one buffer for all components (wide events: half the time of new arrays each)
    scatter = np.empty_like(means)
    diff = np.empty_like(X, dtype=np.result_type(X, means))
    for k in range(means.shape[0]):
        np.subtract(X, means[k], out=diff)
        np.multiply(diff, diff, out=diff)
        scatter[k] = resp[:, k] @ diff / nk[k]
    return scatter


def _batch_scatter_spherical(X, resp, nk, means):
    return _batch_scatter_diag(X, resp, nk, means).mean(axis=1)


def _outer_full(delta):
    return delta[:, :, None] * delta[:, None, :]


def _outer_diag(delta):
    return delta**2


def _outer_spherical(delta):
    return (delta**2).mean(axis=1)


def _add_reg_full(scatter, reg):
    d = scatter.shape[-1]
    cov = scatter + reg * np.eye(d)
    # a relative floor keeps the condition number finite whatever the scale
    scale = np.trace(cov, axis1=1, axis2=2) / d
    return cov + (1e-10 * scale)[:, None, None] * np.eye(d)


def _add_reg_diag(scatter, reg):
    return scatter + reg + 1e-10 * scatter.mean(axis=-1, keepdims=True)


def _add_reg_spherical(scatter, reg):
    return scatter + reg


def _floor_eigenvalues(cov: np.ndarray, floor: float) -> np.ndarray:
    eigvals, eigvecs = np.linalg.eigh((cov + cov.T) / 2)
    eigvals = np.maximum(eigvals, max(floor, 1e-12 * max(eigvals.max(), 0.0), _TINY))
    return (eigvecs * eigvals) @ eigvecs.T


def _precision_cholesky_full(cov, reg):
    d = cov.shape[-1]
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        for k in range(cov.shape[0]):
            try:
                np.linalg.cholesky(cov[k])
            except np.linalg.LinAlgError:
                cov[k] = _floor_eigenvalues(cov[k], reg)
        chol = np.linalg.cholesky(cov)
    # the inverse of a lower-triangular factor, transposed: upper-triangular precision factor
    return np.linalg.solve(chol, np.broadcast_to(np.eye(d), cov.shape)).transpose(0, 2, 1)


def _precision_cholesky_diag(cov, reg):
    return 1.0 / np.sqrt(np.maximum(cov, max(reg, _TINY)))


_precision_cholesky_spherical = _precision_cholesky_diag


def _log_det_full(prec_chol, d):
    return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)


def _log_det_diag(prec_chol, d):
    return np.log(prec_chol).sum(axis=1)


def _log_det_spherical(prec_chol, d):
    return d * np.log(prec_chol)


def _mahalanobis_sq_full(X, means, prec_chol):
    n_components, d, _ = prec_chol.shape
    # one GEMM for all components: (n, d) @ (d, K*d)
    stacked = prec_chol.transpose(1, 0, 2).reshape(d, n_components * d)
    shift = np.einsum("kd,kde->ke", means, prec_chol).reshape(-1)
    y = X @ stacked
    y -= shift
    y *= y
    return y.reshape(X.shape[0], n_components, d).sum(axis=2)


def _mahalanobis_sq_diag(X, means, prec_chol):
    # expanded as in scikit-learn (three GEMMs); the caller centres X and the means on
    # the components' centre, so the expansion does not cancel on data far from zero
    precisions = prec_chol**2
    return (
        (X * X) @ precisions.T
        - 2.0 * X @ (means * precisions).T
        + ((means**2) * precisions).sum(axis=1)
    ).clip(min=0.0)


def _mahalanobis_sq_spherical(X, means, prec_chol):
    precisions = prec_chol**2
    sq = (X * X).sum(axis=1)[:, None] - 2.0 * X @ means.T + (means**2).sum(axis=1)
    return (sq * precisions).clip(min=0.0)


# conditionals: per field j and component k, the Gaussian of x_j given the other fields,
# N(m_kj, 1 / Lambda_kjj) with Lambda_k the precision and
# m_kj = x_j - (Lambda_k (x - mu_k))_j / Lambda_kjj. Each returns, laid out (d, K, n)
# so that sums over the components add contiguous rows,
#   log_density : -log N(x_j | m_kj, 1 / Lambda_kjj), of shape (d, K, n),
#   cond_mean : m_kj, of shape (d, K, n), or (d, K, 1) when it does not depend on
#   the other fields (diag, spherical).


def _conditionals_full(X, means, prec_chol):
    n_components, d, _ = prec_chol.shape
    precision = prec_chol @ prec_chol.transpose(0, 2, 1)  # Lambda_k = P_k P_k^T
    lam = np.diagonal(precision, axis1=1, axis2=2).T  # (d, K)
    ratio = precision.transpose(1, 0, 2) / lam[:, :, None]  # Lambda_kjl / Lambda_kjj, (d, K, d)
    # both affine in x: sqrt(Lambda_kjj / 2) (x_j - m_kj), and m_kj itself; one small GEMM
    # per field (batched, no Python loop), each under BLAS's threading threshold
    affine = np.empty((d, 2, n_components, d + 1))
    affine[:, 0, :, :d] = ratio * np.sqrt(0.5 * lam)[:, :, None]
    affine[:, 1, :, :d] = np.eye(d)[:, None, :] - ratio
    shift = np.einsum("jkl,kl->jk", ratio, means)
    affine[:, 0, :, d] = -shift * np.sqrt(0.5 * lam)
    affine[:, 1, :, d] = shift
    ones = np.ones((1, X.shape[0]))
    both = affine.reshape(d, 2 * n_components, d + 1) @ np.vstack([X.T, ones])
    z, cond_mean = both[:, :n_components], both[:, n_components:]
    z *= z
    z += (0.5 * (_LOG_2PI - np.log(lam)))[:, :, None]
    return z, cond_mean


def _conditionals_diag(X, means, prec_chol):
    # 0.5 (x_j - mu_kj)^2 / s^2 + log s + 0.5 log 2 pi with s = sigma_kj, expanded in
    # powers of x_j: one small GEMM per field (the caller centres X and the means)
    half = 0.5 * prec_chol.T**2  # (d, K)
    mu = means.T
    coef = np.stack(
        [half * mu**2 - np.log(prec_chol.T) + 0.5 * _LOG_2PI, -2.0 * half * mu, half], axis=2
    )  # (d, K, 3)
    Xt = X.T
    powers = np.stack([np.ones_like(Xt), Xt, Xt * Xt], axis=1)  # (d, 3, n)
    return coef @ powers, mu[:, :, None]


def _conditionals_spherical(X, means, prec_chol):
    return _conditionals_diag(X, means, np.repeat(prec_chol[:, None], X.shape[1], axis=1))


def _variances_full(cov, d):
    return np.diagonal(cov, axis1=1, axis2=2).copy()


def _variances_diag(cov, d):
    return cov.copy()


def _variances_spherical(cov, d):
    return np.repeat(cov[:, None], d, axis=1)


def _n_params_full(d):
    return d * (d + 1) / 2


def _n_params_diag(d):
    return d


def _n_params_spherical(d):
    return 1


@dataclass(frozen=True)
class _CovarianceOps:
    # module-level functions only (no lambdas): a fitted model holds its ops and pickles
    batch_scatter: Any
    outer: Any
    add_reg: Any
    conditionals: Any  # the per-field conditional Gaussians, see above
    precision_cholesky: Any
    log_det: Any
    mahalanobis_sq: Any
    variances: Any
    n_params: Any  # (K, d) -> covariance parameters per component


_OPS = {
    "full": _CovarianceOps(
        _batch_scatter_full,
        _outer_full,
        _add_reg_full,
        _conditionals_full,
        _precision_cholesky_full,
        _log_det_full,
        _mahalanobis_sq_full,
        _variances_full,
        _n_params_full,
    ),
    "diag": _CovarianceOps(
        _batch_scatter_diag,
        _outer_diag,
        _add_reg_diag,
        _conditionals_diag,
        _precision_cholesky_diag,
        _log_det_diag,
        _mahalanobis_sq_diag,
        _variances_diag,
        _n_params_diag,
    ),
    "spherical": _CovarianceOps(
        _batch_scatter_spherical,
        _outer_spherical,
        _add_reg_spherical,
        _conditionals_spherical,
        _precision_cholesky_spherical,
        _log_det_spherical,
        _mahalanobis_sq_spherical,
        _variances_spherical,
        _n_params_spherical,
    ),
}


@functools.lru_cache(maxsize=64)
def _chi2_tail(probability: float, d: int) -> float:
    """The squared distance beyond which a chi-square with d degrees of freedom has
    ``probability`` left (asked once per warm-up batch: one event each on the river path)."""
    return float(stats.chi2.isf(probability, d))


# Reductions over the few components of a batch's arrays: numpy's reductions along an
# axis of a few elements cost a loop step per row (a max over K = 3 components of
# 256 x 8 values takes 20 us); einsum's sums and a maximum over the slices take 2-5.
_FEW_COMPONENTS = 16


def component_max(a: np.ndarray) -> np.ndarray:
    """The maximum over axis 1 (the components) of ``a`` of shape (n, K, ...)."""
    if a.shape[1] > _FEW_COMPONENTS or a.shape[1] == 0:
        return a.max(axis=1)
    peak = a[:, 0].copy()
    for k in range(1, a.shape[1]):
        np.maximum(peak, a[:, k], out=peak)
    return peak


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """``log sum_j exp a[:, j]`` of shape (n,) for ``a`` of shape (n, m): -inf for a row
    of -inf (or no column)."""
    if a.shape[1] == 0:
        return np.full(a.shape[0], -np.inf)
    peak = component_max(a)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.einsum("nk->n", np.exp(a - peak[:, None]))) + peak


# ---------------------------------------------------------------------------
# step schedule


def batch_step(n_before: int, batch_size: int, alpha: float, t0: float, eta_min: float) -> float:
    """Step for a batch: the compounded per-event steps of its events.

    ``1 - prod_i (1 - eta_i)`` over ``i = n_before + 1 .. n_before + batch_size``
    with ``eta_i = max(eta_min, (i + t0) ** -alpha)``.

    >>> round(batch_step(100, 1, 1.0, 0.0, 0.0), 6)   # 1 / 101
    0.009901
    >>> round(batch_step(100, 50, 1.0, 0.0, 0.0), 6)  # running average: 50 / 150
    0.333333
    """
    i = np.arange(n_before + 1, n_before + batch_size + 1, dtype=np.float64)
    eta = np.maximum(eta_min, (i + t0) ** -alpha)
    return float(-np.expm1(np.log1p(-np.minimum(eta, 1.0 - 1e-16)).sum()))


# ---------------------------------------------------------------------------
# initialisation


def _kmeans_plusplus(X: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    n = X.shape[0]
    centers = np.empty((n_clusters, X.shape[1]))
    centers[0] = X[rng.integers(n)]
    closest = ((X - centers[0]) ** 2).sum(axis=1)
    for c in range(1, n_clusters):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters
            centers[c] = X[rng.integers(n)]
            continue
        candidates = rng.choice(n, size=min(n, 10 + int(np.log(n_clusters))), p=closest / total)
        # one candidate at a time: an (n_candidates, n, d) block is 62 MB at d = 1,555
        dists = np.stack([((X - X[i]) ** 2).sum(axis=1) for i in candidates])
        best = int(np.argmin(np.minimum(closest, dists).sum(axis=1)))
        centers[c] = X[candidates[best]]
        closest = np.minimum(closest, dists[best])
    return centers


def _kmeans_labels(X: np.ndarray, centers: np.ndarray, n_iter: int = 10) -> np.ndarray:
    for _ in range(n_iter):
        dists = (X**2).sum(1)[:, None] - 2 * X @ centers.T + (centers**2).sum(1)
        labels = dists.argmin(axis=1)
        for k in range(centers.shape[0]):
            members = labels == k
            if members.any():
                centers[k] = X[members].mean(axis=0)
    return labels


# ---------------------------------------------------------------------------
# the warm-up scorer


@dataclass(frozen=True)
class WarmupScores:
    """What the warm-up Gaussian says about each event of a batch.

    Attributes
    ----------
    log_likelihood : array of shape (n_samples,)
    distance_sq : array of shape (n_samples,)
        Squared standardised distance to the running mean.
    centred : array of shape (n_samples, n_features)
        Per-feature standardised residuals.
    mean : array of shape (n_samples, n_features)
        The running mean each row was scored against (the row itself for the first).
    flagged : array of shape (n_samples,), bool
        Too far out to be learnt (see :meth:`RunningGaussian.score_then_update`).
    threshold : array of shape (n_samples,)
        The score ``-log_likelihood`` above which the row would have been flagged
        (NaN where it could not be: too early in the warm-up).
    variance : array of shape (n_samples, n_features)
        The running Gaussian's variance each row was scored against (floored).
    """

    log_likelihood: np.ndarray
    distance_sq: np.ndarray
    centred: np.ndarray
    mean: np.ndarray
    flagged: np.ndarray
    threshold: np.ndarray
    variance: np.ndarray


class RunningGaussian:
    """Diagonal Gaussian of the events seen so far: the honest score before a mixture exists.

    Batches are merged with Chan's parallel variance formula (exact, stable).
    :meth:`score_then_update` scores each event under the Gaussian of the events
    before it, so its answers do not depend on how the stream is cut into batches.
    A field that has not varied yet is measured in its own units (variance 1), as
    the standardiser measures a constant feature. Whether a field has varied is
    judged on the range of its values (exact whatever the cut), not on its
    variance, whose rounding depends on the cut: a field whose variance sat at the
    floor was measured one way in one cut and the other way in another.

    >>> g = RunningGaussian()
    >>> g.update(np.array([[0.0], [2.0]])); g.update(np.array([[4.0]]))
    >>> g.mean.tolist(), g.variance.tolist()
    ([2.0], [2.6666666666666665])
    """

    def __init__(self, reg_covar: float = 1e-12):
        self.reg_covar = reg_covar
        self.count = 0
        self.n_flagged = 0  # rows flagged by their distance (not kept)
        self.mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self.low: np.ndarray | None = None  # the smallest and largest value of each field
        self.high: np.ndarray | None = None

    @property
    def variance(self) -> np.ndarray:
        return self._m2 / max(self.count, 1)

    def update(self, X: np.ndarray) -> None:
        if X.shape[0] == 0:
            return
        batch_mean = X.mean(axis=0)
        batch_m2 = ((X - batch_mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self._m2 = X.shape[0], batch_mean, batch_m2
            self.low, self.high = X.min(axis=0), X.max(axis=0)
            return
        self.low, self.high = (
            np.minimum(self.low, X.min(axis=0)),
            np.maximum(self.high, X.max(axis=0)),
        )
        total = self.count + X.shape[0]
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * X.shape[0] / total
        self._m2 = self._m2 + batch_m2 + delta**2 * self.count * X.shape[0] / total
        self.count = total

    def floored(
        self, mean: np.ndarray, variance: np.ndarray, low: np.ndarray, high: np.ndarray
    ) -> np.ndarray:
        """The variance scored against, given the running ``mean`` and ``variance`` and
        the smallest and largest values so far (arrays of one shape): the variance plus a
        floor. A field that has not varied yet (its values spread over no more than
        twice the floor's sd, or none seen) has no scale, and is measured in its own units,
        as the standardiser measures a constant field, not against the floor."""
        floor = self.reg_covar + 1e-10 * mean**2
        with np.errstate(invalid="ignore"):
            extent = np.maximum(np.abs(low), np.abs(high))
            varied = (high - low) > 2.0 * np.sqrt(self.reg_covar + 1e-10 * extent**2)
        return np.where(varied, variance + floor, np.maximum(variance + floor, 1.0))

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Log-density of each row under the current Gaussian (a unit one before two events)."""
        if self.count == 0:
            return np.full(X.shape[0], -0.5 * X.shape[1] * _LOG_2PI)
        var = self.floored_variance()
        with np.errstate(over="ignore", invalid="ignore"):  # clipped as the warm-up clips it
            diff = np.clip(X - self.mean, -MAX_ABS_INPUT, MAX_ABS_INPUT)
        distance_sq = ((diff**2) / var).sum(axis=1)
        return -0.5 * (X.shape[1] * _LOG_2PI + np.log(var).sum() + distance_sq)

    def score_then_update(
        self, X: np.ndarray, flag_after: int | None = None, flag_distance_sq: float = math.inf
    ) -> WarmupScores:
        """Score each row under the Gaussian of the rows kept before it, then keep it.

        Rows whose squared standardised distance exceeds ``flag_distance_sq``, once
        ``flag_after`` rows are kept, are flagged and not kept, as long as the rows so
        flagged stay fewer than the rows kept: when the Gaussian would call the majority
        far out, the Gaussian is wrong (a field that barely varied so far, whose
        variance is tiny, would otherwise get every later row flagged and never learn
        that it varies). Rows with a value beyond ``MAX_ABS_INPUT`` (they cannot be squared)
        are flagged whatever the counts. Exact per row, vectorised with prefix sums over
        windows of rows: one pass, plus one window per flagged row.

        Parameters
        ----------
        X : array of shape (n_samples, n_features), finite
        """
        n, d = X.shape
        log_likelihood = np.empty(n)
        distance_sq = np.empty(n)
        centred = np.empty((n, d))
        mean = np.empty((n, d))
        variance = np.empty((n, d))
        flaggable = np.zeros(n, dtype=bool)
        flagged = np.zeros(n, dtype=bool)
        huge = np.abs(X).max(axis=1, initial=0.0) > MAX_ABS_INPUT
        start, window = 0, _SCAN_WINDOW
        while start < n:
            # each flag changes the prefix of every row after it, so the rows are scanned
            # in windows that grow while nothing is flagged: a flag re-scans one window,
            # not the rest of the batch
            rows = slice(start, min(start + window, n))
            scores = self._prefix_scores(X[rows], huge[rows])
            kept_before = scores[4]
            can_flag = kept_before >= (math.inf if flag_after is None else flag_after)
            can_flag &= self.n_flagged < kept_before  # the flagged stay a minority
            far = can_flag & (scores[1] > flag_distance_sq)
            bad = huge[rows] | far
            stop = rows.stop if not bad.any() else start + int(np.argmax(bad)) + 1
            window = _SCAN_WINDOW if bad.any() else 2 * window
            done = slice(start, stop)
            log_likelihood[done], distance_sq[done], centred[done], mean[done] = (
                s[: stop - start] for s in scores[:4]
            )
            variance[done] = scores[5][: stop - start]
            flaggable[done] = can_flag[: stop - start]
            if bad.any():
                flagged[stop - 1] = True
                self.n_flagged += int(far[stop - 1 - start] and not huge[stop - 1])
                self.update(X[start : stop - 1])
            else:
                self.update(X[start:stop])
            start = stop
        # the score at which each row would have been flagged: its own, moved along the
        # chi-square distance to the critical one
        with np.errstate(invalid="ignore"):
            threshold = np.where(
                flaggable, -log_likelihood + 0.5 * (flag_distance_sq - distance_sq), np.nan
            )
        return WarmupScores(
            log_likelihood, distance_sq, centred, mean, flagged, threshold, variance
        )

    def _prefix_scores(self, X: np.ndarray, huge: np.ndarray):
        """Scores of each row under the running Gaussian of all the rows before it."""
        n, d = X.shape
        ref = self.mean if self.count else X[0]
        with np.errstate(over="ignore", invalid="ignore"):
            y = np.where(huge[:, None], 0.0, X - ref)
            before = np.zeros((n, d))
            np.cumsum(y[:-1], axis=0, out=before[1:])
            before_sq = np.zeros((n, d))
            np.cumsum(y[:-1] ** 2, axis=0, out=before_sq[1:])
            count = self.count + np.arange(n)
            safe = np.maximum(count, 1)[:, None]
            mean = ref + before / safe
            m2 = (self._m2 if self.count else 0.0) + before_sq - before**2 / safe
            variance = np.maximum(m2, 0.0) / safe
            first = count[:, None] == 0  # the first event of all: a unit Gaussian on itself
            mean = np.where(first, X, mean)
            low, high = self.prefix_extremes(X, huge)
            var = np.where(first, 1.0, self.floored(mean, variance, low, high))
            diff = np.clip(X - mean, -MAX_ABS_INPUT, MAX_ABS_INPUT)
            z_sq = diff**2 / var
            centred = diff / np.sqrt(var)
            distance_sq = z_sq.sum(axis=1)
            log_likelihood = -0.5 * (d * _LOG_2PI + np.log(var).sum(axis=1) + distance_sq)
        return log_likelihood, distance_sq, centred, mean, count, var

    def prefix_extremes(self, X: np.ndarray, left_out: np.ndarray):
        """The smallest and largest value of each field among the rows kept before each
        row (the events before X and the rows of X before it but those ``left_out``,
        shape (n,); NaN before any): arrays of shape (n, d)."""
        n, d = X.shape
        values = np.where(left_out[:, None], np.nan, X)
        low, high = np.full((n, d), np.nan), np.full((n, d), np.nan)
        if n > 1:
            np.fmin.accumulate(values[:-1], axis=0, out=low[1:])
            np.fmax.accumulate(values[:-1], axis=0, out=high[1:])
        if self.count:
            low, high = np.fmin(low, self.low), np.fmax(high, self.high)
        return low, high

    def floored_variance(self) -> np.ndarray:
        """The variance the next event is scored against: array of shape (n_features,)."""
        return self.floored(self.mean, self.variance, self.low, self.high)

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "count": self.count,
            "reg_covar": self.reg_covar,
            "n_flagged": self.n_flagged,
        }
        if self.count:
            state["mean"], state["m2"] = self.mean, self._m2
            state["low"], state["high"] = self.low, self.high
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunningGaussian:
        gaussian = cls(state["reg_covar"])
        gaussian.count = int(state["count"])
        gaussian.n_flagged = int(state.get("n_flagged", 0))  # absent from older checkpoints
        if gaussian.count:
            gaussian.mean = np.array(state["mean"], dtype=np.float64)
            gaussian._m2 = np.array(state["m2"], dtype=np.float64)
            if "low" in state:
                gaussian.low = np.array(state["low"], dtype=np.float64)
                gaussian.high = np.array(state["high"], dtype=np.float64)
            else:  # older checkpoints: a field varied when its variance passed the floor
                sd = np.sqrt(gaussian.variance)
                gaussian.low, gaussian.high = gaussian.mean - sd, gaussian.mean + sd
        return gaussian


def prefix_kde_log_likelihood(
    X: np.ndarray,
    kept: np.ndarray,
    earlier: Sequence[np.ndarray],
    variance: np.ndarray,
    block: int = 256,
    bandwidth: float = KDE_BANDWIDTH,
) -> np.ndarray:
    """Log-density of each row under a Gaussian KDE of the events before it.

    Row i is scored under ``p_i(x) = (1 / m_i) sum_j N(x; e_j, diag(h_i ** 2))``, its
    kernels e_j being the ``earlier`` events and the kept rows of X before row i
    (m_i of them), with the bandwidth ``h_i = bandwidth * sqrt(variance_i)``.
    Exact per row, whatever the cut: the squared distances come from
    ``|a - b|^2 = a^2 + b^2 - 2ab`` in blocks of ``block`` rows and kernels (GEMMs),
    about the mean of the kernels before each block, not from a loop per row.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    kept : array of shape (n_samples,), bool
        The rows that become kernels for the rows after them.
    earlier : sequence of arrays of shape (n_earlier_k, n_features)
        The kernels before X (finite, not too large to be squared).
    variance : array of shape (n_samples, n_features)
        The per-field variance each row's bandwidth is a share of (positive).
    bandwidth : float
        The kernels' width in the standard deviations ``sqrt(variance)``.

    Returns
    -------
    log_likelihood : array of shape (n_samples,)
        ``-inf`` for a row with no kernel before it.

    >>> X = np.array([[0.0], [1.0], [3.0]])
    >>> ll = prefix_kde_log_likelihood(X, np.ones(3, bool), [], np.ones((3, 1)))
    >>> direct = [np.log(np.mean(stats.norm.pdf(X[i, 0], X[:i, 0], KDE_BANDWIDTH))) for i in (1, 2)]
    >>> bool(ll[0] == -np.inf), np.allclose(ll[1:], direct)
    (True, True)
    """
    n, d = X.shape
    pieces = [e for e in earlier if len(e)]
    n_earlier = sum(len(e) for e in pieces)
    own = X[kept]
    if n_earlier + len(own) == 0:
        return np.full(n, -np.inf)
    count = n_earlier + np.concatenate([[0], np.cumsum(kept[:-1])]).astype(np.int64)
    bandwidth_sq = bandwidth**2 * variance
    own_rows = np.flatnonzero(kept)  # the row of X each own kernel is
    earlier_sum = sum((e.sum(axis=0) for e in pieces), np.zeros(d))
    own_sum = np.cumsum(own, axis=0)
    sources = [(e[i : i + block], None) for e in pieces for i in range(0, len(e), block)]
    sources += [(own[i : i + block], own_rows[i : i + block]) for i in range(0, len(own), block)]
    out = np.empty(n)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, block):
            rows = slice(start, min(start + block, n))
            # about the mean of the kernels before the block: every distance a row sees is
            # then within the spread its own bandwidth measures (no cancellation, even on
            # a field that barely varied so far, whose variance is tiny)
            n_own = int(np.searchsorted(own_rows, start))
            centre = (earlier_sum + (own_sum[n_own - 1] if n_own else 0.0)) / max(count[start], 1)
            if count[start] == 0:
                centre = own[0]
            precision = 1.0 / bandwidth_sq[rows]
            y = np.clip(X[rows], -MAX_ABS_INPUT, MAX_ABS_INPUT) - centre
            y_sq = (precision * y * y).sum(axis=1)
            total = np.full(y.shape[0], -np.inf)
            for source, where in sources:
                if where is not None and where[0] >= rows.stop - 1:
                    break  # own kernels from here on come after every row of the block
                kernels = source - centre
                dist_sq = (
                    y_sq[:, None] + precision @ (kernels**2).T - 2.0 * (precision * y) @ kernels.T
                )
                log_kernel = -0.5 * np.maximum(dist_sq, 0.0)
                if where is not None:  # a row sees only the kept rows before it
                    before = where[None, :] < np.arange(rows.start, rows.stop)[:, None]
                    log_kernel = np.where(before, log_kernel, -np.inf)
                total = np.logaddexp(total, _logsumexp_rows(log_kernel))
            out[rows] = (
                total
                - np.log(np.maximum(count[rows], 1))
                - 0.5 * (d * _LOG_2PI + np.log(bandwidth_sq[rows]).sum(axis=1))
            )
    out[count == 0] = -np.inf
    return out


# ---------------------------------------------------------------------------
# the estimator


@dataclass(frozen=True)
class Evaluation:
    """What one E-step says about a batch.

    Attributes
    ----------
    log_likelihood : array of shape (n_samples,)
        ``log p(x)`` under the model.
    responsibilities : array of shape (n_samples, n_components)
    mahalanobis_sq : array of shape (n_samples, n_components)
        Squared Mahalanobis distance to each component.
    """

    log_likelihood: np.ndarray
    responsibilities: np.ndarray
    mahalanobis_sq: np.ndarray


class OnlineGaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture model learnt online by stepwise EM.

    A scikit-learn estimator: ``get_params``/``set_params``/``clone`` work, the
    parameters are checked by ``fit`` and the first ``partial_fit`` (not by
    the constructor), and ``fit`` twice with the same ``random_state`` gives
    the same model. Until the warm-up is complete, ``partial_fit`` buffers and
    ``score_samples`` answers with a running Gaussian of the events seen;
    before any event, the estimator raises scikit-learn's ``NotFittedError``.

    The defaults shared with the :class:`~streamgmm.detector.Detector` and the
    daemon's ``model`` section come from :data:`streamgmm.defaults.MODEL_DEFAULTS`.

    Parameters
    ----------
    n_components : int or "auto"
        Number of components. ``"auto"`` chooses it on the warm-up buffer by
        the Bayesian information criterion, from 1 to ``max_components``.
    covariance_type : {"full", "diag", "spherical"}
        As in scikit-learn. The default, diag, detected best on the labelled
        benchmark sets (correlations are carried by several components).
    reg_covar : float
        Added to the diagonal of every covariance: a floor under the variance
        of any direction, so that a component cannot collapse onto repeated
        or discrete values and produce absurd densities. In the units of the
        data: the default, 0.05, is for standardised data (what the
        :class:`~streamgmm.detector.Detector` feeds the model, where it was
        chosen by measurement); on raw data, scale it to the variances that
        matter (scikit-learn's bare floor is 1e-6).
    warmup : int
        Events buffered before the first fit by batch EM (from k-means++);
        stepwise updates follow. Until then, each event is scored by a Gaussian
        KDE of the buffered events before it (see :meth:`warmup_step`).
    step_alpha, step_t0 : float
        Step schedule ``eta_i = (i + t0) ** -alpha`` per event, alpha in
        (0.5, 1]. With 1 the statistics are the running average of the whole
        stream, the closest to batch EM on a stationary stream; smaller
        values forget the early, less accurate responsibilities faster.
    step_min : float
        Per-event floor of the step: a forgetting model for drifting streams.
    half_life : int or None
        The friendlier way to set ``step_min``: the number of events after
        which an event's weight in the statistics has halved.
    max_components : int
        Cap for ``n_components="auto"``.
    weight_floor : float
        A component whose weight falls under this is re-seeded at the least
        explained point of the batch with a broad covariance.
    n_init : int
        k-means++ starts tried by the batch fit; the best likelihood wins.
    refits, reservoir_size : int
        After the warm-up, the model is refitted by batch EM on a uniform
        reservoir sample of the learnt events (at most ``reservoir_size``)
        at 2, 4, 8... times the warm-up, ``refits`` times, from its current
        parameters and from fresh starts (K re-chosen when "auto"); the best
        by BIC is kept. One pass of stepwise EM keeps the basin of attraction
        its first fit chose, and on overlapping clusters a fit on 500 events
        often chooses badly. 0 turns the schedule off.
    trim : float
        Share of the least likely events left out of every batch fit (warm-up
        and refits): a trimmed-likelihood fit, so that a few anomalies among
        them do not get a component of their own. 0 for plain EM.
    max_iter, tol : int, float
        Batch EM iterations and convergence tolerance (mean log-likelihood).
    random_state : int or None

    Examples
    --------
    Two round clusters with the same centre and radii 0.3 and 3, which
    k-means cannot separate:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(0, 0.3, (3000, 2)), rng.normal(0, 3, (3000, 2))])
    >>> X = X[rng.permutation(len(X))]
    >>> gmm = OnlineGaussianMixture(
    ...     n_components=2, covariance_type="full", reg_covar=1e-6, random_state=0
    ... )
    >>> for batch in np.array_split(X, 30):
    ...     _ = gmm.partial_fit(batch)
    >>> radii = np.sqrt(gmm.covariances_.diagonal(axis1=1, axis2=2).mean(axis=1))
    >>> np.round(np.sort(radii), 1).tolist()
    [0.3, 3.0]
    >>> gmm.score_samples([[0.0, 0.0], [20.0, 20.0]]).round(1).tolist()
    [-0.1, -48.6]
    """

    def __init__(
        self,
        n_components: int | str = MODEL_DEFAULTS.n_components,
        covariance_type: str = MODEL_DEFAULTS.covariance_type,
        reg_covar: float = MODEL_DEFAULTS.reg_covar,
        warmup: int = MODEL_DEFAULTS.warmup,
        step_alpha: float = 1.0,
        step_t0: float = 2.0,
        step_min: float = 0.0,
        half_life: float | None = MODEL_DEFAULTS.half_life,
        max_components: int = MODEL_DEFAULTS.max_components,
        weight_floor: float = 1e-3,
        n_init: int = MODEL_DEFAULTS.n_init,
        refits: int = 4,
        reservoir_size: int = 5000,
        trim: float = 0.0,
        max_iter: int = 100,
        tol: float = 1e-4,
        random_state: int | None = MODEL_DEFAULTS.random_state,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.warmup = warmup
        self.step_alpha = step_alpha
        self.step_t0 = step_t0
        self.step_min = step_min
        self.half_life = half_life
        self.max_components = max_components
        self.weight_floor = weight_floor
        self.n_init = n_init
        self.refits = refits
        self.trim = trim
        self.reservoir_size = reservoir_size
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # NaN and infinities are refused with our own message (drop or repair the rows)
        tags.input_tags.allow_nan = False
        return tags

    @property
    def _started(self) -> bool:
        """Whether fit or a first partial_fit has started the state (see ``_reset``)."""
        return hasattr(self, "_rng")

    def __sklearn_is_fitted__(self) -> bool:
        """Fitted, or warming up: ``score_samples`` answers once any event was seen."""
        return self.is_fitted or getattr(self, "_buffered", 0) > 0

    def _reset(self) -> None:
        """Check the parameters and start the state afresh (by fit and the first partial_fit)."""
        self._check_parameters()
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            self.__dict__.pop(name, None)
        self._rng = _make_rng(self.random_state)
        self._ops = _OPS[self.covariance_type]
        self.n_seen_ = 0
        self.n_reseeds_ = 0
        self.n_refits_ = 0
        self._reservoir: np.ndarray | None = None
        self._reservoir_seen = 0
        self._next_refit = 0
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._warm = RunningGaussian()

    def _validate(self, X: Any, *, reset: bool, ensure_min_samples: int = 0) -> np.ndarray:
        """scikit-learn's input checks (shape, dtype, feature count and names), then ours."""
        if (
            not reset
            and type(X) is np.ndarray
            and X.dtype == np.float64
            and X.ndim == 2
            and X.shape[0] >= ensure_min_samples
            and hasattr(self, "n_features_in_")
            and not hasattr(self, "feature_names_in_")
        ):
            # the streaming path (a float64 array from the detector): the same answers as
            # validate_data's without its cost, tens of microseconds per call
            if X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input."
                )
            return _check_values(X)
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype=np.float64,
            ensure_all_finite=False,
            ensure_min_samples=ensure_min_samples,
        )
        return _check_values(X)

    # -- parameters -------------------------------------------------------

    def _check_parameters(self) -> None:
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}, "
                f"got {self.covariance_type!r}"
            )
        if self.n_components != "auto" and not (
            isinstance(self.n_components, (int, np.integer)) and self.n_components >= 1
        ):
            raise ValueError(
                f"n_components must be 'auto' or an int >= 1, got {self.n_components!r}"
            )
        if not self.reg_covar > 0:
            raise ValueError(f"reg_covar must be > 0, got {self.reg_covar!r}")
        if not 0.5 < self.step_alpha <= 1:
            raise ValueError(f"step_alpha must be in (0.5, 1], got {self.step_alpha!r}")
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim!r}")
        if not 0 <= self.step_min < 1:
            raise ValueError(f"step_min must be in [0, 1), got {self.step_min!r}")
        if self.half_life is not None and not self.half_life > 0:
            raise ValueError(f"half_life must be > 0 events or None, got {self.half_life!r}")
        if int(self.warmup) < MIN_WARMUP:
            raise ValueError(f"warmup must be >= {MIN_WARMUP} events, got {self.warmup!r}")
        if int(self.max_components) < 1:
            raise ValueError(f"max_components must be >= 1, got {self.max_components!r}")

    @property
    def eta_min(self) -> float:
        """Per-event step floor, from ``half_life`` when it is set."""
        if self.half_life is not None:
            return max(self.step_min, -math.expm1(math.log(0.5) / self.half_life))
        return self.step_min

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "weights_")

    @property
    def size(self) -> int:
        """Components of one fit: ``n_components``, or ``max_components`` when ``"auto"``."""
        return self.max_components if self.n_components == "auto" else int(self.n_components)

    @property
    def n_components_(self) -> int:
        return len(self.weights_) if self.is_fitted else 0

    # -- batch EM ---------------------------------------------------------

    def fit(self, X, y=None) -> OnlineGaussianMixture:
        """Fit by batch EM from k-means++ starts (choosing K by BIC if ``"auto"``).

        Resets the sufficient statistics to those of X; later ``partial_fit``
        calls continue from them as if X had been the start of the stream
        (X also starts the reservoir of the refit schedule).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        """
        self._check_parameters()
        X = self._validate(X, reset=True, ensure_min_samples=1)
        self._reset()
        self._set_statistics(*self._select(X))
        self.n_seen_ = X.shape[0]
        self._buffer, self._buffered = [], 0
        self._reservoir = X[-int(self.reservoir_size) :].copy() if self.refits else None
        self._reservoir_seen = X.shape[0]
        self._next_refit = 2 * max(X.shape[0], int(self.warmup))
        self.n_refits_ = 0
        return self

    def _select(self, X: np.ndarray, start: tuple | None = None):
        """The statistics of the best fit of X by BIC: over K, k-means++ starts and ``start``."""
        if self.n_components == "auto":
            candidates = range(1, min(self.max_components, X.shape[0]) + 1)
        else:
            candidates = [min(int(self.n_components), X.shape[0])]
        fits = [self._fit_k(X, n_components) for n_components in candidates]
        if start is not None:
            fits.append(self._em(X, len(start[0]), start=start))
        bics = [self._bic(f[-1], X.shape[0], len(f[0]), X.shape[1]) for f in fits]
        best = fits[int(np.argmin(bics))][:3]
        if self.trim > 0 and X.shape[0] > 1:
            # trimmed likelihood: the least likely events do not get a component of their own
            self._set_statistics(*best)
            log_likelihood = self._evaluate(X).log_likelihood
            kept = X[log_likelihood >= np.quantile(log_likelihood, self.trim)]
            trimmed, self.trim = self.trim, 0.0
            try:
                best = self._select(kept, start=best)
            finally:
                self.trim = trimmed
        return best

    def _bic(self, mean_loglik: float, n: int, n_components: int, d: int) -> float:
        n_params = n_components * (d + self._ops.n_params(d)) + n_components - 1
        return -2.0 * mean_loglik * n + n_params * math.log(n)

    def _fit_k(self, X: np.ndarray, n_components: int):
        best = None
        for _ in range(self.n_init if n_components > 1 else 1):
            fitted = self._em(X, n_components)
            if best is None or fitted[-1] > best[-1]:
                best = fitted
        return best

    def _em(self, X: np.ndarray, n_components: int, start: tuple | None = None):
        if start is None:
            centers = _kmeans_plusplus(X, n_components, self._rng)
            labels = _kmeans_labels(X, centers)
            resp = np.zeros((X.shape[0], n_components))
            resp[np.arange(X.shape[0]), labels] = 1.0
        else:  # from given statistics (s0, means, scatter)
            self._set_statistics(*start)
            resp = self._evaluate(X).responsibilities
        previous = -np.inf
        mean_loglik = -np.inf
        for _ in range(self.max_iter):
            s0, means, scatter = self._batch_statistics(X, resp)
            s0, means, scatter = self._reseed_empty(X, resp, s0, means, scatter)
            self._set_statistics(s0, means, scatter)
            evaluation = self._evaluate(X)
            resp = evaluation.responsibilities
            mean_loglik = float(evaluation.log_likelihood.mean())
            if abs(mean_loglik - previous) < self.tol:
                break
            previous = mean_loglik
        s0, means, scatter = self._batch_statistics(X, resp)
        s0, means, scatter = self._reseed_empty(X, resp, s0, means, scatter)
        self._set_statistics(s0, means, scatter)
        mean_loglik = float(self._evaluate(X).log_likelihood.mean())
        return s0, means, scatter, mean_loglik

    def _batch_statistics(self, X: np.ndarray, resp: np.ndarray):
        nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps
        means = resp.T @ X / nk[:, None]
        scatter = self._ops.batch_scatter(X, resp, nk, means)
        return nk / X.shape[0], means, scatter

    def _reseed_empty(self, X, resp, s0, means, scatter):
        """A component that lost every point in batch EM restarts at the worst-fit point."""
        empty = np.flatnonzero(s0 * X.shape[0] < 1e-3)
        if empty.size == 0 or X.shape[0] <= 1:
            return s0, means, scatter
        worst = np.argsort(resp.max(axis=1))[: empty.size]
        broad = self._total_scatter(s0, means, scatter)
        for k, i in zip(empty, worst, strict=False):
            means[k] = X[i]
            scatter[k] = broad
            s0[k] = 1.0 / X.shape[0]
        return s0 / s0.sum(), means, scatter

    # -- stepwise EM ------------------------------------------------------

    def partial_fit(self, X, y=None) -> OnlineGaussianMixture:
        """One stepwise EM update with the batch X of shape (n_samples, n_features).

        The first call (without a ``fit`` before it) checks the parameters and
        starts the model; the first ``warmup`` events are buffered, then fitted.
        """
        self.score_then_learn(X)
        return self

    def score_then_learn(self, X) -> np.ndarray:
        """Log-likelihood of each row under the model as it was, then learn the batch.

        The daemon's hot path: one E-step serves both the scores and the update.

        Returns
        -------
        log_likelihood : array of shape (n_samples,)
        """
        first = not self._started
        if first:
            self._check_parameters()
        X = self._validate(X, reset=first)
        if first:
            self._reset()
        out = np.empty(X.shape[0])
        start = 0
        if not self.is_fitted:
            start = min(X.shape[0], max(int(self.warmup) - self._buffered, 0))
            out[:start] = self.warmup_step(X[:start]).log_likelihood
            if self._buffered >= int(self.warmup):
                self._fit_warmup_buffer()
        if start < X.shape[0]:
            rest = X[start:]
            evaluation = self.evaluate(rest)
            self.learn(rest, evaluation)
            out[start:] = evaluation.log_likelihood
        return out

    def learn(self, X: np.ndarray, evaluation: Evaluation) -> None:
        """Fold a batch into the statistics, reusing its E-step ``evaluation``."""
        if X.shape[0] == 0:
            return
        resp = evaluation.responsibilities
        eta = batch_step(self.n_seen_, X.shape[0], self.step_alpha, self.step_t0, self.eta_min)
        nk = resp.sum(axis=0)
        batch_s0 = nk / X.shape[0]
        safe_nk = np.maximum(nk, _TINY)
        batch_means = resp.T @ X / safe_nk[:, None]
        batch_scatter = self._ops.batch_scatter(X, resp, safe_nk, batch_means)

        old_w = (1.0 - eta) * self._s0
        new_w = eta * batch_s0
        total = np.maximum(old_w + new_w, _TINY)
        frac = new_w / total
        delta = batch_means - self._means
        means = self._means + frac[:, None] * delta
        cross = (old_w * new_w / total**2).reshape((-1,) + (1,) * (self._scatter.ndim - 1))
        f_old = (old_w / total).reshape(cross.shape)
        f_new = frac.reshape(cross.shape)
        scatter = f_old * self._scatter + f_new * batch_scatter + cross * self._ops.outer(delta)
        s0 = old_w + new_w
        self.n_seen_ += X.shape[0]
        s0, means, scatter = self._reseed_starved(X, evaluation, s0 / s0.sum(), means, scatter)
        self._set_statistics(s0, means, scatter)
        if self._reservoir is not None:
            self._sample(X)
            if self.n_seen_ >= self._next_refit:
                self._refit()

    # -- refit schedule ----------------------------------------------------

    def _sample(self, X: np.ndarray) -> None:
        """Uniform reservoir sample of the learnt events (Vitter's algorithm R, per batch)."""
        size = int(self.reservoir_size)
        seen = self._reservoir_seen + np.arange(X.shape[0])
        self._reservoir_seen += X.shape[0]
        room = max(size - len(self._reservoir), 0)
        if room:
            self._reservoir = np.concatenate([self._reservoir, X[:room]])
        slots = self._rng.integers(0, seen[room:] + 1)
        chosen = slots < size
        self._reservoir[slots[chosen]] = X[room:][chosen]

    def _refit(self) -> None:
        """Batch EM on the reservoir, from the current model and from fresh starts.

        One pass of stepwise EM cannot leave the basin its warm-up fit chose;
        a few refits on a growing uniform sample (at 2, 4, 8 and 16 times the
        warm-up) let more data choose the starting point, and K when it is
        "auto". The best by BIC wins, the current model included.
        """
        current = (self._s0.copy(), self._means.copy(), self._scatter.copy())
        self._set_statistics(*self._select(self._reservoir, start=current))
        self.n_refits_ += 1
        self._next_refit *= 2
        if self.n_refits_ >= self.refits:
            self._reservoir = None  # the schedule is over: stepwise EM only from here

    def _reseed_starved(self, X, evaluation, s0, means, scatter):
        starved = np.flatnonzero(s0 < self.weight_floor)
        if starved.size == 0 or len(s0) == 1:
            return s0, means, scatter
        worst = np.argsort(evaluation.log_likelihood)[: starved.size]
        broad = self._total_scatter(s0, means, scatter)
        for k, i in zip(starved, worst, strict=False):
            means[k] = X[i]
            scatter[k] = broad
            s0[k] = 2.0 * self.weight_floor
            self.n_reseeds_ += 1
        return s0 / s0.sum(), means, scatter

    def add_components(self, X, weight: float, max_components: int) -> np.ndarray:
        """Give the rows X components of their own, together weighing ``weight``.

        A mixture is fitted to X by batch EM (K by BIC, at most as many as the
        model has and its ``size``) and its components join the model, whose own
        weights shrink by ``1 - weight``: a new regime enters the mixture at once
        (see the detector's quarantine) and takes nothing from the components that
        explain the rest of the traffic. Beyond ``max_components`` in all, the
        lightest old components make room.

        Returns
        -------
        added : array of int, the indices of the new components.
        """
        self._check_fitted()
        X = self._validate(X, reset=False, ensure_min_samples=1)
        n_old = len(self._s0)
        local = OnlineGaussianMixture(
            n_components="auto",
            covariance_type=self.covariance_type,
            reg_covar=self.reg_covar,
            max_components=min(n_old, self.size),
            n_init=self.n_init,
            random_state=self._rng.integers(2**31),
        ).fit(X)
        n_new = min(local.n_components_, max_components)
        kept = np.sort(np.argsort(self._s0)[::-1][: max(max_components - n_new, 0)])
        weight = 1.0 if len(kept) == 0 else weight
        new_s0 = local._s0[:n_new] / local._s0[:n_new].sum()
        old_s0 = self._s0[kept] / max(self._s0[kept].sum(), _TINY)
        s0 = np.concatenate([(1.0 - weight) * old_s0, weight * new_s0])
        means = np.concatenate([self._means[kept], local._means[:n_new]])
        scatter = np.concatenate([self._scatter[kept], local._scatter[:n_new]])
        self._set_statistics(s0, means, scatter)
        return np.arange(len(kept), len(s0))

    def _total_scatter(self, s0, means, scatter):
        """Scatter of the whole mixture: a broad covariance for a re-seeded component."""
        w = s0 / s0.sum()
        centre = w @ means
        within = np.tensordot(w, scatter, axes=1)
        return within + np.tensordot(w, self._ops.outer(means - centre), axes=1)

    # -- warm-up scorer ---------------------------------------------------

    def warmup_step(
        self, X: np.ndarray, flag_after: int | None = None, flag_probability: float = 0.0
    ) -> WarmupScores:
        """Score warm-up events one by one under a density of those before, and buffer them.

        The score of each event is a Gaussian KDE of the buffered events before it
        (:func:`prefix_kde_log_likelihood`, kernels ``KDE_BANDWIDTH`` running standard
        deviations wide; the running Gaussian's for the first event). The
        returned ``distance_sq``, ``centred`` and ``mean`` are the running Gaussian's,
        which flags: once ``flag_after`` events are buffered, an event beyond the chi-square
        ``flag_probability`` tail of that Gaussian is flagged and not buffered: far
        out even for one broad Gaussian of everything seen, it would win a component
        of its own. An event with a value beyond ``MAX_ABS_INPUT`` is never buffered.
        The answers are the same however the warm-up is cut into batches.

        Parameters
        ----------
        X : array of shape (n_samples, n_features), at most the events the warm-up still needs
        """
        X = np.asarray(X, dtype=np.float64)
        if not self._started:
            self._check_parameters()
            self._reset()
        self.n_features_in_ = X.shape[1]
        critical = _chi2_tail(flag_probability, X.shape[1]) if flag_probability else math.inf
        gaussian = self._warm.score_then_update(X, flag_after, critical)
        log_likelihood = self._warmup_density(
            X, ~gaussian.flagged, gaussian.variance, gaussian.log_likelihood
        )
        scores = dataclasses.replace(
            gaussian,
            log_likelihood=log_likelihood,
            # the flag is the Gaussian's: the score plus half the distance still to go
            threshold=gaussian.threshold + gaussian.log_likelihood - log_likelihood,
        )
        kept = X[~scores.flagged]
        if len(kept):
            self._buffer.append(kept.copy())
            if len(self._buffer) > _MAX_BUFFER_PIECES:  # few, large blocks for the KDE
                self._buffer = [np.concatenate(self._buffer)]
        self._buffered += X.shape[0]
        return scores

    def _warmup_density(
        self, X: np.ndarray, kept: np.ndarray, variance: np.ndarray, gaussian: np.ndarray
    ) -> np.ndarray:
        """The warm-up's log-likelihoods: the KDE of the kept events before each row
        (:func:`prefix_kde_log_likelihood`), the running Gaussian's (``gaussian``, of
        shape (n_samples,)) for a row with none before it or too large to be squared."""
        kde = prefix_kde_log_likelihood(X, kept, self._buffer, variance)
        own = np.isfinite(kde) & (np.abs(X).max(axis=1, initial=0.0) <= MAX_ABS_INPUT)
        return np.where(own, kde, gaussian)

    def warmup_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """``log p(x)`` of each row (shape (n_samples, n_features)) under the warm-up's
        density now, learning nothing: what the next warm-up event would be scored by."""
        X = np.asarray(X, dtype=np.float64)
        gaussian = self.warmup_scorer.score_samples(X)
        if not self._started or self._warm.count == 0:
            return gaussian
        variance = np.broadcast_to(self._warm.floored_variance(), X.shape)
        return self._warmup_density(X, np.zeros(len(X), dtype=bool), variance, gaussian)

    def _fit_warmup_buffer(self) -> None:
        buffer = self.warmup_buffer()
        if len(buffer):
            self.fit(buffer)
        else:
            self.restart_warmup()

    def restart_warmup(self) -> None:
        """Count the warm-up's events from zero again: every one was flagged (values too
        large to be squared, say), so there is nothing to fit; the next ``warmup`` events
        are a new warm-up, scored by what the running Gaussian has kept (nothing yet)."""
        self._buffered = 0

    def score_quantile(self, q: float) -> float:
        """The q-quantile of the scores ``-log p(x)`` the model predicts for its own events.

        A point of component k scores ``c_k + m / 2`` at most, with
        ``c_k = -log w_k + log sqrt(|2 pi Sigma_k|)`` and ``m`` its squared
        Mahalanobis distance, chi-square with d degrees of freedom; solving
        ``sum_k w_k P(chi2_d > 2 (t - c_k)) = 1 - q`` for t gives a quantile that
        depends on the fitted model only, not on any events (nor anomalies among them).
        """
        self._check_fitted()
        d = self.n_features_in_
        offsets = -self._log_const
        weights = self.weights_

        def excess(t: float) -> float:
            return float(weights @ stats.chi2.sf(2.0 * np.maximum(t - offsets, 0.0), d)) - (1 - q)

        low = float(offsets.min())
        high = float(offsets.max() + stats.chi2.isf((1 - q) / 2, d))
        while excess(high) > 0:
            high += high - low + 1.0
        return float(optimize.brentq(excess, low, high, xtol=1e-6))

    @property
    def warmup_remaining(self) -> int:
        """Events the warm-up still needs before the first fit (0 once fitted)."""
        return 0 if self.is_fitted else max(int(self.warmup) - getattr(self, "_buffered", 0), 0)

    def warmup_buffer(self) -> np.ndarray:
        """The buffered (not flagged) warm-up events: array of shape (n_kept, n_features)."""
        if not getattr(self, "_buffer", None):
            return np.empty((0, getattr(self, "n_features_in_", 0)))
        return np.concatenate(self._buffer)

    @property
    def warmup_scorer(self) -> RunningGaussian:
        """The running Gaussian that flags the warm-up (an empty one before any event)."""
        return self._warm if self._started else RunningGaussian()

    # -- parameters from statistics --------------------------------------

    def _set_statistics(self, s0, means, scatter) -> None:
        self._s0 = np.asarray(s0, dtype=np.float64)
        self._means = np.asarray(means, dtype=np.float64)
        self._scatter = np.asarray(scatter, dtype=np.float64)
        self.n_features_in_ = self._means.shape[1]
        self.weights_ = np.maximum(self._s0 / self._s0.sum(), _TINY)
        self.means_ = self._means
        self.covariances_ = self._ops.add_reg(self._scatter, self.reg_covar)
        self.precisions_cholesky_ = self._ops.precision_cholesky(self.covariances_, self.reg_covar)
        self._log_det = self._ops.log_det(self.precisions_cholesky_, self.n_features_in_)
        self._log_weights = np.log(self.weights_)
        # the E-step works about the components' centre (precision far from zero)
        self._centre = self._means.mean(axis=0)
        self._means_centred = self._means - self._centre
        self._log_const = -0.5 * self.n_features_in_ * _LOG_2PI + self._log_det + self._log_weights

    # -- probability estimators ------------------------------------------

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"the mixture is not fitted yet: it needs {self.warmup} warm-up events "
                f"({getattr(self, '_buffered', 0)} seen) or a call to fit(X)"
            )

    def evaluate(self, X) -> Evaluation:
        """One E-step: log-likelihoods, responsibilities and Mahalanobis distances."""
        self._check_fitted()
        return self._evaluate(self._validate(X, reset=False))

    def _evaluate(self, X: np.ndarray) -> Evaluation:
        weighted, maha_sq = self._weighted_log_prob(X)
        log_likelihood = _logsumexp_rows(weighted)
        resp = np.exp(weighted - log_likelihood[:, None])
        return Evaluation(log_likelihood, resp, maha_sq)

    def _weighted_log_prob(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log w_k + log N(x | k) of shape (n, K), and the squared Mahalanobis distances."""
        maha_sq = self._ops.mahalanobis_sq(
            X - self._centre, self._means_centred, self.precisions_cholesky_
        )
        return self._log_const - 0.5 * maha_sq, maha_sq

    def log_likelihood_one(self, x: np.ndarray) -> float:
        """``log p(x)`` of one row (shape (n_features,)), unchecked: river's per-event path.

        About a third of the cost of the batch E-step on one row: no
        responsibilities, one reduction for the log-sum-exp.
        """
        diff = x - self._means
        prec_chol = self.precisions_cholesky_
        if self.covariance_type == "full":
            y = np.matmul(diff[:, None, :], prec_chol)[:, 0, :]
        elif self.covariance_type == "diag":
            y = diff * prec_chol
        else:
            y = diff * prec_chol[:, None]
        maha_sq = np.einsum("kd,kd->k", y, y)
        return float(np.logaddexp.reduce(self._log_const - 0.5 * maha_sq))

    def log_likelihood_unchecked(self, X: np.ndarray) -> np.ndarray:
        """``score_samples`` without input checks or responsibilities: the per-event path.

        X must be a finite float64 array of shape (n, n_features) and the model fitted.
        """
        return _logsumexp_rows(self._weighted_log_prob(X)[0])

    def score_samples(self, X) -> np.ndarray:
        """Log-likelihood of each row: array of shape (n_samples,).

        Before the warm-up is complete, the warm-up's density
        (:meth:`warmup_log_likelihood`); before any event, ``NotFittedError``.
        """
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"this {type(self).__name__} has seen no event yet: call fit(X) or "
                "partial_fit(X) first"
            )
        X = self._validate(X, reset=False)
        if not self.is_fitted:
            return self.warmup_log_likelihood(X)
        return self._evaluate(X).log_likelihood

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of X (scikit-learn's ``score``: higher is more likely)."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X) -> np.ndarray:
        """Responsibilities: array of shape (n_samples, n_components)."""
        return self.evaluate(X).responsibilities

    def predict(self, X) -> np.ndarray:
        """Most responsible component of each row."""
        return self.predict_proba(X).argmax(axis=1)

    def explain(self, X, evaluation: Evaluation | None = None) -> dict[str, np.ndarray]:
        """Why each row scored as it did.

        Returns
        -------
        dict with
            ``component`` : array of shape (n_samples,), the most responsible component k*;
            ``mahalanobis`` : array of shape (n_samples,), distance to k*;
            ``contributions`` : array of shape (n_samples, n_features), the
            standardised residuals ``(x_j - mu_k*j) / sqrt(Sigma_k*jj)``;
            ``surprise``, ``expected`` : arrays of shape (n_samples, n_features),
            see :meth:`field_surprise`: which field is odd given the others.
        """
        self._check_fitted()
        X = self._validate(X, reset=False)
        evaluation = evaluation if evaluation is not None else self._evaluate(X)
        best = evaluation.responsibilities.argmax(axis=1)
        rows = np.arange(X.shape[0])
        variances = self._ops.variances(self.covariances_, self.n_features_in_)
        contributions = (X - self._means[best]) / np.sqrt(variances[best])
        surprise, expected = self._field_surprise(X, evaluation)
        return {
            "component": best,
            "mahalanobis": np.sqrt(evaluation.mahalanobis_sq[rows, best]),
            "contributions": contributions,
            "surprise": surprise,
            "expected": expected,
        }

    def field_surprise(
        self, X, evaluation: Evaluation | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """How surprising each field of each row is, given the row's other fields.

        ``surprise_j = -log p(x_j | x_-j) = log p(x_-j) - log p(x)``, where
        ``p(x_-j)`` is the mixture with field j marginalised out. Field j is to
        blame when the rest of the row is plausible without it: a web server
        at 400 ms is surprising in its latency, not in the cpu of a batch
        worker it would otherwise resemble. ``expected_j = E[x_j | x_-j]`` is
        what the model expected instead: the conditional means of the
        components, weighted by their responsibilities for ``x_-j``.
        O(K d^2) per row for all fields together.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        evaluation : Evaluation or None
            The E-step of X if already done (it is reused, not repeated).

        Returns
        -------
        surprise : array of shape (n_samples, n_features)
            In nats; it can be negative (a density above 1 in the field's units).
        expected : array of shape (n_samples, n_features)
            In the units of X.

        Examples
        --------
        Web servers (cpu %, mem %, latency ms) and batch workers; a web server
        answering at 250 ms looks like a batch worker with odd cpu and mem
        (its residuals blame cpu), but it is its latency that is surprising:

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> web = rng.normal([30, 45, 40], [5, 5, 8], (2000, 3))
        >>> batch = rng.normal([90, 20, 250], [4, 4, 40], (2000, 3))
        >>> gmm = OnlineGaussianMixture(2, random_state=0).fit(np.concatenate([web, batch]))
        >>> event = [[30.0, 45.0, 250.0]]
        >>> gmm.explain(event)["contributions"].round(1).tolist()
        [[-14.6, 6.3, -0.0]]
        >>> surprise, expected = gmm.field_surprise(event)
        >>> surprise.round(1).tolist(), expected.round().tolist()
        ([[109.4, 22.3, 131.2]], [[90.0, 20.0, 40.0]])
        """
        self._check_fitted()
        X = self._validate(X, reset=False)
        return self._field_surprise(X, evaluation if evaluation is not None else self._evaluate(X))

    def _field_surprise(self, X: np.ndarray, evaluation: Evaluation) -> tuple[np.ndarray, ...]:
        if X.shape[0] == 0:
            return np.empty(X.shape), np.empty(X.shape)
        log_prob, cond_mean = self._ops.conditionals(
            X - self._centre, self._means_centred, self.precisions_cholesky_
        )
        # log w_k + log N_k(x_-j) = log w_k + log N_k(x) - log N_k(x_j | x_-j), (d, K, n)
        log_prob += np.ascontiguousarray((self._log_const - 0.5 * evaluation.mahalanobis_sq).T)
        peak = log_prob.max(axis=1, keepdims=True)
        log_prob -= peak
        if log_prob.min() < -700.0:
            # terms under e^-700 change nothing next to the peak's 1, and exp is many
            # times slower on arguments whose result underflows
            np.maximum(log_prob, -700.0, out=log_prob)
        weights = np.exp(log_prob, out=log_prob)
        if cond_mean.shape[2] == 1:  # one GEMM per field gives the sum and the mean
            ones_and_means = np.concatenate([np.ones_like(cond_mean), cond_mean], axis=2)
            total, expected = (ones_and_means.transpose(0, 2, 1) @ weights).transpose(1, 0, 2)
        else:
            total = weights.sum(axis=1)
            weights *= cond_mean
            expected = weights.sum(axis=1)
        surprise = (np.log(total) + peak[:, 0, :]).T - evaluation.log_likelihood[:, None]
        expected = (expected / total).T + self._centre
        return surprise, expected

    # -- persistence -------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Everything needed to resume exactly: parameters, statistics, counters, RNG."""
        if not self._started:  # nothing learnt yet: the state a first partial_fit starts
            self._reset()
        state: dict[str, Any] = {
            "params": {
                k: (v.item() if isinstance(v, np.generic) else v)
                for k, v in self.get_params(deep=False).items()
            },
            "n_seen": int(self.n_seen_),
            "n_reseeds": int(self.n_reseeds_),
            "n_refits": int(self.n_refits_),
            "reservoir_seen": int(self._reservoir_seen),
            "next_refit": int(self._next_refit),
            "n_features": getattr(self, "n_features_in_", None),
            "rng": self._rng.bit_generator.state,
            "warm": self._warm.get_state(),
            "buffered": int(self._buffered),  # warm-up events seen, the flagged included
        }
        if self._buffer:
            state["buffer"] = np.concatenate(self._buffer)
        if self._reservoir is not None:
            state["reservoir"] = self._reservoir
        if self.is_fitted:
            state["s0"], state["means"], state["scatter"] = self._s0, self._means, self._scatter
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> OnlineGaussianMixture:
        model = cls(**state["params"])
        model._reset()
        model.n_seen_ = int(state["n_seen"])
        model.n_reseeds_ = int(state["n_reseeds"])
        model.n_refits_ = int(state["n_refits"])
        model._reservoir_seen = int(state["reservoir_seen"])
        model._next_refit = int(state["next_refit"])
        if "reservoir" in state:
            model._reservoir = np.array(state["reservoir"], dtype=np.float64)
        if state["n_features"] is not None:
            model.n_features_in_ = int(state["n_features"])
        model._rng.bit_generator.state = state["rng"]
        model._warm = RunningGaussian.from_state(state["warm"])
        if "buffer" in state:
            model._buffer = [np.array(state["buffer"], dtype=np.float64)]
        # older checkpoints did not count the flagged warm-up events: the kept ones only
        model._buffered = int(state.get("buffered", len(state.get("buffer", ()))))
        if "s0" in state:
            model._set_statistics(state["s0"], state["means"], state["scatter"])
        return model

    def fingerprint(self) -> dict[str, Any]:
        return {
            "n_components": self.n_components,
            "covariance_type": self.covariance_type,
            "n_features": getattr(self, "n_features_in_", None),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` (``.npz``, no pickle, checksummed, atomic)."""
        save_state(
            path, self.get_state(), kind="OnlineGaussianMixture", fingerprint=self.fingerprint()
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> OnlineGaussianMixture:
        """Read a model written by :meth:`save`; a damaged file is refused whole."""
        return cls.from_state(load_state(path, kind="OnlineGaussianMixture"))
