"""A fleet of hosts sending events in rounds, for the daemon's entity tests.

Hosts are of three kinds; each draws its own level per field about its kind's
centre, and its events are small noise about that level. A host anomaly is a
value normal for the population (another host's level of the same kind, in one
field) but far from this host's own level. Events are dicts with ``id``,
``host`` and the fields, to be sent keyed by host (one host, one partition).
"""

from __future__ import annotations

import numpy as np

FIELDS = ["cpu", "mem", "latency_ms"]
KIND_CENTRES = np.array([[30.0, 45.0, 40.0], [60.0, 80.0, 15.0], [90.0, 20.0, 250.0]])
KIND_SPREAD = 0.25  # a host's level about its kind's centre, as a share of the centre
NOISE = 0.02  # a host's noise about its level, as a share of its kind's centre


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
        self.kinds = self.rng.integers(0, 3, n_hosts)
        centre = KIND_CENTRES[self.kinds]
        self.levels = centre * (1.0 + KIND_SPREAD * self.rng.normal(size=centre.shape))
        self.noise = NOISE * centre
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
