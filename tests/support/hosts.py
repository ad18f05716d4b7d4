"""A generated stream of hosts, each with its own level per field (tests of per-entity models).

Hosts are of three kinds (web, db, batch); each host draws its own level per field
around its kind's centre, and its events are normal noise about that level. A host
anomaly is a value normal for the population (another host's level of the same kind)
but far from this host's level; a gross anomaly is far from everything.

``host_stream`` draws the events of a stream as arrays (the library's tests);
``HostFleet`` makes JSON-ready events in rounds, every host once a round, to be
sent keyed by host (the daemon's tests: one host, one partition).
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
FIELDS = ["cpu", "mem", "latency_ms"]  # the events of HostFleet: the first three columns


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


class HostFleet:
    """``n_hosts`` hosts with their own levels; events are made in rounds.

    >>> fleet = HostFleet(12, seed=1)
    >>> events = fleet.round(3)
    >>> len(events), sorted({e["host"] for e in events}) == sorted(fleet.names)
    (36, True)
    >>> bad = fleet.host_anomalies()
    >>> len(bad), all(e["injected"] for e in bad)
    (12, True)
    """

    def __init__(self, n_hosts: int = 120, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.levels, self.kinds = host_levels(n_hosts, len(FIELDS), self.rng)
        self.noise = NOISE * KIND_CENTRES[self.kinds, : len(FIELDS)]
        self.names = [f"host-{h}" for h in range(n_hosts)]
        self.next_id = 0

    def _event(self, h: int, x: np.ndarray, **extra) -> dict:
        values = dict(zip(FIELDS, x.tolist(), strict=True))
        event = {"id": self.next_id, "host": self.names[h], **values}
        self.next_id += 1
        return {**event, **extra}

    def round(self, per_host: int) -> list[dict]:
        """``per_host`` normal events of every host, shuffled."""
        hosts = np.repeat(np.arange(len(self.names)), per_host)
        self.rng.shuffle(hosts)
        X = self.levels[hosts] + self.noise[hosts] * self.rng.normal(size=(len(hosts), 3))
        return [self._event(int(h), x) for h, x in zip(hosts, X, strict=True)]

    def host_anomalies(self) -> list[dict]:
        """One host anomaly per host: one field at the level of another host of its kind
        that is at least 10 noise sd away (normal for the population)."""
        out = []
        for h in range(len(self.names)):
            x = self.levels[h] + self.noise[h] * self.rng.normal(size=3)
            same = np.flatnonzero(self.kinds == self.kinds[h])
            for j in self.rng.permutation(3):
                far = same[np.abs(self.levels[same, j] - self.levels[h, j]) > 10 * self.noise[h, j]]
                if len(far):
                    x[j] = self.levels[self.rng.choice(far), j]
                    break
            out.append(self._event(h, x, injected=True))
        return out
