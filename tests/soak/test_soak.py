"""Soak: millions of events through the model, a million through the daemon process.

Both are ``@pytest.mark.slow`` (``make soak``), each well under 15 minutes on
two cores. Figures go to docs/reliability/figures (tests/figures.py):

- the model: 50 million events of a drifting, stationary-ish synthetic
  stream through ``Detector.process`` in 2,000-event batches; resident
  memory (/proc/self/status) every 100 batches, throughput per 5-million
  segment (wall and CPU time, as other work may share the machine), no NaN
  or infinity in any parameter or score, ever;
- the daemon: 1 million events produced to a broker of its own while the
  real ``streamgmm run`` process consumes them; its events/s, its resident
  memory (/proc/PID/status) over time, every injected anomaly published,
  the lag drained and every event learnt once.
"""

from __future__ import annotations

import itertools
import json
import threading
import time

import numpy as np
import pytest

from streamgmm.detector import Detector
from tests.support.brokers import start_broker
from tests.support.events import anomaly
from tests.support.faults import checkpoint_offsets, read_checkpoint, rss_kib
from tests.support.processes import DaemonProcess, write_config
from tests.support.waits import wait_for

from ..figures import record

pytestmark = pytest.mark.slow

BATCH = 2000


def own_rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


class DriftingStream:
    """Three elliptical clusters in 4-D whose centres wander slowly (one cycle per 4M
    events) and whose mixing weights breathe; 0.1 % of events are far anomalies."""

    centres = np.array([[0, 0, 0, 0], [6, 6, 0, 0], [0, 6, 6, 3]], dtype=float)
    scales = np.array([1.0, 0.6, 1.4])

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.seen = 0

    def batch(self, n: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        phase = 2 * np.pi * self.seen / 4_000_000
        weights = np.array([0.5, 0.3, 0.2]) + 0.05 * np.array([np.sin(phase), -np.sin(phase), 0])
        k = rng.choice(3, size=n, p=weights / weights.sum())
        drift = 0.5 * np.sin(phase + np.arange(4))
        X = self.centres[k] + drift + rng.normal(size=(n, 4)) * self.scales[k, None]
        injected = rng.random(n) < 0.001
        directions = rng.normal(size=(int(injected.sum()), 4))
        X[injected] += 14 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
        self.seen += n
        return X, injected


def finite_model(detector: Detector) -> bool:
    model = detector.model
    arrays = [model.weights_, model.means_, model.covariances_, model.precisions_cholesky_]
    return all(np.isfinite(np.asarray(a)).all() for a in arrays)


def test_model_soak_fifty_million_events():
    total, segment = 50_000_000, 5_000_000
    stream = DriftingStream(seed=3)
    detector = Detector(
        n_components="auto", covariance_type="diag", warmup=500, half_life=200_000,
        random_state=0,
    )  # fmt: skip
    rss, segments = [], []
    flagged = injected_total = caught = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    seg_wall, seg_cpu = wall0, cpu0
    for b in range(total // BATCH):
        X, injected = stream.batch()
        result = detector.process(X)
        assert np.isfinite(result.score).all(), f"non-finite score in batch {b}"
        assert np.isfinite(result.log_likelihood).all()
        if detector.is_warmed_up:
            assert finite_model(detector), f"non-finite parameter after batch {b}"
        flagged += int(result.is_outlier.sum())
        injected_total += int(injected.sum())
        caught += int((result.is_outlier & injected).sum())
        if b % 100 == 0:
            rss.append((detector.n_seen, own_rss_kib()))
        if detector.n_seen % segment == 0:
            now_wall, now_cpu = time.perf_counter(), time.process_time()
            segments.append(
                {
                    "events": detector.n_seen,
                    "events_per_s": round(segment / (now_wall - seg_wall)),
                    "events_per_cpu_s": round(segment / (now_cpu - seg_cpu)),
                    "rss_mib": round(own_rss_kib() / 1024, 1),
                    "components": int(detector.model.n_components_),
                }
            )
            seg_wall, seg_cpu = now_wall, now_cpu
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert detector.n_seen == total

    # memory flat: after the first segment, resident memory grows by less than 16 MiB
    settled = [kib for seen, kib in rss if seen >= segment]
    growth_mib = (max(settled) - settled[0]) / 1024
    assert growth_mib < 16, f"resident memory grew by {growth_mib:.1f} MiB: {rss[::10]}"
    # throughput stable: every segment's CPU rate within 35 % of the median
    rates = [s["events_per_cpu_s"] for s in segments]
    median = sorted(rates)[len(rates) // 2]
    assert all(0.65 * median <= r <= 1.35 * median for r in rates), segments
    recall = caught / injected_total
    assert recall > 0.95, f"only {caught} of {injected_total} injected anomalies flagged"
    record(
        "soak_model",
        events=total,
        batch=BATCH,
        wall_s=round(wall, 1),
        events_per_s=round(total / wall),
        events_per_cpu_s=round(total / cpu),
        rss_first_segment_mib=round(settled[0] / 1024, 1),
        rss_max_mib=round(max(settled) / 1024, 1),
        rss_growth_after_first_segment_mib=round(growth_mib, 1),
        segments=segments,
        non_finite_values=0,
        injected_anomalies=injected_total,
        injected_flagged=caught,
        flagged_share=round(flagged / total, 5),
    )


# ---------------------------------------------------------------------------
# the daemon


def produce_fast(bootstrap: str, topic: str, total: int, anomaly_every: int, done: dict) -> None:
    """Send ``total`` numbered events as fast as the broker takes them (confluent-kafka)."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
         "batch.num.messages": 10000, "queue.buffering.max.messages": 200000}
    )  # fmt: skip
    rng = np.random.default_rng(4)
    ends: dict[int, int] = {}
    errors: list = []

    def landed(error, message):
        if error is not None:
            errors.append(error)
        else:
            ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)

    started = time.monotonic()
    centres = np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 0.0]])
    for first in range(0, total, 10_000):
        n = min(10_000, total - first)
        rows = centres[rng.integers(0, 2, n)] + rng.normal(size=(n, 3))
        for i in range(n):
            event_id = first + i
            if event_id >= 20_000 and event_id % anomaly_every == 0:
                payload = anomaly(event_id)
            else:
                a, b, c = rows[i]
                payload = {"id": event_id, "host": f"h{event_id % 7}", "a": a, "b": b, "c": c}
            while True:
                try:
                    producer.produce(
                        topic, json.dumps(payload).encode(), payload["host"].encode(),
                        on_delivery=landed,
                    )  # fmt: skip
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
    producer.flush(120)
    done.update(ends=ends, errors=errors, seconds=time.monotonic() - started)


def test_daemon_soak_one_million_events(tmp_path):
    total, anomaly_every = 1_000_000, 10_000
    broker = start_broker()  # a broker that fails to start fails the soak
    try:
        topics = {"events": "soak-events", "outliers": "soak-outliers", "dead": "soak-dead"}
        broker.create_topics([topics["events"]], partitions=4)
        broker.create_topics([topics["outliers"], topics["dead"]], partitions=1)
        config, port = write_config(
            tmp_path, broker.bootstrap, topics, "soak",
            source__kafka__max_poll_records=2000, checkpoint__interval_s=5,
        )  # fmt: skip
        checkpoint = tmp_path / "state" / "model.npz"
        daemon = DaemonProcess(config, port, tmp_path / "daemon.log")
        wait_for(lambda: daemon.get("/healthz")[0] == 200, 30, "the daemon to start", daemon)
        produced: dict = {}
        producer = threading.Thread(
            target=produce_fast,
            args=(broker.bootstrap, topics["events"], total, anomaly_every, produced),
        )
        started = time.monotonic()
        producer.start()
        samples = []  # (seconds, events counted, RSS MiB)
        while True:
            counted = daemon.scored()
            memory = round(rss_kib(daemon.process.pid) / 1024, 1)
            samples.append((round(time.monotonic() - started, 1), counted, memory))
            if counted >= total:
                break
            assert daemon.process.poll() is None, daemon.log_tail()
            assert time.monotonic() - started < 600, f"not drained in 10 min: {samples[-5:]}"
            time.sleep(2)
        drained_s = time.monotonic() - started
        producer.join(120)
        assert not produced["errors"], produced["errors"][:3]
        ends = produced["ends"]
        assert sum(ends.values()) == total
        wait_for(
            lambda: checkpoint_offsets(read_checkpoint(checkpoint), topics["events"]) == ends,
            30, "the checkpoint at the end offsets", daemon,
        )  # fmt: skip
        wait_for(
            lambda: all(
                float(line.split()[-1]) == 0
                for line in daemon.metrics_text().splitlines()
                if line.startswith("streamgmm_consumer_lag{")
            ),
            20, "the consumer lag metric to drain", daemon,
        )  # fmt: skip
        outliers_counted = daemon.metric("streamgmm_outliers_total")
        rss_end = round(rss_kib(daemon.process.pid) / 1024, 1)
        assert daemon.terminate() == 0, daemon.log_tail()
        state = read_checkpoint(checkpoint)
        assert state["detector"]["n_seen"] == total, "every event learnt once"

        from tests.support.faults import read_json

        outliers = read_json(broker, topics["outliers"], 60, expected=int(outliers_counted))
        injected = {e for e in range(20_000, total, anomaly_every)}
        published = {o["event"]["id"] for o in outliers if o["event"].get("injected")}
        assert injected <= published, f"missing: {sorted(injected - published)[:10]}"

        rss = [s[2] for s in samples if s[1] >= total * 0.25]
        growth = max(rss) - rss[0]
        assert growth < 64, f"daemon RSS grew {growth:.0f} MiB after 25 % of the run: {samples}"
        rates = [
            (b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples) if b[0] > a[0]
        ]
        record(
            "soak_daemon",
            events=total,
            partitions=4,
            producer_s=round(produced["seconds"], 1),
            drained_s=round(drained_s, 1),
            events_per_s=round(total / drained_s),
            peak_events_per_s=round(max(rates)),
            rss_mib_start=samples[0][2],
            rss_mib_at_25pct=rss[0],
            rss_mib_max=max(s[2] for s in samples),
            rss_mib_end=rss_end,
            rss_growth_after_25pct_mib=round(growth, 1),
            outliers_published=len(outliers),
            injected_anomalies=len(injected),
            injected_published=len(injected & published),
            events_learnt=int(state["detector"]["n_seen"]),
            lag_at_end=0,
            rss_samples=[(s[0], s[2]) for s in samples[:: max(1, len(samples) // 20)]],
        )
    finally:
        broker.stop()
