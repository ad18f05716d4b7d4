"""A generated stream of hosts, each with its own level per field (tests of per-entity models).

Hosts are of three kinds (web, db, batch); each host draws its own level per field
around its kind's centre, and its events are normal noise about that level. A host
anomaly is a value normal for the population (another host's level of the same kind)
but far from this host's level; a gross anomaly is far from everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KIND_CENTRES = np.array(
    [
        [30.0, 45.0, 40.0, 10.0, 200.0, 5.0, 50.0, 1.0],
        [60.0, 80.0, 15.0, 40.0, 800.0, 20.0, 20.0, 3.0],
        [90.0, 20.0, 250.0, 70.0, 100.0, 50.0, 80.0, 8.0],
    ]
)
KIND_SPREAD = 0.25  # a host's level about its kind's centre, as a share of the centre
NOISE = 0.02  # a host's noise about its level, as a share of its kind's centre


@dataclass
class HostStream:
    X: np.ndarray  # (n, d)
    keys: list[str]  # (n,)
    kind: np.ndarray  # (n,) 0 normal, 1 host anomaly, 2 gross anomaly
    host: np.ndarray  # (n,) host index
    position: np.ndarray  # (n,) the event's index among its host's events


def host_levels(n_hosts: int, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    kinds = rng.integers(0, 3, n_hosts)
    centre = KIND_CENTRES[kinds, :d]
    return centre * (1.0 + KIND_SPREAD * rng.normal(size=(n_hosts, d))), kinds


def host_stream(
    n_events: int = 40_000,
    n_hosts: int = 400,
    d: int = 4,
    host_anomaly_rate: float = 0.005,
    gross_rate: float = 0.001,
    seed: int = 0,
    key_prefix: str = "host",
) -> HostStream:
    """Events of ``n_hosts`` hosts drawn uniformly, with host and gross anomalies."""
    rng = np.random.default_rng(seed)
    levels, kinds = host_levels(n_hosts, d, rng)
    host = rng.integers(0, n_hosts, n_events)
    noise = NOISE * KIND_CENTRES[kinds[host], :d]
    X = levels[host] + noise * rng.normal(size=(n_events, d))
    kind = np.zeros(n_events, dtype=int)
    u = rng.random(n_events)
    host_anom = u < host_anomaly_rate
    gross = (u >= host_anomaly_rate) & (u < host_anomaly_rate + gross_rate)
    # host anomaly: one field moved to another host's level of the same kind, at least
    # 8 noise sd from this host's own
    for i in np.flatnonzero(host_anom):
        h = host[i]
        same = np.flatnonzero(kinds == kinds[h])
        j = rng.integers(d)
        far = same[np.abs(levels[same, j] - levels[h, j]) > 8 * noise[i, j]]
        if len(far):
            X[i, j] = levels[rng.choice(far), j] + noise[i, j] * rng.normal()
            kind[i] = 1
    X[gross] += rng.choice([-1.0, 1.0], size=(gross.sum(), d)) * 6 * KIND_CENTRES.max(axis=0)[:d]
    kind[gross] = 2
    position = np.zeros(n_events, dtype=int)
    counts = np.zeros(n_hosts, dtype=int)
    for i, h in enumerate(host):  # test data only
        position[i] = counts[h]
        counts[h] += 1
    keys = [f"{key_prefix}-{h}" for h in host]
    return HostStream(X, keys, kind, host, position)
