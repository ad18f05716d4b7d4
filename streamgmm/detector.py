"""Detector: standardiser + online mixture + threshold + explanation + quarantine.

The one object the daemon talks to: ``process(X)`` scores a batch with the
model as it was before the batch (prequential), decides the outliers, learns
the rest, and returns everything a record needs.

Life of a detector:

1. Warm-up. The first ``warmup`` events are scored one by one, each by a
   Gaussian KDE of the kept events before it (an honest score, not none;
   kernels 0.7 running standard deviations wide); after 50
   events, one far out even for the running diagonal Gaussian of those events
   is flagged and left out. Then the standardiser is fixed from the kept events (mean and
   standard deviation of each feature), the mixture is fitted on them by batch
   EM (K chosen by BIC when ``n_components="auto"``), and the threshold starts
   from the mixture's own score quantile.
2. Scoring, in micro-batches of ``micro_batch`` events aligned on the event
   count: each is scored under the model as it was before it, then its inliers
   are learnt. The outliers are not learnt (unless ``learn_from_outliers``), so
   an attack cannot teach the model that it is normal, and they do not feed
   the threshold, so a burst cannot hide itself. The answers are the same
   however the stream is cut into calls.
3. Quarantine. Never learning flagged events would lock the detector out
   after a level shift: every event of the new regime is flagged, forever.
   Flagged events therefore wait in a quarantine, and the detector keeps a
   moving share of flagged events over the last ``patience`` events. When
   that share passes ``regime_share``, the anomalies are no longer rare: they
   are a new regime. Components fitted to the quarantined events join the
   mixture (they take nothing from the components that explain the rest of
   the traffic), the threshold starts again from the new mixture, and from
   then on the new regime is scored and learnt as normal. A burst of one
   pattern shorter than about ``patience * regime_share`` events, or an attack
   on half the traffic for fewer than about ``patience`` events, stays flagged.
   One case does not wait: when most of the traffic (over 70%) has been
   flagged for a few hundred events and the flagged events are many and spread
   like traffic (not a flood that repeats a few events or sits far narrower
   than any component, nor garbage far wider), the traffic moved as a whole and
   the model describes little of it; it becomes a new regime at once
   (:meth:`Quarantine.is_lockout`).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> detector = Detector(warmup=200, random_state=0)
>>> normal = rng.normal(size=(2000, 3))
>>> result = detector.process(normal)
>>> bool(result.is_warmup[:200].all()), bool(result.is_warmup[200:].any())
(True, False)
>>> result = detector.process(np.array([[0.1, -0.2, 0.3], [9.0, 0.0, 0.0]]))
>>> result.is_outlier.tolist(), int(np.argmax(np.abs(result.contributions[1])))
([False, True], 0)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checkpoint import load_state, save_state
from .defaults import ENTITY_DEFAULTS, MIN_WARMUP, MODEL_DEFAULTS
from .entities import EntityTable, field_surprise_diag, mixture_terms
from .gmm import (
    MAX_ABS_INPUT,
    Evaluation,
    OnlineGaussianMixture,
    RunningGaussian,
    _logsumexp_rows,
)
from .threshold import QuantileThreshold, Threshold

WARMUP_FLAG_AFTER = 50  # warm-up events before the running Gaussian flags anything
WARMUP_FLAG_PROBABILITY = 1e-6  # chi-square tail beyond which a warm-up event is an outlier
WARMUP_FITS = 3  # fits of the warm-up at most: each drops the events of too small components
MICRO_BATCH = 256  # events per model update after the warm-up (benchmarks/README.md, "cuts")
# standardised values past it are never folded into the entities' float32 statistics, and
# are scored at it by the entities' models (float32 squares stay finite)
ENTITY_MAX_ABS = 1e4


@dataclass(frozen=True)
class BatchResult:
    """What ``Detector.process`` says about a batch of n events, d features, K components.

    Attributes
    ----------
    log_likelihood : array of shape (n,)
        ``log p(x)`` in the units of the input, under the model before the batch.
    score : array of shape (n,)
        ``-log_likelihood``: higher is more anomalous.
    threshold : array of shape (n,)
        The threshold in force for each event (in the units its rule compares:
        score for quantile and loglik, squared Mahalanobis distance for chi2; in
        the warm-up, the score plus half the squared distance to the warm-up
        Gaussian that it still lacks to be flagged, so that ``score > threshold``
        is the flag; NaN before the warm-up Gaussian flags anything).
    is_outlier : array of shape (n,), bool
    is_warmup : array of shape (n,), bool
        Scored by the warm-up's KDE; outliers only when far out for the warm-up
        Gaussian.
    component : array of shape (n,), int
        Most responsible component (-1 during warm-up).
    responsibilities : array of shape (n, K)
        Soft membership (empty rows, K = 0, during warm-up).
    mahalanobis : array of shape (n,)
        Distance to the best component (to the warm-up Gaussian in warm-up).
    contributions : array of shape (n, d)
        Per-feature standardised residuals to the best component.
    surprise : array of shape (n, d)
        Field surprise ``-log p(x_j | x_-j)`` in nats (see
        :meth:`~streamgmm.gmm.OnlineGaussianMixture.field_surprise`): the field
        with the highest is the odd one, given the others. Computed on the
        standardised fields, so the ranking of fields does not depend on the
        units each is measured in. In warm-up, the running Gaussian's
        ``-log N(z_j; 0, 1)`` with z_j the field in its own standard deviations.
    expected : array of shape (n, d)
        ``E[x_j | x_-j]``, what the model expected of each field given the
        others, in the field's own units (the running mean in warm-up).
    """

    log_likelihood: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    is_outlier: np.ndarray
    is_warmup: np.ndarray
    component: np.ndarray
    responsibilities: np.ndarray
    mahalanobis: np.ndarray
    contributions: np.ndarray
    surprise: np.ndarray
    expected: np.ndarray

    def __len__(self) -> int:
        return len(self.score)


def _concat(results: list[BatchResult]) -> BatchResult:
    if len(results) == 1:
        return results[0]
    width = max(r.responsibilities.shape[1] for r in results)

    def pad(resp: np.ndarray) -> np.ndarray:
        if resp.shape[1] == width:
            return resp
        return np.pad(resp, ((0, 0), (0, width - resp.shape[1])))

    return BatchResult(
        log_likelihood=np.concatenate([r.log_likelihood for r in results]),
        score=np.concatenate([r.score for r in results]),
        threshold=np.concatenate([r.threshold for r in results]),
        is_outlier=np.concatenate([r.is_outlier for r in results]),
        is_warmup=np.concatenate([r.is_warmup for r in results]),
        component=np.concatenate([r.component for r in results]),
        responsibilities=np.concatenate([pad(r.responsibilities) for r in results]),
        mahalanobis=np.concatenate([r.mahalanobis for r in results]),
        contributions=np.concatenate([r.contributions for r in results]),
        surprise=np.concatenate([r.surprise for r in results]),
        expected=np.concatenate([r.expected for r in results]),
    )


class Standardizer:
    """Per-feature centring and scaling, fixed once from the warm-up events.

    A constant feature keeps scale 1 (nothing to divide by).
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.log_scale_sum = float(np.log(self.scale).sum())

    @classmethod
    def fit(cls, X: np.ndarray, enabled: bool = True) -> Standardizer:
        if not enabled:
            return cls(np.zeros(X.shape[1]), np.ones(X.shape[1]))
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        tiny = 1e-9 * np.maximum(np.abs(mean), 1.0)
        return cls(mean, np.where(scale > tiny, scale, 1.0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.scale


class Quarantine:
    """Recent flagged events, and the moving share of flagged events.

    Parameters
    ----------
    patience : int
        Horizon, in events, of the moving share of flagged events that decides
        when flagged events are a new regime.
    capacity : int
        How many of the latest flagged events are kept.
    """

    RECENT = 1000  # horizon, in events, of the share that sizes a new regime
    BRIEF = 100  # horizon, in events, of the share that tells a lock-out
    LOCKED_OUT = 0.7  # brief share past which the model explains too little of the traffic
    DISTINCT = 0.5  # least share of distinct events among the latest flagged: not a replay
    # the latest flagged events spread like traffic: between half and a hundred times the
    # components' standard deviations (geometric means over the fields), not a flood, nor
    # the garbage of a broken producer
    SPREAD = (0.5, 100.0)

    def __init__(self, patience: int = 8000, capacity: int = 2000):
        self.patience = int(patience)
        self.capacity = int(capacity)
        self.share = 0.0
        self.recent = 0.0
        self.brief = 0.0
        self.rows: np.ndarray | None = None

    def observe(self, flagged_rows: np.ndarray, n_events: int) -> None:
        flagged = len(flagged_rows) / max(n_events, 1)
        self.share = _moving_share(self.share, flagged, n_events, self.patience)
        self.recent = _moving_share(self.recent, flagged, n_events, self.RECENT)
        self.brief = _moving_share(self.brief, flagged, n_events, self.BRIEF)
        if len(flagged_rows):
            kept = flagged_rows if self.rows is None else np.concatenate([self.rows, flagged_rows])
            self.rows = kept[-self.capacity :]

    def is_lockout(self, log_variance: Callable[[], np.ndarray]) -> bool:
        """Most of the latest traffic is flagged, and it spreads like traffic: the
        traffic moved as a whole (a deployment, a new kind of host, a constant stream
        that starts to vary) and the model describes little of it.

        ``log_variance()`` (d,): the model's components' log-variance of each field,
        by weight, asked for only when the brief share is high. A flood (a replayed
        request, a retry storm) repeats a few events, or is far narrower than the
        components, and a broken producer's garbage is far wider: they stay on the slow
        rule (``regime_share`` over ``patience``), as does an attack on half the
        traffic, whose brief share stays far below ``LOCKED_OUT``."""
        if self.brief < self.LOCKED_OUT or len(self) < 2:
            return False
        latest = self.rows[-2 * self.BRIEF :]
        if len(np.unique(latest, axis=0)) < self.DISTINCT * len(latest):
            return False  # a replay of a few events
        spread = np.log(np.maximum(latest.var(axis=0), np.finfo(float).tiny)).mean()
        components = log_variance().mean()
        low, high = (components + 2.0 * math.log(ratio) for ratio in self.SPREAD)
        return bool(low <= spread <= high)

    def release(self) -> np.ndarray:
        rows, self.rows, self.share, self.brief = self.rows, None, 0.0, 0.0
        return rows

    def __len__(self) -> int:
        return 0 if self.rows is None else len(self.rows)


def _moving_share(share: float, flagged: float, n_events: int, horizon: int) -> float:
    """An exponentially weighted share over ``horizon`` events, moved by ``n_events``
    events of which the share ``flagged`` were flagged."""
    decay = (1.0 - 1.0 / horizon) ** n_events
    return share * decay + (1.0 - decay) * flagged


class Detector:
    """Streaming anomaly detector over an online Gaussian mixture.

    Its answers depend on the sequence of events only, never on how the stream is
    cut into batches: the warm-up scores events one by one, and after it the
    events are scored in micro-batches of ``micro_batch`` events aligned on the
    event count, each under the model as it was before the micro-batch, which is
    then learnt. A call that ends inside a micro-batch scores its events and keeps
    them until the micro-batch is complete.

    The model's defaults come from :data:`streamgmm.defaults.MODEL_DEFAULTS`,
    as those of the daemon's ``model`` section.

    Parameters
    ----------
    n_components : int or "auto"
        Mixture size; ``"auto"`` picks it by BIC on the warm-up events, up to
        ``max_components``.
    covariance_type : {"full", "diag", "spherical"}
    warmup : int
        Events seen before the mixture is fitted. More gives a better
        first model; fewer flags sooner.
    standardize : bool
        Scale features by their warm-up mean and standard deviation (then
        fixed). ``reg_covar`` is in those units.
    reg_covar : float
        Variance floor in standardised units: keeps components from
        collapsing onto repeated or discrete values, which would give them
        absurd densities and make the rare look the most normal.
    half_life : int or None
        Events after which an event's weight in the model has halved: a
        forgetting model for drifting streams. None learns from the whole
        stream, the best estimate when the stream is stationary.
    learn_from_outliers : bool
        Learn flagged events at once (no quarantine).
    threshold : Threshold or None
        Default: :class:`~streamgmm.threshold.QuantileThreshold` (q = 0.999).
    warmup_trim : float
        Share of the least likely warm-up events left out of the first fit.
    min_component_share : float
        Smallest weight a component of the warm-up fit may have. A smaller
        one is a handful of events, not a regime: typically anomalies among
        the first events, before anything can judge them, that would
        otherwise win a component of their own and make their kind look
        normal from then on. Its events are left out and the warm-up is
        fitted again.
    refits : int
        Batch refits on a reservoir of learnt events after the warm-up (see
        :class:`~streamgmm.gmm.OnlineGaussianMixture`). Off by default here:
        on a stream with unflagged anomalies, a refit gives them another
        chance to win a component, while the warm-up fit is trimmed.
    patience, regime_share : int, float
        Quarantine: flagged events become a new regime once they make up
        ``regime_share`` of the moving share over ``patience`` events.
    micro_batch : int
        Events per model update after the warm-up (see above). Smaller reacts
        sooner to a new regime and costs more per event.
    n_init : int
        k-means++ starts of each batch fit (the warm-up, a new regime); the best
        likelihood wins. More starts make the first mixture depend less on the seed.
    min_entity_events, relevance, max_entities, idle_ttl_s
        Per-entity models (``process(X, keys=...)``, see :mod:`streamgmm.entities`):
        events an entity learns before its adapted model scores it (at least
        ``sqrt(8 d)``, see :attr:`own_model_events`); the MAP
        relevance factor r; the cap on entities held (evicted by decayed
        activity past it); seconds without an event before an entity is dropped.
    """

    def __init__(
        self,
        n_components: int | str = MODEL_DEFAULTS.n_components,
        covariance_type: str = MODEL_DEFAULTS.covariance_type,
        warmup: int = MODEL_DEFAULTS.warmup,
        standardize: bool = MODEL_DEFAULTS.standardize,
        reg_covar: float = MODEL_DEFAULTS.reg_covar,
        half_life: float | None = MODEL_DEFAULTS.half_life,
        learn_from_outliers: bool = MODEL_DEFAULTS.learn_from_outliers,
        threshold: Threshold | None = None,
        max_components: int = MODEL_DEFAULTS.max_components,
        patience: int = 8000,
        regime_share: float = 0.25,
        warmup_trim: float = 0.05,
        min_component_share: float = 0.02,
        refits: int = 0,
        micro_batch: int = MICRO_BATCH,
        n_init: int = MODEL_DEFAULTS.n_init,
        random_state: int | None = MODEL_DEFAULTS.random_state,
        min_entity_events: int = ENTITY_DEFAULTS.min_events,
        relevance: float = ENTITY_DEFAULTS.relevance,
        max_entities: int = ENTITY_DEFAULTS.max_entities,
        idle_ttl_s: float | None = ENTITY_DEFAULTS.idle_ttl_s,
    ):
        if int(warmup) < MIN_WARMUP:
            raise ValueError(f"warmup must be >= {MIN_WARMUP} events, got {warmup!r}")
        if not 0 <= min_component_share < 1:
            raise ValueError(f"min_component_share must be in [0, 1), got {min_component_share!r}")
        if not 0 < regime_share <= 1:
            raise ValueError(f"regime_share must be in (0, 1], got {regime_share!r}")
        if int(micro_batch) < 1:
            raise ValueError(f"micro_batch must be >= 1 event, got {micro_batch!r}")
        if int(min_entity_events) < 1:
            raise ValueError(f"min_entity_events must be >= 1, got {min_entity_events!r}")
        if not relevance > 0:
            raise ValueError(f"relevance must be > 0, got {relevance!r}")
        self.warmup = int(warmup)
        self.standardize = standardize
        self.learn_from_outliers = learn_from_outliers
        self.regime_share = regime_share
        self.warmup_trim = warmup_trim
        self.min_component_share = float(min_component_share)
        self.micro_batch = int(micro_batch)
        self.model = OnlineGaussianMixture(
            n_components=n_components,
            covariance_type=covariance_type,
            reg_covar=reg_covar,
            warmup=warmup,
            half_life=half_life,
            trim=warmup_trim,
            refits=refits,
            max_components=max_components,
            n_init=n_init,
            random_state=random_state,
        )
        # started at once (parameters checked, counters at 0), as a first partial_fit would
        self.model._reset()
        self.threshold = threshold if threshold is not None else QuantileThreshold(0.999)
        self.quarantine = Quarantine(patience)
        self.standardizer: Standardizer | None = None
        self.n_seen = 0
        self.n_outliers = 0
        self.n_regime_changes = 0
        self.n_warmup_dropped = 0
        self._pending: list[_Scored] = []
        # the entity columns (keys, has_key, offsets) of the warm-up events kept, in the
        # order of the model's warm-up buffer (None: a call without keys)
        self._warm_entities: list[tuple[int, tuple[np.ndarray, ...] | None]] = []
        self.min_entity_events = int(min_entity_events)
        self.relevance = float(relevance)
        # K and d are known after the warm-up; until then, an empty table
        self.entities = EntityTable(0, 0, max_entities, idle_ttl_s)
        self._now = 0.0

    # -- state --------------------------------------------------------------

    @property
    def is_warmed_up(self) -> bool:
        return self.standardizer is not None

    @property
    def n_features(self) -> int | None:
        return getattr(self.model, "n_features_in_", None)

    @property
    def own_model_events(self) -> int:
        """Events an entity learns before its own model scores it: ``min_entity_events``,
        and at least ``sqrt(8 d)`` for d fields. A young model's variances, estimated
        from n events, bias its scores up by about d / n nats against the spread
        sqrt(d / 2) of a mature model's: past sqrt(8 d) events the bias is under half
        that spread (d = 300: 49 events; measured: with 20, 13-27% of a stream of 50
        young entities flagged, 0-0.4% with 60)."""
        d = self.n_features or 0
        return max(self.min_entity_events, math.ceil(math.sqrt(8.0 * d)))

    @property
    def n_pending(self) -> int:
        """Events scored in the current micro-batch, learnt when it is complete."""
        return sum(len(piece.Z) for piece in self._pending)

    @property
    def pending_offset(self) -> int | None:
        """Input offset of the first event of the current micro-batch (scored, not yet
        learnt by the entities); None when nothing is pending or no offsets were given.

        An entity's state saved now holds its learning of the events before it, not
        of those after: the offset an entity record carries (``learn_from`` on load).
        """
        for piece in self._pending:
            if piece.offsets is not None and len(piece.offsets):
                return int(piece.offsets[0])
        return None

    @property
    def events_to_update(self) -> int:
        """Events until the model next changes: 1 in the warm-up, else the rest of the
        micro-batch. A caller that scores events one by one (river) learns them in
        groups of this size and scores exactly as the batch path does."""
        return 1 if not self.is_warmed_up else self.micro_batch - self.n_pending

    def fingerprint(self, fields: list[str] | None = None) -> dict[str, Any]:
        """What a saved state is only valid for."""
        fingerprint = {
            "n_components": self.model.n_components,
            "covariance_type": self.model.covariance_type,
            "standardize": self.standardize,
        }
        if fields is not None:
            fingerprint["fields"] = list(fields)
        return fingerprint

    # -- the batch path -----------------------------------------------------

    def process(
        self,
        X,
        keys: Sequence[str | None] | None = None,
        offsets: Sequence[int] | np.ndarray | None = None,
        now: float | None = None,
    ) -> BatchResult:
        """Score a batch with the model as it was, flag outliers, learn the rest.

        Parameters
        ----------
        X : array-like of shape (n_events, n_features)
            Finite values; a value too large to be squared makes its event an outlier.
        keys : sequence of (str or None) of length n_events, or None
            The entity of each event. An entity that has learnt ``min_entity_events``
            events is scored under its own adapted model (as it was before the
            micro-batch), the others, ``None`` and ``""`` under the population. Scores stay
            ``-log p(x)`` in event units; the entity-scored events are flagged by the
            entities' own threshold (the same rule, learnt from their scores: an
            adapted model scores its entity's events far more tightly than the
            population does). Without keys: the population only. For
            ``covariance_type="full"`` the ``surprise`` and ``expected`` of
            entity-scored events are the population's.
        offsets : array-like of int of shape (n_events,), or None
            Input offsets: an entity loaded with ``learn_from`` learns no event below it.
        now : float or None
            Wall-clock seconds (default ``time.time()``): the entities' last-seen time
            for ``idle_ttl_s``.
        """
        X = _check_events(X, self.n_features)
        self._now = time.time() if now is None else float(now)
        entity = _entity_columns(keys, offsets, len(X))
        results = []
        start = 0
        while not self.is_warmed_up and start < len(X):
            stop = start + max(self.model.warmup_remaining, 1)
            piece = None if entity is None else tuple(c[start:stop] for c in entity)
            results.append(self._warmup_rows(X[start:stop], piece))
            start = min(stop, len(X))
            if self.model.warmup_remaining == 0:
                self._finish_warmup()
        while start < len(X):
            stop = start + self.micro_batch - self.n_pending
            piece = None if entity is None else tuple(c[start:stop] for c in entity)
            results.append(self._score_rows(X[start:stop], piece))
            start = min(stop, len(X))
            if self.n_pending >= self.micro_batch:
                self._learn_pending()
        result = _concat(results) if results else self._empty_result(X)
        self.n_seen += len(X)
        self.n_outliers += int(result.is_outlier.sum())
        return result

    def outlier_scores(self, X) -> np.ndarray:
        """Outlier scores ``-log p(x)`` of a batch (higher is more anomalous), learning nothing.

        The opposite sign of :meth:`OnlineGaussianMixture.score_samples`, in the
        units of the input (the standardisation's Jacobian included).

        Parameters
        ----------
        X : array-like of shape (n_events, n_features)

        Returns
        -------
        scores : array of shape (n_events,)
        """
        X = _check_events(X, self.n_features)
        if not self.is_warmed_up:
            return -self.model.warmup_log_likelihood(X)
        Z, _ = self._standardised(X)
        return self.standardizer.log_scale_sum - self.model.log_likelihood_unchecked(Z)

    def _standardised(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X standardised, with the rows too large to be squared clipped to the limit
        (they are scored there, as outliers): Z (n, d) and those rows (n,), bool."""
        Z = self.standardizer.transform(X)
        huge = np.abs(Z).max(axis=1, initial=0.0) > MAX_ABS_INPUT
        if huge.any():
            Z = np.clip(Z, -MAX_ABS_INPUT, MAX_ABS_INPUT)
        return Z, huge

    def _empty_result(self, X: np.ndarray) -> BatchResult:
        n, d = X.shape
        width = self.model.n_components_
        return BatchResult(
            log_likelihood=np.empty(0),
            score=np.empty(0),
            threshold=np.empty(0),
            is_outlier=np.zeros(0, dtype=bool),
            is_warmup=np.zeros(0, dtype=bool),
            component=np.zeros(0, dtype=int),
            responsibilities=np.empty((n, width)),
            mahalanobis=np.empty(0),
            contributions=np.empty((0, d)),
            surprise=np.empty((0, d)),
            expected=np.empty((0, d)),
        )

    def _warmup_rows(self, X: np.ndarray, entity: tuple[np.ndarray, ...] | None) -> BatchResult:
        n = len(X)
        scores = self.model.warmup_step(X, WARMUP_FLAG_AFTER, WARMUP_FLAG_PROBABILITY)
        kept = ~scores.flagged
        self._warm_entities.append(
            (int(kept.sum()), None if entity is None else tuple(c[kept] for c in entity))
        )
        return BatchResult(
            log_likelihood=scores.log_likelihood,
            score=-scores.log_likelihood,
            threshold=scores.threshold,
            is_outlier=scores.flagged,
            is_warmup=np.ones(n, dtype=bool),
            component=np.full(n, -1),
            responsibilities=np.empty((n, 0)),
            mahalanobis=np.sqrt(scores.distance_sq),
            contributions=scores.centred,
            # one diagonal Gaussian: each field's surprise is its own, in its own sd
            surprise=0.5 * (math.log(2.0 * math.pi) + scores.centred**2),
            expected=scores.mean,
        )

    def _finish_warmup(self) -> None:
        buffer = self.model.warmup_buffer()
        if len(buffer) == 0:  # every warm-up event was flagged: nothing to fit yet
            self.model.restart_warmup()
            self._warm_entities = []
            return
        Z = self._fit_warmup(buffer)
        self.threshold.bind(buffer.shape[1])
        self._anchor_threshold(Z)
        self._new_entity_table()  # the entities' threshold starts from the anchored one
        self._learn_warmup_entities(buffer)

    def _warmup_entity_columns(self) -> tuple[np.ndarray, ...] | None:
        """The entity columns of the warm-up buffer's events, None if no call had keys."""
        pieces = self._warm_entities
        if all(piece is None for _, piece in pieces):
            return None
        no_key = (np.array([], dtype=str), np.array([], dtype=bool), np.array([], dtype=np.int64))
        filled = [
            piece
            if piece is not None
            else (np.full(n, "", dtype=str), np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64))
            for n, piece in pieces
        ]
        return tuple(np.concatenate([no_key[i], *(p[i] for p in filled)]) for i in range(3))

    def _learn_warmup_entities(self, buffer: np.ndarray) -> None:
        """The warm-up's events teach their entities too, under the mixture just fitted,
        those it does not flag: an entity's own model can score it as soon as it has
        ``min_entity_events`` events, counted from the stream's first event, not from
        the warm-up's end (a partition's first ``warmup`` events are not lost to it)."""
        columns, self._warm_entities = self._warmup_entity_columns(), []
        if columns is None or len(columns[0]) != len(buffer):
            return  # no keys (or a warm-up started again): nothing to align
        Z, huge = self._standardised(buffer)
        evaluation = self.model.evaluate(Z)
        score, outlier = self._population_flags(evaluation, huge)
        none = np.zeros(len(Z), dtype=bool)
        self._learn_entities(_Scored(Z, evaluation, outlier, score, huge, outlier, none, *columns))
        # the entities' threshold starts from their models' scores of these events, as the
        # population's starts from the mixture's (else their first micro-batch would be
        # judged by the population's, far above an adapted model's scores)
        rows = self._scoring_rows(*columns[:2])[0]
        use = (rows >= 0) & ~outlier
        if use.any() and isinstance(self.entity_threshold, QuantileThreshold):
            own_ll = self._entity_scores(Z[use], rows[use], _subset(evaluation, use))[0]
            self.entity_threshold.initialise(math.nan)
            self.entity_threshold.update(self.standardizer.log_scale_sum - own_ll)

    def _anchor_threshold(self, Z: np.ndarray) -> None:
        """Start a quantile threshold from the model's own quantile, and the scores of Z
        under the model, none above it: anomalies among Z cannot lift it over them."""
        if isinstance(self.threshold, QuantileThreshold):
            prior = self.model_score_quantile(self.threshold.q)
            scores = self.standardizer.log_scale_sum - self.model.score_samples(Z)
            self.threshold.initialise(prior, np.minimum(scores, prior))

    def _fit_warmup(self, buffer: np.ndarray) -> np.ndarray:
        """Fit the standardiser and the mixture; refit without the events of tiny components.

        Returns the standardised warm-up events the final fit was made on.
        """
        for _ in range(WARMUP_FITS):
            self.standardizer = Standardizer.fit(buffer, self.standardize)
            Z = self.standardizer.transform(buffer)
            self.model.fit(Z)
            small = self.model.weights_ < self.min_component_share
            if not small.any() or small.all():
                break
            kept = ~small[self.model.predict(Z)]
            self.n_warmup_dropped += int((~kept).sum())
            buffer = buffer[kept]
        return Z

    def model_score_quantile(self, q: float) -> float:
        """The q-quantile of scores the model predicts for its own events, in event units."""
        return self.standardizer.log_scale_sum + self.model.score_quantile(q)

    def _score_rows(self, X: np.ndarray, entity: tuple | None = None) -> BatchResult:
        """Score rows of the current micro-batch under the model before it; keep them.

        ``entity``: (keys (n,) str, has_key (n,) bool, offsets (n,) int64) or None."""
        Z, huge = self._standardised(X)
        evaluation = self.model.evaluate(Z)
        if entity is not None:
            return self._score_keyed_rows(Z, huge, evaluation, entity)
        explanation = self.model.explain(Z, evaluation)
        log_likelihood = evaluation.log_likelihood - self.standardizer.log_scale_sum
        score = -log_likelihood
        outlier = self.threshold.flag(score, explanation["mahalanobis"] ** 2) | huge
        self._pending.append(_Scored(Z, evaluation, outlier, score, huge))
        return self._result(
            log_likelihood,
            np.full(len(X), self.threshold.value),
            outlier,
            evaluation.responsibilities,
            explanation,
        )

    def _result(self, log_likelihood, threshold, outlier, responsibilities, explanation):
        return BatchResult(
            log_likelihood=log_likelihood,
            score=-log_likelihood,
            threshold=threshold,
            is_outlier=outlier,
            is_warmup=np.zeros(len(outlier), dtype=bool),
            component=explanation["component"],
            responsibilities=responsibilities,
            mahalanobis=explanation["mahalanobis"],
            contributions=explanation["contributions"],
            surprise=explanation["surprise"],
            expected=explanation["expected"] * self.standardizer.scale + self.standardizer.mean,
        )

    def _population_flags(
        self, evaluation: Evaluation, huge: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The population's scores (n,) of evaluated events and its outlier flags (n,)."""
        score = self.standardizer.log_scale_sum - evaluation.log_likelihood
        best = evaluation.responsibilities.argmax(axis=1)
        distance_sq = evaluation.mahalanobis_sq[np.arange(len(score)), best]
        return score, self.threshold.flag(score, distance_sq) | huge

    def _score_keyed_rows(self, Z, huge, evaluation, entity) -> BatchResult:
        """``_score_rows`` with keys: the events of entities with enough events learnt under
        their adapted models (and their own threshold), the others under the population."""
        population_score, population_outlier = self._population_flags(evaluation, huge)
        rows, found = self._scoring_rows(*entity[:2])
        use = rows >= 0
        if use.all():  # the usual micro-batch once the entities are known: no merging
            log_likelihood, responsibilities, explanation = self._entity_scores(Z, rows, evaluation)
            log_likelihood = log_likelihood - self.standardizer.log_scale_sum
            outlier = (
                self.entity_threshold.flag(-log_likelihood, explanation["mahalanobis"] ** 2) | huge
            )
            threshold = np.full(len(Z), self.entity_threshold.value)
        else:
            log_likelihood, responsibilities, explanation, outlier, threshold = self._merged(
                Z, huge, evaluation, rows, use, population_score, population_outlier
            )
        self._pending.append(
            _Scored(
                Z,
                evaluation,
                outlier,
                -log_likelihood,
                huge,
                population_outlier,
                use,
                *entity,
                found,
                self.entities.version,
            )
        )
        return self._result(log_likelihood, threshold, outlier, responsibilities, explanation)

    def _merged(self, Z, huge, evaluation, rows, use, population_score, population_outlier):
        """Scores, responsibilities, explanation, flags and thresholds of a micro-batch's
        events, some scored by their entities' models (``use``), the rest by the
        population's."""
        n = len(Z)
        explanation = {
            "component": np.empty(n, dtype=np.intp),
            "mahalanobis": np.empty(n),
            "contributions": np.empty(Z.shape),
            "surprise": np.empty(Z.shape),
            "expected": np.empty(Z.shape),
        }
        rest = ~use
        for name, value in self.model.explain(Z[rest], _subset(evaluation, rest)).items():
            explanation[name][rest] = value
        log_likelihood = -population_score
        outlier = population_outlier
        responsibilities = evaluation.responsibilities
        threshold = np.full(n, self.threshold.value)
        if use.any():
            own_ll, own_resp, own = self._entity_scores(Z[use], rows[use], _subset(evaluation, use))
            log_likelihood = log_likelihood.copy()
            log_likelihood[use] = own_ll - self.standardizer.log_scale_sum
            responsibilities = responsibilities.copy()
            responsibilities[use] = own_resp
            for name, value in own.items():
                explanation[name][use] = value
            outlier = outlier.copy()
            flags = self.entity_threshold.flag(-log_likelihood[use], own["mahalanobis"] ** 2)
            outlier[use] = flags | huge[use]
            threshold[use] = self.entity_threshold.value
        return log_likelihood, responsibilities, explanation, outlier, threshold

    def _learn_pending(self) -> None:
        """The micro-batch is complete: learn its inliers, feed the threshold, watch for
        a new regime.

        With keys, the population (mixture, threshold, quarantine) learns exactly as it
        would without them, by its own scores and flags; the entities' threshold learns
        from the scores of the events their models scored; each entity learns its events
        that were not flagged."""
        batch = _Scored.concat(self._pending)
        self._pending = []
        population_outlier = batch.outlier if batch.keys is None else batch.population_outlier
        learn = ~batch.huge if self.learn_from_outliers else ~population_outlier
        self.model.learn(batch.Z[learn], _subset(batch.evaluation, learn))
        if batch.keys is None:
            self.threshold.update(batch.score[~batch.outlier])
        else:
            # the population's threshold learns as without keys, from the population's
            # scores; the entities' from the scores of the events their models scored
            population_score = self.standardizer.log_scale_sum - batch.evaluation.log_likelihood
            self.threshold.update(population_score[~population_outlier])
            self.entity_threshold.update(batch.score[~batch.outlier & batch.by_entity])
            self._learn_entities(batch)
        self.entities.clock += len(batch.Z)
        if not self.learn_from_outliers:
            self._watch_regime(batch.Z, population_outlier & ~batch.huge)

    # -- entities -----------------------------------------------------------------

    def _new_entity_table(self, clock: int = 0) -> None:
        old = self.entities
        self.entities = EntityTable(
            self.model.n_components_, self.n_features, old.max_entities, old.idle_ttl_s
        )
        self.entities.clock = clock
        # the entities' own threshold: their adapted models score the same events far
        # more tightly than the population does, so the population's quantile of scores
        # would be far above their normal events (measured: benchmarks/entities.py).
        # Same rule, started at the population's value, then learnt from their scores.
        self.entity_threshold = Threshold.from_state(self.threshold.get_state())
        if isinstance(self.entity_threshold, QuantileThreshold):
            self.entity_threshold.initialise(self.threshold.value)

    def _scoring_rows(self, keys: np.ndarray, has_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each event's entity row (n,), -1 where the population scores it (no key, an
        entity unknown or with fewer than :attr:`own_model_events` events learnt), and each
        event's row in the table (n,), -1 where it has none."""
        table = self.entities
        if has_key.all():
            found = table.rows_for(keys)
        else:
            found = np.full(len(keys), -1, dtype=np.intp)
            if has_key.any():
                found[has_key] = table.rows_for(keys[has_key])
        known = found >= 0
        rows = found.copy()
        rows[known] = np.where(table.count[found[known]] >= self.own_model_events, found[known], -1)
        return rows, found

    def _entity_scores(self, z, rows, evaluation):
        """Log-likelihoods (m,), responsibilities (m, K) and explanation of the events z
        (m, d) under the adapted models of their entities ``rows`` (m,); ``evaluation``:
        the population's of z (its field surprise serves for full covariances)."""
        model, table = self.model, self.entities
        variances = model._ops.variances(model.covariances_, self.n_features)
        log_w, means, var = table.adapted(
            rows,
            model.weights_,
            model.means_,
            variances,
            self.relevance,
            model.reg_covar,
            model.half_life,
            spherical=model.covariance_type == "spherical",
        )
        full = model.covariance_type == "full"
        # float32, the entities' statistics' precision: log-likelihoods to about 1e-5
        # nats, at half the memory traffic (keyed 0.32x -> 0.41x keyless at d = 64)
        if np.abs(z).max(initial=0.0) > ENTITY_MAX_ABS:
            z = np.clip(z, -ENTITY_MAX_ABS, ENTITY_MAX_ABS)
        weighted, maha_sq, per_field = mixture_terms(
            z.astype(np.float32),
            log_w,
            means,
            var,
            variances if full else None,
            model.precisions_cholesky_ if full else None,
            model._log_det if full else None,
        )
        ll = _logsumexp_rows(weighted)
        resp = np.exp(weighted - ll[:, None])
        best = resp.argmax(axis=1)
        at = np.arange(len(z))
        if per_field is not None:
            surprise, expected = field_surprise_diag(per_field, weighted, ll, means)
        else:
            surprise, expected = model._field_surprise(z, evaluation)
        return (
            ll,
            resp,
            {
                "component": best,
                "mahalanobis": np.sqrt(maha_sq[at, best], dtype=np.float64),
                "contributions": (z - means[at, best]) / np.sqrt(var[at, best], dtype=np.float64),
                "surprise": surprise.astype(np.float64, copy=False),
                "expected": expected.astype(np.float64, copy=False),
            },
        )

    def _learn_entities(self, batch: _Scored) -> None:
        has = batch.has_key
        if not has.any():
            return
        table = self.entities
        keys = batch.keys[has]
        if batch.rows is not None and batch.rows_version == table.version:
            found = batch.rows[has]
            new = found < 0
            if new.any():
                found[new] = table.rows_for(keys[new], insert=True)
        else:
            found = table.rows_for(keys, insert=True)
        Z = batch.Z[has]
        outlier = batch.outlier[has]
        # a young entity whose events the population mostly flags (unusual for the
        # population from its first event, or since its level moved) learns them too:
        # else its own model could never take over, and it would be flagged for ever
        adopting = (table.count[found] < self.own_model_events) & (
            table.share[found] > self.regime_share
        )
        learn = ~batch.huge[has] & (adopting | self.learn_from_outliers | ~outlier)
        if np.abs(Z).max(initial=0.0) >= ENTITY_MAX_ABS:  # rare: one row at a time
            learn &= np.abs(Z).max(axis=1) < ENTITY_MAX_ABS
        learn &= batch.offsets[has] >= table.learn_from[found]
        table.learn(
            found,
            Z,
            batch.evaluation.responsibilities[has],
            learn,
            outlier,
            self.model.half_life,
            self.regime_share,
            self._now,
            self.own_model_events,
        )
        table.enforce_cap(self._now)

    def expire_idle(self, now: float | None = None) -> int:
        """Drop the entities idle for more than ``idle_ttl_s`` seconds; returns how many."""
        return self.entities.expire_idle(time.time() if now is None else float(now))

    def entity_changes(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """States of the entities changed since :meth:`mark_entities_saved`, and the keys
        removed since (evicted, expired). Each state is a dict of numeric arrays/scalars."""
        return self.entities.changes()

    def mark_entities_saved(self) -> None:
        self.entities.mark_saved()

    def load_entities(
        self, states: Mapping[str, Mapping[str, Any]], learn_from: Mapping[str, int] | None = None
    ) -> None:
        """Put entity records (from :meth:`entity_changes`) in the table; an entity with a
        ``learn_from`` offset learns no event below it. Needs a warmed-up detector."""
        if not self.is_warmed_up:
            raise ValueError(
                "load_entities needs the population model: load the head state first "
                "(Detector.from_state) or warm the detector up"
            )
        learn_from = learn_from or {}
        for key, state in states.items():
            row = self.entities.load_entity(str(key), state)
            if key in learn_from:
                self.entities.learn_from[row] = int(learn_from[key])

    def heaviest_entities(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` most active entities, with their decayed event counts."""
        return self.entities.heaviest(n)

    def _watch_regime(self, Z: np.ndarray, outlier: np.ndarray) -> None:
        """Flagged events that make up ``regime_share`` of the traffic are a new regime:
        components of their own join the model, weighing their recent share, and the
        threshold starts again from the new model (the old inlier scores describe a
        traffic that is gone)."""
        quarantine = self.quarantine
        quarantine.observe(Z[outlier], len(Z))
        if len(quarantine) < 2:
            return
        if quarantine.share < self.regime_share and not quarantine.is_lockout(
            self._component_log_variance
        ):
            return
        weight = min(max(quarantine.recent, quarantine.brief, self.regime_share), 0.95)
        rows = quarantine.release()
        model = self.model
        old_s0 = model._s0.copy()
        added = model.add_components(rows, weight, max_components=2 * model.size)
        # the entities follow: the components the mixture kept (as it chose them), new ones
        n_kept = int(added[0]) if len(added) else len(model._s0)
        self.entities.grow_components(np.sort(np.argsort(old_s0)[::-1][:n_kept]), len(added))
        self._anchor_threshold(rows)
        self.n_regime_changes += 1

    def _component_log_variance(self) -> np.ndarray:
        """Each field's log-variance in the components, by weight: shape (d,)."""
        model = self.model
        variances = model._ops.variances(model.covariances_, self.n_features)
        return model.weights_ @ np.log(variances)

    # -- persistence ----------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters (the threshold apart: it saves its own state)."""
        model = self.model
        return {
            "n_components": model.n_components,
            "covariance_type": model.covariance_type,
            "warmup": self.warmup,
            "standardize": self.standardize,
            "reg_covar": model.reg_covar,
            "half_life": model.half_life,
            "learn_from_outliers": self.learn_from_outliers,
            "max_components": model.max_components,
            "patience": self.quarantine.patience,
            "regime_share": self.regime_share,
            "warmup_trim": self.warmup_trim,
            "min_component_share": self.min_component_share,
            "refits": model.refits,
            "micro_batch": self.micro_batch,
            "n_init": model.n_init,
            "random_state": model.random_state,
            "min_entity_events": self.min_entity_events,
            "relevance": self.relevance,
            "max_entities": self.entities.max_entities,
            "idle_ttl_s": self.entities.idle_ttl_s,
        }

    def get_state(self, entities: bool = True) -> dict[str, Any]:
        """Everything needed to resume exactly: parameters, model, threshold, quarantine,
        the micro-batch in hand, counters, and the entity table (``entities=False``:
        the head without it, for stores that keep entities as records of their own)."""
        state: dict[str, Any] = {
            "params": self.get_params(),
            "model": self.model.get_state(),
            "threshold": self.threshold.get_state(),
            "quarantine": {
                "capacity": self.quarantine.capacity,
                "share": self.quarantine.share,
                "recent": self.quarantine.recent,
                "brief": self.quarantine.brief,
            },
            "n_seen": self.n_seen,
            "n_outliers": self.n_outliers,
            "n_regime_changes": self.n_regime_changes,
            "n_warmup_dropped": self.n_warmup_dropped,
            "entity_clock": self.entities.clock,
        }
        if self.is_warmed_up:
            state["entity_threshold"] = self.entity_threshold.get_state()
        else:
            columns = self._warmup_entity_columns()
            if columns is not None:
                state["warmup_entities"] = dict(
                    zip(("keys", "has_key", "offsets"), columns, strict=True)
                )
        if entities and self.is_warmed_up:
            state["entities"] = self.entities.get_state()
        if self.quarantine.rows is not None:
            state["quarantine"]["rows"] = self.quarantine.rows
        if self._pending:
            batch = _Scored.concat(self._pending)
            state["pending"] = {
                "Z": batch.Z,
                "outlier": batch.outlier,
                "score": batch.score,
                "huge": batch.huge,
            }
            if batch.keys is not None:
                state["pending"]["entity"] = {
                    "by_entity": batch.by_entity,
                    "keys": batch.keys,
                    "has_key": batch.has_key,
                    "offsets": batch.offsets,
                    "population_outlier": batch.population_outlier,
                }
        if self.standardizer is not None:
            state["standardizer"] = {
                "mean": self.standardizer.mean,
                "scale": self.standardizer.scale,
            }
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Detector:
        params = {**_LAYOUT_0_1_PARAMS, **state["params"]}
        detector = cls(**params, threshold=Threshold.from_state(state["threshold"]))
        detector.model = OnlineGaussianMixture.from_state(state["model"])
        quarantine = state["quarantine"]
        detector.quarantine = Quarantine(params["patience"], quarantine["capacity"])
        detector.quarantine.share = float(quarantine["share"])
        detector.quarantine.recent = float(quarantine.get("recent", quarantine["share"]))
        detector.quarantine.brief = float(quarantine.get("brief", 0.0))
        if "rows" in quarantine:
            detector.quarantine.rows = np.array(quarantine["rows"], dtype=np.float64)
        standardizer = state.get("standardizer")
        if standardizer:
            detector.standardizer = Standardizer(standardizer["mean"], standardizer["scale"])
            detector._new_entity_table(int(state.get("entity_clock", 0)))
            if "entities" in state:
                detector.entities.set_state(state["entities"])
            if "entity_threshold" in state:
                detector.entity_threshold = Threshold.from_state(state["entity_threshold"])
        elif "warm" in state:  # 0.1: the warm-up Gaussian and buffer were the detector's
            detector.model._warm = RunningGaussian.from_state(state["warm"])
            if "buffer" in state:
                detector.model._buffer = [np.array(state["buffer"], dtype=np.float64)]
            detector.model._buffered = int(state["n_seen"])
        elif "buffered" not in state["model"]:
            # saved inside the warm-up before the model counted its flagged events: every
            # event seen was a warm-up event (a warm-up could not start again then)
            detector.model._buffered = int(state["n_seen"])
        if "warmup_entities" in state:
            warm = state["warmup_entities"]
            columns = (
                np.array(warm["keys"], dtype=str),
                np.array(warm["has_key"], dtype=bool),
                np.array(warm["offsets"], dtype=np.int64),
            )
            detector._warm_entities = [(len(columns[0]), columns)]
        if "pending" in state:
            pending = state["pending"]
            Z = np.array(pending["Z"], dtype=np.float64)
            entity = pending.get("entity")
            detector._pending = [
                _Scored(
                    Z,
                    detector.model.evaluate(Z),  # the model has not changed since
                    np.array(pending["outlier"], dtype=bool),
                    np.array(pending["score"], dtype=np.float64),
                    np.array(pending["huge"], dtype=bool),
                    *(
                        ()
                        if entity is None
                        else (
                            np.array(entity["population_outlier"], dtype=bool),
                            np.array(entity["by_entity"], dtype=bool),
                            np.array(entity["keys"], dtype=str),
                            np.array(entity["has_key"], dtype=bool),
                            np.array(entity["offsets"], dtype=np.int64),
                        )
                    ),
                )
            ]
        detector.n_seen = int(state["n_seen"])
        detector.n_outliers = int(state["n_outliers"])
        detector.n_regime_changes = int(state["n_regime_changes"])
        detector.n_warmup_dropped = int(state.get("n_warmup_dropped", 0))
        return detector

    def save(self, path: str | os.PathLike) -> None:
        save_state(path, self.get_state(), kind="Detector", fingerprint=self.fingerprint())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Detector:
        return cls.from_state(load_state(path, kind="Detector"))


# parameters a 0.1 checkpoint did not save: the quarantine's horizon it ran with, and
# today's micro-batches (0.1 had none: it learnt each call's batch at once)
_LAYOUT_0_1_PARAMS: dict[str, Any] = {"micro_batch": MICRO_BATCH, "patience": 20000, "refits": 0}


@dataclass(frozen=True)
class _Scored:
    """Events of the current micro-batch, scored and waiting to be learnt."""

    Z: np.ndarray  # (n, d) standardised, clipped
    evaluation: Evaluation
    outlier: np.ndarray  # (n,) bool
    score: np.ndarray  # (n,)
    huge: np.ndarray  # (n,) bool: too large to be squared, never learnt
    # with keys: the population's own flags, and each event's entity (see process)
    population_outlier: np.ndarray | None = None  # (n,) bool
    by_entity: np.ndarray | None = None  # (n,) bool: scored by the entity's model
    keys: np.ndarray | None = None  # (n,) str
    has_key: np.ndarray | None = None  # (n,) bool
    offsets: np.ndarray | None = None  # (n,) int64
    # each event's entity row when scored (-1: not in the table), valid while the
    # table's version is the one noted: the learning need not look the keys up again
    rows: np.ndarray | None = None  # (n,) intp
    rows_version: int | None = None

    @staticmethod
    def concat(pieces: list[_Scored]) -> _Scored:
        if len(pieces) == 1:
            return pieces[0]
        keyed = [p.keys is not None for p in pieces]
        if any(keyed) and not all(keyed):
            pieces = [p if p.keys is not None else p.with_no_keys() for p in pieces]
        extra: tuple = ()
        if pieces[0].keys is not None:
            extra = tuple(
                np.concatenate([getattr(p, f) for p in pieces])
                for f in ("population_outlier", "by_entity", "keys", "has_key", "offsets")
            )
            versions = {p.rows_version for p in pieces}
            if len(versions) == 1 and None not in versions:
                extra += (np.concatenate([p.rows for p in pieces]), versions.pop())
        return _Scored(
            np.concatenate([p.Z for p in pieces]),
            Evaluation(
                *(
                    np.concatenate([getattr(p.evaluation, f) for p in pieces])
                    for f in ("log_likelihood", "responsibilities", "mahalanobis_sq")
                )
            ),
            np.concatenate([p.outlier for p in pieces]),
            np.concatenate([p.score for p in pieces]),
            np.concatenate([p.huge for p in pieces]),
            *extra,
        )

    def with_no_keys(self) -> _Scored:
        """This piece as keyed, with no entity (a call without keys inside a keyed
        micro-batch)."""
        n = len(self.Z)
        return _Scored(
            self.Z,
            self.evaluation,
            self.outlier,
            self.score,
            self.huge,
            self.outlier,
            np.zeros(n, dtype=bool),
            np.full(n, ""),
            np.zeros(n, dtype=bool),
            np.zeros(n, dtype=np.int64),
        )


def _entity_columns(keys: Any, offsets: Any, n: int) -> tuple[np.ndarray, ...] | None:
    """keys (n,) str ("" where None), has_key (n,) bool (False for None and ""), offsets (n,)
    int64; None without keys."""
    if keys is None:
        return None
    keys = np.asarray(keys, dtype=object).reshape(-1)
    if len(keys) != n:
        raise ValueError(f"keys has {len(keys)} entries for {n} events; pass one key per event")
    keys = np.where(np.equal(keys, None), "", keys).astype(str)
    has_key = keys != ""  # an empty key names no entity: the population scores the event
    if offsets is None:
        offsets = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    else:
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        if len(offsets) != n:
            raise ValueError(f"offsets has {len(offsets)} entries for {n} events; pass one each")
    return keys, has_key, offsets


def _check_events(X: Any, n_features: int | None) -> np.ndarray:
    if np.iscomplexobj(X):
        raise ValueError("X has complex values; send the real features (e.g. np.abs or .real)")
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, OverflowError) as error:
        raise ValueError(
            f"X has a value that is not a float64 number ({error}); send numbers only"
        ) from error
    if X.ndim != 2:
        raise ValueError(
            f"expected a 2-D array of shape (n_events, n_features), got {X.ndim}-D; "
            "reshape a single event with X.reshape(1, -1)"
        )
    if X.shape[1] == 0:
        raise ValueError("X has no features (shape (n, 0)); send events with at least one field")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"X has {X.shape[1]} features, but the detector was fitted with {n_features}; "
            "send events with the same fields as before or start a new detector"
        )
    if X.size and not np.isfinite(X).all():
        raise ValueError(
            "X contains NaN or infinity (or None, read as NaN); drop or repair those rows first"
        )
    return X


def _subset(evaluation: Evaluation, mask: np.ndarray) -> Evaluation:
    return Evaluation(
        evaluation.log_likelihood[mask],
        evaluation.responsibilities[mask],
        evaluation.mahalanobis_sq[mask],
    )
