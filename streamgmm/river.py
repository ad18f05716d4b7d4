"""river adapter: :class:`GMMDetector`, an ``anomaly.base.AnomalyDetector``.

Works wherever river expects an anomaly detector: in pipelines after a
scaler, under ``anomaly.QuantileFilter`` / ``ThresholdFilter``, and with
river's evaluation tools. ``score_one`` returns ``-log p(x)`` (higher is
more anomalous, river's convention).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from river.base import AnomalyDetector

from .detector import Detector, _check_events
from .gmm import MAX_ABS_INPUT


class GMMDetector(AnomalyDetector):
    """Online Gaussian mixture anomaly detector for river.

    The features of the first event fix the feature order; a later event
    missing one of them is scored and learnt with 0 in its place (river's
    habit for sparse dicts).

    Learning is batched exactly as :meth:`Detector.process` learns: event by event
    in the warm-up, then in micro-batches of ``micro_batch`` events, each scored
    under the model as it was before it. ``score_one`` therefore gives the score
    the batch path gives the same event in the same stream, whatever its batches
    (a value too large to be squared included), except before the first event
    is learnt, when it returns 0.0 (nothing is known yet). ``learn_one`` refuses an
    event with no features, or with a NaN, infinite or non-numeric value
    (ValueError), and keeps nothing of it, as :meth:`Detector.process` refuses a batch.

    Parameters
    ----------
    **detector_params
        Passed to :class:`streamgmm.detector.Detector` (``n_components``,
        ``warmup``, ``half_life``, ``micro_batch``, ``threshold``...).

    Examples
    --------
    >>> import numpy as np
    >>> from river import anomaly
    >>> rng = np.random.default_rng(42)
    >>> model = GMMDetector(warmup=100, random_state=0)
    >>> for x in rng.normal(size=(1000, 2)):
    ...     model.learn_one({"a": x[0], "b": x[1]})
    >>> model.score_one({"a": 0.0, "b": 0.0}) < model.score_one({"a": 6.0, "b": -6.0})
    True
    >>> flagged = anomaly.QuantileFilter(GMMDetector(warmup=100), q=0.99)
    >>> isinstance(flagged.anomaly_detector, AnomalyDetector)
    True
    """

    def __init__(self, **detector_params: Any):
        self.detector_params = detector_params
        self.detector = Detector(**detector_params)
        self._features: list | None = None
        self._pending: list[list[float]] = []

    @classmethod
    def _unit_test_params(cls):
        yield {"warmup": 20}

    def _vector(self, x: dict) -> list[float]:
        if self._features is None:
            self._features = list(x)
        return [float(x.get(name, 0.0)) for name in self._features]

    def _checked_row(self, x: dict) -> np.ndarray:
        """The event as a row of finite floats, or a ValueError saying why not."""
        try:
            row = self._vector(x)
        except (TypeError, ValueError, OverflowError) as error:
            raise ValueError(
                f"the event has a value that is not a number: {x!r} ({error})"
            ) from error
        return _check_events([row], self.detector.n_features)[0]  # as process() checks

    def learn_one(self, x: dict) -> None:
        first = self._features is None
        try:
            row = self._checked_row(x)
        except ValueError:
            if first:
                self._features = None  # a refused first event does not fix the fields
            raise
        self._pending.append(row)
        if len(self._pending) >= self.detector.events_to_update:
            self.detector.process(np.asarray(self._pending, dtype=np.float64))
            self._pending = []

    def score_one(self, x: dict) -> float:
        if self._features is None:
            return 0.0
        row = np.array(self._vector(x), dtype=np.float64)
        detector = self.detector
        if detector.is_warmed_up and np.isfinite(row).all():
            standardizer = detector.standardizer
            z = (row - standardizer.mean) / standardizer.scale
            if np.abs(z).max(initial=0.0) <= MAX_ABS_INPUT:
                return standardizer.log_scale_sum - detector.model.log_likelihood_one(z)
        # the warm-up, values too large to be squared, and errors: the checked path
        return float(detector.outlier_scores(row[None, :])[0])
