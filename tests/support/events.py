"""Generated event streams: two clusters in fields a, b, c, anomalies far from both."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

FIELDS = ["a", "b", "c"]


def normal_events(rng: np.random.Generator, n: int, start_id: int = 0) -> list[dict]:
    centres = np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 0.0]])
    rows = centres[rng.integers(0, 2, n)] + rng.normal(size=(n, 3))
    return [
        {"id": start_id + i, "host": f"h{i % 7}", **dict(zip(FIELDS, map(float, row), strict=True))}
        for i, row in enumerate(rows)
    ]


def anomaly(event_id: int) -> dict:
    return {"id": event_id, "host": "bad", "a": 40.0, "b": -40.0, "c": 40.0, "injected": True}


def events_with_anomalies(
    seed: int, n: int, anomalies_at: Sequence[int]
) -> tuple[list[dict], list[dict]]:
    """``n`` normal events with an anomaly at each index of ``anomalies_at``; and the anomalies."""
    events = normal_events(np.random.default_rng(seed), n)
    injected = [anomaly(100_000 + k) for k in range(len(anomalies_at))]
    for at, event in zip(anomalies_at, injected, strict=True):
        events.insert(at, event)
    return events, injected


def encode(events: list[dict]) -> list[bytes]:
    return [json.dumps(e).encode() for e in events]
