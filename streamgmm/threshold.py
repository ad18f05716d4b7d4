"""Outlier thresholds on the score ``-log p(x)`` (higher is more anomalous).

Three rules, one interface (``flag``, ``update``, ``value``, state):

- :class:`QuantileThreshold` flags scores above a streaming estimate of the
  q-quantile of *normal* scores. Flagged points never feed it, so a burst of
  anomalies cannot raise the threshold and hide itself, whatever its rate.
- :class:`LogLikelihoodThreshold` flags log-likelihoods under a fixed floor.
- :class:`Chi2Threshold` flags points whose squared Mahalanobis distance to
  their best component exceeds the chi-square quantile with d degrees of
  freedom: a per-component test that needs no history.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats


class Ring:
    """The last ``size`` values of a stream, in a fixed array.

    >>> ring = Ring(3)
    >>> ring.extend(np.arange(5.0))
    >>> sorted(ring.values().tolist()), ring.count
    ([2.0, 3.0, 4.0], 5)
    """

    def __init__(self, size: int):
        self.size = int(size)
        self._data = np.empty(self.size)
        self.count = 0  # values written so far; the write position is count % size

    def extend(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        written = len(values)
        values = values[-self.size :]
        n = len(values)
        start = (self.count + written - n) % self.size
        first = min(n, self.size - start)
        self._data[start : start + first] = values[:first]
        self._data[: n - first] = values[first:]
        self.count += written

    def values(self) -> np.ndarray:
        return self._data[: min(self.count, self.size)]

    def get_state(self) -> dict[str, Any]:
        return {"size": self.size, "count": self.count, "data": self.values().copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Ring:
        ring = cls(state["size"])
        data = np.asarray(state["data"], dtype=np.float64)
        ring._data[: len(data)] = data
        ring.count = int(state["count"])
        return ring


class Threshold:
    """Interface shared by the threshold rules."""

    kind = "base"

    def flag(self, scores: np.ndarray, mahalanobis_sq: np.ndarray) -> np.ndarray:
        """Boolean array of shape (n_samples,): which rows are outliers."""
        raise NotImplementedError

    def update(self, inlier_scores: np.ndarray) -> None:
        """Learn from the scores of rows that were not flagged."""

    def bind(self, n_features: int) -> None:
        """Learn the dimension of the data (once the first events are known)."""

    def initialise(self, prior: float, scores: np.ndarray | None = None) -> None:
        """Start from ``prior``, the model's own estimate (see ``Detector``), until data speak."""

    @property
    def value(self) -> float:
        """The current threshold in the units ``flag`` compares (NaN when it has none yet)."""
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": self.get_params()}

    def get_params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Threshold:
        threshold = THRESHOLDS[state["kind"]](**state["params"])
        threshold._set_state(state)
        return threshold

    def _set_state(self, state: dict[str, Any]) -> None:
        pass


