"""Per-entity models adapted from the population mixture (GMM-UBM).

After Reynolds, Quatieri & Dunn (2000): each entity (a host, a device, an
account) keeps only its sufficient statistics under the population's
responsibilities, and its model is the MAP adaptation of the population's
with relevance factor r (see DESIGN.md, section 7). With ``n_k`` the
entity's soft count of component k, ``alpha_k = n_k / (n_k + r)``:

- ``w_k' = alpha n_k / N + (1 - alpha) w_k`` with ``alpha = N / (N + r)`` and N the
  entity's total count (DESIGN.md uses alpha_k: a component the entity never visits
  would keep the population's weight, see :meth:`EntityTable.adapted`),
- ``mu_k' = alpha_k E_k[x] + (1 - alpha_k) mu_k``,
- ``s_k'^2 = alpha_k Var_k[x] n_k / (n_k - 3) + (1 - alpha_k) s_k^2`` for n_k > 4, else
  ``s_k^2`` (DESIGN.md's formula less its ``alpha_k (1 - alpha_k)(E_k[x] - mu_k)^2``,
  with the ML variance made unbiased for squared distances; see
  :meth:`EntityTable.adapted`), floored at ``ENTITY_REG_SHARE * reg_covar``.

Only the diagonal second moments are kept (memory per entity stays small):
``diag`` uses the adapted variances as they are; ``spherical`` their mean;
``full`` keeps the population's correlations and adapts the scales
(``Sigma' = S R S``, S the adapted standard deviations, R the component's
correlation), so the evaluation is one GEMM-like product per row, as the
population's.

The entities' models score in float32, their statistics' precision (log-likelihoods
to about 1e-5 nats; standardised values past ``1e4`` are scored there), at half the
memory traffic of float64: with wide events (d = 64) it is most of the cost.

The statistics live in contiguous float32 arrays (rows reused, grown by
doubling), keyed by a dict. Rows are evicted by decayed activity when the
table is full, so a burst of one-off keys cannot push out busy entities.

Examples
--------
>>> import numpy as np
>>> table = EntityTable(n_components=2, n_features=3)
>>> rows = table.rows_for(np.array(["web-1", "db-1"]), insert=True)
>>> len(table), rows.tolist(), table.keys_of(rows)
(2, [0, 1], ['web-1', 'db-1'])
>>> table.rows_for(np.array(["db-1", "new"])).tolist()
[1, -1]
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse

from .defaults import ENTITY_DEFAULTS
from .gmm import _LOG_2PI, _TINY, component_max

ENTITY_PATIENCE = 100  # horizon, in an entity's events, of its moving share of flagged events
ACTIVITY_HORIZON_MIN = 10_000  # events: half-life of the activity that ranks entities for eviction
EVICT_TO = 0.95  # share of the cap kept after a bulk eviction
# the entities' variance floor, as a share of reg_covar: a host's own noise is typically
# far below the population's spread, and reg_covar (sized for the population) would hide
# its anomalies (measured in benchmarks/entities.py: AUC 0.94 -> 0.98 at r = 1)
ENTITY_REG_SHARE = 0.01
NO_LIMIT = np.iinfo(np.int64).min
_VERSIONS = itertools.count()  # of the mapping of keys to rows, unique across tables

# per-row arrays other than the statistics: name -> dtype
_SCALARS = {
    "count": np.int64,  # events learnt since the entity's statistics started (or were reset)
    "updated": np.int64,  # event clock of the last update of the statistics (lazy decay)
    "activity": np.float64,  # decayed count of events seen (all of them, flagged or not)
    "seen_at": np.int64,  # event clock of the last activity update
    "last_seen": np.float64,  # wall-clock seconds of the last event
    "share": np.float32,  # moving share of flagged events
    "learn_from": np.int64,  # input offset below which the entity learns nothing
}


class EntityTable:
    """Sufficient statistics of the entities, in contiguous arrays.

    Parameters
    ----------
    n_components, n_features : int
        K and d of the population mixture.
    max_entities : int
        Cap; past it the least active are evicted, in bulk, to ~95% of it.
    idle_ttl_s : float or None
        Seconds without an event after which :meth:`expire_idle` drops an entity.

    Attributes
    ----------
    stats : array of shape (capacity, K + 2 K d), float32
        Per row: soft counts, first and second (diagonal) moments per component, one
        block each, so that a micro-batch gathers and updates an entity in one step.
    n, m1, m2 : views of ``stats`` of shape (capacity, K), (capacity, K, d), (capacity, K, d)
    clock : int
        Events learnt by the detector's micro-batches since the warm-up: the time
        of decay and activity, in events.
    n_evicted : dict {"cap": int, "idle": int}
    version : int
        Changes whenever a key loses its row (removal, a new storage), so rows looked up
        under one version can be reused while it holds; unique across tables.
    """

    def __init__(
        self,
        n_components: int,
        n_features: int,
        max_entities: int = ENTITY_DEFAULTS.max_entities,
        idle_ttl_s: float | None = ENTITY_DEFAULTS.idle_ttl_s,
        capacity: int = 16,
    ) -> None:
        if int(max_entities) < 1:
            raise ValueError(f"max_entities must be >= 1, got {max_entities!r}")
        if idle_ttl_s is not None and not idle_ttl_s > 0:
            raise ValueError(f"idle_ttl_s must be > 0 or None, got {idle_ttl_s!r}")
        self.n_components = int(n_components)
        self.n_features = int(n_features)
        self.max_entities = int(max_entities)
        self.idle_ttl_s = idle_ttl_s
        self.activity_horizon = max(self.max_entities, ACTIVITY_HORIZON_MIN)
        self.clock = 0
        self.index: dict[str, int] = {}
        self.n_evicted = {"cap": 0, "idle": 0}
        self._removed: set[str] = set()
        self._allocate(max(int(capacity), 1))

    # -- storage --------------------------------------------------------------

    def _allocate(self, capacity: int) -> None:
        K, d = self.n_components, self.n_features
        self.stats = np.zeros((capacity, K + 2 * K * d), dtype=np.float32)
        for name, dtype in _SCALARS.items():
            setattr(self, name, np.zeros(capacity, dtype=dtype))
        self.learn_from[:] = NO_LIMIT
        self.dirty = np.zeros(capacity, dtype=bool)
        self.saved = np.zeros(capacity, dtype=bool)  # in the store: its removal is written
        self.keys: list[str | None] = [None] * capacity
        self._free: list[int] = []
        self._top = 0  # rows at or above it were never used
        self.version = next(_VERSIONS)

    @property
    def capacity(self) -> int:
        return len(self.keys)

    @property
    def n(self) -> np.ndarray:
        return self.stats[:, : self.n_components]

    @property
    def m1(self) -> np.ndarray:
        K, d = self.n_components, self.n_features
        return self.stats[:, K : K + K * d].reshape(-1, K, d)

    @property
    def m2(self) -> np.ndarray:
        K, d = self.n_components, self.n_features
        return self.stats[:, K + K * d :].reshape(-1, K, d)

    def _arrays(self) -> list[str]:
        return ["stats", *_SCALARS, "dirty", "saved"]

    def _grow(self, needed: int) -> None:
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        for name in self._arrays():
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: len(old)] = old
            if name == "learn_from":
                new[len(old) :] = NO_LIMIT
            setattr(self, name, new)
        self.keys.extend([None] * (capacity - len(self.keys)))

    def nbytes(self) -> int:
        """Bytes of the arrays (the dict and the key strings apart)."""
        return sum(getattr(self, name).nbytes for name in self._arrays())

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def grow_components(self, kept: np.ndarray, n_new: int) -> None:
        """The population kept its components ``kept`` (in order) and gained ``n_new``:
        the entities' statistics follow (zero for the new components)."""
        kept = np.asarray(kept, dtype=np.intp)
        blocks = []
        for old in (self.n, self.m1, self.m2):
            pad = np.zeros((len(old), n_new, *old.shape[2:]), dtype=old.dtype)
            blocks.append(np.concatenate([old[:, kept], pad], axis=1).reshape(len(old), -1))
        self.stats = np.concatenate(blocks, axis=1)
        self.n_components = len(kept) + int(n_new)

    # -- keys -------------------------------------------------------------------

    def rows_for(self, keys: np.ndarray, insert: bool = False) -> np.ndarray:
        """The row of each key of ``keys`` (n,) str, repeats allowed: -1 where absent,
        unless ``insert``. The rows stay valid while :attr:`version` does."""
        rows = np.fromiter(
            map(self.index.get, keys.tolist(), itertools.repeat(-1)),
            dtype=np.intp,
            count=len(keys),
        )
        if insert:
            for i in np.flatnonzero(rows < 0).tolist():  # one step per new entity
                key = str(keys[i])
                row = self.index.get(key)  # a repeat of a key inserted just before
                rows[i] = self._insert(key) if row is None else row
        return rows

    def _insert(self, key: str) -> int:
        if self._free:
            row = self._free.pop()
        else:
            if self._top >= self.capacity:
                self._grow(self._top + 1)
            row = self._top
            self._top += 1
        self._clear(np.array([row]))
        self.index[key] = row
        self.keys[row] = key
        self.updated[row] = self.clock
        self.seen_at[row] = self.clock
        self._removed.discard(key)
        return row

    def _clear(self, rows: np.ndarray) -> None:
        for name in self._arrays():
            getattr(self, name)[rows] = 0
        self.learn_from[rows] = NO_LIMIT

    def reset_statistics(self, rows: np.ndarray) -> None:
        """The entities start again from the population (a level shift for good)."""
        self.stats[rows] = 0
        self.count[rows] = 0
        self.share[rows] = 0
        self.dirty[rows] = True

    def remove(self, rows: np.ndarray, reason: str | None = None) -> None:
        """Drop the entities of ``rows``; counted as evicted for ``reason``."""
        self.version = next(_VERSIONS)
        for row in np.asarray(rows, dtype=np.intp).tolist():
            key = self.keys[row]
            if key is None:
                continue
            del self.index[key]
            self.keys[row] = None
            if self.saved[row]:  # a key never saved needs no tombstone
                self._removed.add(key)
            self._free.append(row)
        self._clear(rows)
        if reason is not None:
            self.n_evicted[reason] += len(rows)

    def keys_of(self, rows: np.ndarray) -> list[str]:
        return [self.keys[r] for r in np.asarray(rows).tolist()]

    def occupied(self) -> np.ndarray:
        """Rows in use, in increasing order."""
        return np.sort(np.fromiter(self.index.values(), dtype=np.intp, count=len(self.index)))

    # -- activity and eviction ----------------------------------------------------

    def rank(self, rows: np.ndarray) -> np.ndarray:
        """``log2(activity) + last event clock / H``: who is kept when the table is full."""
        with np.errstate(divide="ignore"):
            return np.log2(self.activity[rows]) + self.seen_at[rows] / self.activity_horizon

    def decayed_activity(self, rows: np.ndarray) -> np.ndarray:
        age = (self.clock - self.seen_at[rows]) / self.activity_horizon
        return self.activity[rows] * np.exp2(-age)

    def evict(self, keep: int) -> int:
        """Evict the lowest-ranked entities down to ``keep``; returns how many went."""
        excess = len(self) - keep
        if excess <= 0:
            return 0
        rows = self.occupied()
        worst = rows[np.argpartition(self.rank(rows), excess - 1)[:excess]]
        self.remove(worst, "cap")
        return excess

    def enforce_cap(self, now: float) -> None:
        """Past the cap: drop the idle first, then the least active, to ~95% of the cap."""
        if len(self) <= self.max_entities:
            return
        self.expire_idle(now)
        if len(self) > self.max_entities:
            self.evict(int(EVICT_TO * self.max_entities))

    def expire_idle(self, now: float) -> int:
        """Drop the entities without an event for ``idle_ttl_s`` seconds; returns how many."""
        if self.idle_ttl_s is None or not self.index:
            return 0
        rows = self.occupied()
        idle = rows[self.last_seen[rows] < now - self.idle_ttl_s]
        self.remove(idle, "idle")
        return len(idle)

    # -- the model ----------------------------------------------------------------

    def decay_factor(self, rows: np.ndarray, half_life: float | None) -> np.ndarray:
        """``0.5 ** (events since the last update / half_life)`` of shape (len(rows),)."""
        if half_life is None:
            return np.ones(len(rows))
        return np.exp2(-(self.clock - self.updated[rows]) / float(half_life))

    def adapted(
        self,
        rows: np.ndarray,
        weights: np.ndarray,
        means: np.ndarray,
        variances: np.ndarray,
        relevance: float,
        reg_covar: float,
        half_life: float | None = None,
        spherical: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MAP-adapted parameters of the entities of ``rows`` (U,), repeats allowed.

        Parameters
        ----------
        weights : (K,), means : (K, d), variances : (K, d)
            The population's (variances: the diagonal of its covariances).

        Returns
        -------
        log_weights : (U, K) float64; means : (U, K, d); variances : (U, K, d), floored at
        ``ENTITY_REG_SHARE * reg_covar``, float32
        """
        K, d = self.n_components, self.n_features
        # the moments in float32, the statistics' own precision (the variances are
        # floored far above its rounding); the counts and weights in float64
        stats = self.stats[rows]
        n = stats[:, :K].astype(np.float64)
        # per field of every component (U, K d): numpy broadcasts a (U, K, 1) factor over
        # the fields a loop step per component; repeated, the products are flat
        per_count = np.repeat(1.0 / np.maximum(stats[:, :K], 1e-6), d, axis=1)  # alpha is 0 below
        first = stats[:, K : K + K * d] * per_count  # E[x]
        second = stats[:, K + K * d :] * per_count  # E[x^2]
        if half_life is not None:
            n = n * self.decay_factor(rows, half_life)[:, None]
        # the weights adapt with the entity's total count N: alpha N_k / N + (1 - alpha) w_k
        # with alpha = N / (N + r), that is (N_k + r w_k) / (N + r); a component the entity
        # never visits loses its weight as the entity's own evidence grows (per-component
        # alphas would keep the population's weight on it, and explain the host's anomalies)
        w = (n + relevance * weights) / (np.einsum("nk->n", n)[:, None] + relevance)
        alpha = n / (n + relevance)
        a = np.repeat(alpha.astype(np.float32), d, axis=1)
        means = means.reshape(-1).astype(np.float32)
        variances = variances.reshape(-1).astype(np.float32)
        mu = (means + a * (first - means)).reshape(-1, K, d)
        # alpha E[(x - E x)^2] + (1 - alpha) s^2: the design's formula less its term
        # alpha (1 - alpha)(E x - mu)^2, which widens a young entity far from its
        # component's mean by that distance, so that all its events score above the
        # entities' threshold (and, not learnt, it never grows out of it; measured).
        # The entity's own variance is made unbiased for the squared distances: the ML
        # variance of n Gaussian events gives E[sigma^2 / s^2] = n / (n - 3), so young
        # entities scored every field too far (d = 30, keys spread over three components:
        # 3.8% -> 0.9% of events flagged as they matured); from 4 events or fewer it is
        # no estimate yet, the population's variance stands. Per (U, K), then repeated:
        # var = s^2 + alpha_v n / (n - 3) Var[x] - alpha_v s^2
        alpha_v = np.where(n > 4.0, alpha, 0.0)
        own_share = np.repeat((alpha_v * n / np.maximum(n - 3.0, 1.0)).astype(np.float32), d, 1)
        pop_share = np.repeat((1.0 - alpha_v).astype(np.float32), d, axis=1)
        var = own_share * np.maximum(second - first * first, 0.0) + pop_share * variances
        var = np.maximum(var, reg_covar * ENTITY_REG_SHARE, out=var).reshape(-1, K, d)
        if spherical:
            var[:] = var.mean(axis=2, keepdims=True)
        return np.log(np.maximum(w, _TINY)), mu, var

    def learn(
        self,
        rows: np.ndarray,
        Z: np.ndarray,
        resp: np.ndarray,
        learn: np.ndarray,
        flagged: np.ndarray,
        half_life: float | None,
        regime_share: float,
        now: float,
        min_events: int = ENTITY_DEFAULTS.min_events,
    ) -> np.ndarray:
        """Fold one micro-batch into the statistics of its entities.

        The moving share of flagged events is an entity's regime watch, one per phase:
        while young (fewer than ``min_events`` events learnt, scored by the population)
        it counts the population's flags (past ``regime_share``, the entity is unusual
        for the population and learns its flagged events too: the detector's
        ``adopting``); once mature it counts its own model's flags, from zero (past
        ``regime_share``, its level moved for good: its statistics start again).

        Parameters
        ----------
        rows : (n,) each event's entity row
        Z : (n, d) standardised events; resp : (n, K) population responsibilities
        learn : (n,) bool, events the entity learns; flagged : (n,) bool, flagged events
        now : wall-clock seconds

        Returns
        -------
        reset : mature rows whose share of flagged events passed ``regime_share`` (their
        statistics start again from the population).
        """
        order = np.argsort(rows, kind="stable")  # the events grouped by entity
        grouped = rows[order]
        first = np.empty(len(rows), dtype=bool)
        first[:1] = True
        np.not_equal(grouped[1:], grouped[:-1], out=first[1:])
        rows, start = grouped[first], np.flatnonzero(first)
        owner = np.cumsum(first) - 1  # of each grouped event, in 0..U-1
        seen = np.diff(np.append(start, len(order)))
        learnt = learn[order]
        # zero the events not learnt (they may be too large to square)
        z = np.where(learnt[:, None], Z[order], 0.0)
        sums = _entity_sums(owner, start, seen, z, resp[order] * learnt[:, None])
        n_learnt = np.bincount(owner, learnt, minlength=len(rows)).astype(np.int64)
        n_flagged = np.bincount(owner, flagged[order], minlength=len(rows))
        # lazy decay of the statistics, then the batch's
        if half_life is not None:
            f = self.decay_factor(rows, half_life).astype(np.float32)
            self.stats[rows] = self.stats[rows] * f[:, None] + sums
        else:
            self.stats[rows] += sums
        self.updated[rows] = self.clock
        was_mature = self.count[rows] >= min_events
        self.count[rows] += n_learnt
        # activity (decayed with the eviction horizon) and the moving share of flagged events
        self.activity[rows] = self.decayed_activity(rows) + seen
        self.seen_at[rows] = self.clock
        self.last_seen[rows] = now
        keep = (1.0 - 1.0 / ENTITY_PATIENCE) ** seen
        self.share[rows] = self.share[rows] * keep + (1.0 - keep) * n_flagged / seen
        self.share[rows[~was_mature & (self.count[rows] >= min_events)]] = 0  # a new phase
        self.dirty[rows] = True
        reset = rows[was_mature & (self.share[rows] > regime_share)]
        if len(reset):
            self.reset_statistics(reset)
        return reset

    def heaviest(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` entities of highest decayed activity, with it, highest first."""
        rows = self.occupied()
        activity = self.decayed_activity(rows)
        order = np.argsort(-activity, kind="stable")[: max(int(n), 0)]
        return [(self.keys[rows[i]], float(activity[i])) for i in order]

    # -- persistence --------------------------------------------------------------

    def entity_state(self, row: int) -> dict[str, Any]:
        """One entity's record: numeric arrays and scalars only."""
        state: dict[str, Any] = {
            name: getattr(self, name)[row].copy() for name in ("n", "m1", "m2")
        }
        for name in _SCALARS:
            state[name] = getattr(self, name)[row].item()
        return state

    def load_entity(self, key: str, state: Mapping[str, Any]) -> int:
        row = self.index.get(key)
        if row is None:
            row = self._insert(key)
        K, d = self.n_components, self.n_features
        n = np.asarray(state["n"], dtype=np.float32).reshape(-1)
        k = min(len(n), K)  # a record written before components were added has fewer
        self.stats[row] = 0
        self.n[row, :k] = n[:k]
        self.m1[row, :k] = np.asarray(state["m1"], dtype=np.float32).reshape(-1, d)[:k]
        self.m2[row, :k] = np.asarray(state["m2"], dtype=np.float32).reshape(-1, d)[:k]
        for name, dtype in _SCALARS.items():
            if name in state:
                getattr(self, name)[row] = np.asarray(state[name], dtype=dtype)
        self.dirty[row] = False
        self.saved[row] = True
        return row

    def changes(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        rows = np.flatnonzero(self.dirty[: self._top])
        changed = {self.keys[r]: self.entity_state(r) for r in rows.tolist()}
        return changed, sorted(self._removed)

    def mark_saved(self) -> None:
        self.saved[self.occupied()] = True
        self.dirty[:] = False
        self._removed.clear()

    def get_state(self) -> dict[str, Any]:
        rows = self.occupied()
        state: dict[str, Any] = {
            "keys": np.array(self.keys_of(rows), dtype=str),
            "clock": int(self.clock),
            "n_evicted": dict(self.n_evicted),
            "n_components": self.n_components,
        }
        for name in ("n", "m1", "m2", *_SCALARS):
            state[name] = getattr(self, name)[rows]
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        keys = [str(k) for k in np.asarray(state["keys"]).tolist()]
        self.clock = int(state["clock"])
        self.n_evicted = {k: int(v) for k, v in dict(state["n_evicted"]).items()}
        self.n_components = int(state.get("n_components", self.n_components))
        self._allocate(max(1 << max(len(keys) - 1, 0).bit_length(), 16))
        E = len(keys)
        for name in ("n", "m1", "m2", *_SCALARS):
            getattr(self, name)[:E] = np.asarray(state[name])
        self.index = dict(zip(keys, range(E), strict=True))
        self.keys[:E] = keys
        self.saved[:E] = True  # as far as we know: their removal is written
        self._top = E


# below this many statistics per component block (K d), the products summed with one
# np.bincount are faster than the sparse product (fewer numpy calls); above, the sparse
# product builds no (n, K, d) array (d = 8, K = 3: 40 against 55 us; d = 64, K = 11:
# 4.9 ms against 0.2)
_DENSE_SUMS_MAX = 64


def _entity_sums(
    owner: np.ndarray, start: np.ndarray, count: np.ndarray, Z: np.ndarray, resp: np.ndarray
) -> np.ndarray:
    """Each entity's sums over its events: ``r_k``, ``r_k z`` and ``r_k z^2`` per
    component, laid out as :attr:`EntityTable.stats` rows, shape (U, K + 2 K d).

    The events are grouped by entity: owner (n,) the entity (0..U-1) of each; start,
    count (U,) where each entity's events start, and how many; Z (n, d), resp (n, K),
    both zero for the events not learnt.
    """
    n, K = resp.shape
    U = len(start)
    if K * Z.shape[1] <= _DENSE_SUMS_MAX:
        weighted = resp[:, :, None] * Z[:, None, :]
        columns = np.concatenate(
            [resp, weighted.reshape(n, -1), (weighted * Z[:, None, :]).reshape(n, -1)], axis=1
        )
        C = columns.shape[1]
        target = (owner * C)[:, None] + np.arange(C)
        return np.bincount(target.ravel(), columns.ravel(), minlength=U * C).reshape(U, C)
    # W of shape (U K, n), W[u K + k, i] = r_ik for the events i of entity u, filled row
    # by row: entity u's block of K rows starts at start[u] K, each row holds its events
    within = np.arange(n) - start[owner]
    slot = (start[owner] * K + within)[:, None] + np.arange(K) * count[owner][:, None]
    data = np.empty(n * K, dtype=np.float32)  # the statistics' precision
    data[slot] = resp
    indices = np.empty(n * K, dtype=np.intp)
    indices[slot] = np.arange(n)[:, None]
    indptr = np.append((start[:, None] * K + np.arange(K) * count[:, None]).reshape(-1), n * K)
    W = scipy.sparse.csr_array((data, indices, indptr), shape=(U * K, n))
    z = Z.astype(np.float32)  # the detector learns no |z| past 1e4: z^2 fits
    return np.concatenate(
        [
            (W @ np.ones(n, dtype=np.float32)).reshape(U, K),
            (W @ z).reshape(U, -1),
            (W @ (z * z)).reshape(U, -1),
        ],
        axis=1,
    )


def mixture_terms(
    Z: np.ndarray,
    log_weights: np.ndarray,
    means: np.ndarray,
    variances: np.ndarray,
    population_variances: np.ndarray | None = None,
    precision_cholesky: np.ndarray | None = None,
    log_det: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-row mixtures: ``log w_k + log N(z | k)`` (n, K), squared distances (n, K), and
    the per-field ``log N(z_j | k)`` (n, K, d) (diagonal only, else None).

    Z : (n, d); log_weights : (n, K); means, variances : (n, K, d). With
    ``precision_cholesky`` (K, d, d) and ``log_det`` (K,) of the population's full
    covariances and their diagonal ``population_variances`` (K, d), the covariance is
    ``S R S``: the population's correlations, the adapted scales.
    """
    diff = Z[:, None, :] - means
    d = Z.shape[1]
    if precision_cholesky is None:
        sq = diff * diff / variances
        log_var = np.log(variances)
        per_field = -0.5 * (_LOG_2PI + log_var + sq)
        maha = _sum_fields(sq)
        weighted = log_weights - 0.5 * (d * _LOG_2PI + _sum_fields(log_var) + maha)
        return weighted, maha, per_field
    scale = np.sqrt(population_variances / variances)  # (n, K, d)
    y = np.einsum("nkd,kde->nke", diff * scale, precision_cholesky)
    maha = _sum_fields(y * y)
    weighted = log_weights - 0.5 * d * _LOG_2PI + log_det + _sum_fields(np.log(scale)) - 0.5 * maha
    return weighted, maha, None


def field_surprise_diag(
    per_field: np.ndarray, weighted: np.ndarray, log_likelihood: np.ndarray, means: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``-log p(z_j | z_-j)`` (n, d) and ``E[z_j | z_-j]`` (n, d) of per-row diagonal
    mixtures: ``p(z_-j)`` is the mixture with field j marginalised out; in the dtype of
    ``per_field``."""
    # (n, K, d): log w_k + log N_k(z_-j), in the per-field terms' precision
    without = weighted.astype(per_field.dtype)[:, :, None] - per_field
    peak = component_max(without)
    e = np.exp(without - peak[:, None, :])
    total = np.einsum("nkd->nd", e)
    surprise = np.log(total) + peak - log_likelihood[:, None]
    expected = np.einsum("nkd,nkd->nd", e, means) / total
    return surprise, expected


def _sum_fields(a: np.ndarray) -> np.ndarray:
    """The sum over the last axis (the fields) of ``a`` of shape (n, K, d)."""
    return np.einsum("nkd->nk", a)