class QuantileThreshold(Threshold):
    """Streaming q-quantile of normal scores, extrapolated by an exponential tail.

    Only inliers feed it. Those are the normal scores truncated at the
    threshold itself, so their plain empirical quantile would ratchet the
    threshold down a little at every update; instead the estimate works
    where the truncation does not bite: above u, the inliers' empirical
    ``L``-quantile with ``1 - L = tail_factor * (1 - q)`` (at most 0.1, at
    least ``2 * (1 - q)``), the tail is modelled as exponential (the tail of
    ``-log p`` for a Gaussian is close to that of a chi-square over two) with
    the maximum-likelihood scale sigma of an exponential truncated at the
    threshold T. The share m of normal scores above u follows from the
    truncation, ``m = (1 - L) / (1 - L exp(-(T - u) / sigma))``, and the new
    threshold is

        T = u + sigma * log(m / (1 - q)).

    It corrects itself: after a threshold too low or too high the next
    estimate is right again, as the truncation is measured, not assumed.

    Parameters
    ----------
    q : float
        Target quantile: about ``1 - q`` of normal events are flagged.
    window : int
        How many recent inlier scores the estimate is made from.
    min_count : int
        Inlier scores needed before the estimate replaces the prior given to
        :meth:`initialise` (until then, with no prior, the first scores serve).
    tail_factor : float
        How much wider the modelled tail is than the flagged one.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> threshold = QuantileThreshold(q=0.99)
    >>> for _ in range(20):
    ...     scores = rng.exponential(1.0, 1000)
    ...     flags = threshold.flag(scores, None)
    ...     threshold.update(scores[~flags])
    >>> before = threshold.value   # the true 0.99-quantile is log(100) = 4.61
    >>> round(before, 1)
    4.6
    >>> burst = np.full(5000, 50.0)   # a burst never moves it
    >>> bool(threshold.flag(burst, None).all()), threshold.value == before
    (True, True)
    """

    kind = "quantile"

    def __init__(
        self,
        q: float = 0.999,
        window: int = 20000,
        tail_factor: float = 20.0,
        min_count: int = 1000,
    ):
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), got {q!r}")
        self.q = q
        self.window = int(window)
        self.tail_factor = tail_factor
        self.min_count = int(min_count)
        self._scores = Ring(self.window)
        self._value = math.nan
        self._fresh = 0  # scores added since the last estimate

    def get_params(self) -> dict[str, Any]:
        return {
            "q": self.q,
            "window": self.window,
            "tail_factor": self.tail_factor,
            "min_count": self.min_count,
        }

    def initialise(self, prior: float, scores: np.ndarray | None = None) -> None:
        """Start (again) at ``prior``; ``scores`` (capped at it) seed an emptied window."""
        self._value = float(prior)
        self._scores = Ring(self.window)
        self._fresh = 0
        if scores is not None and len(scores):
            self._scores.extend(scores)

    @property
    def value(self) -> float:
        return self._value

    def flag(self, scores: np.ndarray, mahalanobis_sq: np.ndarray | None) -> np.ndarray:
        if math.isnan(self._value):
            return np.zeros(len(scores), dtype=bool)
        return scores > self._value

    def update(self, inlier_scores: np.ndarray) -> None:
        if len(inlier_scores) == 0:
            return
        self._scores.extend(inlier_scores)
        self._fresh += len(inlier_scores)
        # re-estimating costs a partial sort of the window: do it once per
        # window/40 new scores (every batch for the daemon, every few for river),
        # and more often while the window is still filling
        due = min(self.window // 40, max(1, self._scores.count // 4))
        enough = self._scores.count >= self.min_count or math.isnan(self._value)
        if enough and self._fresh >= due:
            self._fresh = 0
            self._value = self._estimate(self._scores.values())

    def _estimate(self, scores: np.ndarray) -> float:
        # the modelled tail: tail_factor times the flagged one, but no deeper than the
        # 0.9-quantile (the exponential shape holds in the tail, not in the body)
        widen = min(self.tail_factor, max(2.0, 0.1 / (1.0 - self.q)))
        level = 1.0 - widen * (1.0 - self.q)
        if math.isfinite(self._value):
            # older inliers may lie above a threshold since lowered: one truncation for all
            scores = scores[scores <= self._value]
        u, upper = _quantile_and_upper(scores, level)
        limit = self._value - u if math.isfinite(self._value) else math.inf
        sigma = _truncated_exponential_scale(upper[upper > u] - u, limit)
        # share of all normal scores above u, given the inliers stop at the threshold
        above_u = (1.0 - level) / (1.0 - level * math.exp(-limit / sigma))
        return u + sigma * math.log(above_u / (1.0 - self.q))

    def _set_state(self, state: dict[str, Any]) -> None:
        self._scores = Ring.from_state(state["scores"])
        self._value = float(state["value"]) if state["value"] is not None else math.nan
        self._fresh = int(state.get("fresh", 0))

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["scores"] = self._scores.get_state()
        state["value"] = None if math.isnan(self._value) else self._value
        state["fresh"] = self._fresh
        return state


def _quantile_and_upper(scores: np.ndarray, level: float) -> tuple[float, np.ndarray]:
    """``np.quantile(scores, level)`` (its linear method, to the last bit) and the scores
    that may lie above it, from one partition: a single-kth partition is several times
    faster than the two-kth one np.quantile does (it runs once per estimate).

    >>> x = np.random.default_rng(0).normal(size=1001)
    >>> u, upper = _quantile_and_upper(x, 0.98)
    >>> u == float(np.quantile(x, 0.98))
    True
    >>> np.array_equal(np.sort(x[x > u]), np.sort(upper[upper > u]))
    True
    """
    n = len(scores)
    index = level * (n - 1)
    below = math.floor(index)
    if below >= n - 1:
        return float(scores.max()), scores[:0]
    part = np.partition(scores, below)
    a = part[below]
    upper = part[below + 1 :]
    b = upper.min()
    t = index - below
    # numpy's _lerp: the formula it uses on each side of t = 0.5
    u = b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t
    return float(u), upper


def _truncated_exponential_scale(excess: np.ndarray, limit: float) -> float:
    """MLE of the scale of an exponential observed only below ``limit``.

    The mean of an exponential of scale s truncated at c is
    ``s - c / (exp(c / s) - 1)``; solve it for s by fixed-point iteration.
    With fewer than 5 points there is nothing to estimate: scale 1, the
    tail of -log p of a Gaussian.
    """
    if len(excess) < 5:
        return 1.0
    mean = float(excess.mean())
    if mean <= 0:
        return 1e-6
    if not math.isfinite(limit) or limit <= 0:
        return mean
    if mean >= limit / 2:  # flat up to the limit: the tail says nothing finer
        return 2.0 * mean
    scale = mean
    for _ in range(100):
        ratio = limit / scale
        new = mean + (limit / math.expm1(ratio) if ratio < 700 else 0.0)
        if abs(new - scale) < 1e-9 * scale:
            return new
        scale = new
    return scale


class LogLikelihoodThreshold(Threshold):
    """Flag events whose log-likelihood is under a fixed floor.

    >>> LogLikelihoodThreshold(-20.0).flag(np.array([5.0, 25.0]), None).tolist()
    [False, True]
    """

    kind = "loglik"

    def __init__(self, loglik: float):
        self.loglik = float(loglik)

    def get_params(self) -> dict[str, Any]:
        return {"loglik": self.loglik}

    @property
    def value(self) -> float:
        return -self.loglik

    def flag(self, scores: np.ndarray, mahalanobis_sq: np.ndarray | None) -> np.ndarray:
        return scores > -self.loglik


class Chi2Threshold(Threshold):
    """Flag events too far from their best component: Mahalanobis² above chi2(d).ppf(p).

    >>> t = Chi2Threshold(0.99, n_features=2)
    >>> round(t.value, 2), t.flag(None, np.array([1.0, 10.0])).tolist()
    (9.21, [False, True])
    """

    kind = "chi2"

    def __init__(self, probability: float = 0.9999, n_features: int | None = None):
        if not 0 < probability < 1:
            raise ValueError(f"probability must be in (0, 1), got {probability!r}")
        self.probability = probability
        self.n_features = None
        self._critical = math.nan
        if n_features is not None:
            self.bind(n_features)

    def bind(self, n_features: int) -> None:
        self.n_features = int(n_features)
        self._critical = float(stats.chi2.ppf(self.probability, self.n_features))

    def get_params(self) -> dict[str, Any]:
        # the configuration only: n_features is bound at the warm-up, it is state
        return {"probability": self.probability}

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["n_features"] = self.n_features
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        # older checkpoints kept n_features among the parameters (bound in __init__)
        if state.get("n_features") is not None:
            self.bind(state["n_features"])

    @property
    def value(self) -> float:
        return self._critical

    def flag(self, scores: np.ndarray | None, mahalanobis_sq: np.ndarray) -> np.ndarray:
        return np.asarray(mahalanobis_sq) > self._critical  # NaN before bind: nothing flagged


THRESHOLDS: dict[str, type[Threshold]] = {
    cls.kind: cls for cls in (QuantileThreshold, LogLikelihoodThreshold, Chi2Threshold)
}


def make_threshold(kind: str, **params: Any) -> Threshold:
    """Build a threshold from its config: ``kind`` and that kind's parameters.

    >>> make_threshold("quantile", q=0.99).value   # nothing learnt yet
    nan
    """
    if kind not in THRESHOLDS:
        raise ValueError(f"threshold kind must be one of {', '.join(THRESHOLDS)}, got {kind!r}")
    return THRESHOLDS[kind](**params)
