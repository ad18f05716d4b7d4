"""End to end through Kafka: the daemon's rate against a bare consumer's, and outlier delay.

Two measurements on one embedded broker (Tansu), in the same run:

1. Throughput. N JSON events with 8 numeric fields are written to a topic.
   A bare kafka-python consumer reads the whole topic and JSON-decodes every
   value (the least any consumer must do); then the real ``streamgmm run``
   process, in a fresh group, reads, decodes, scores, learns and publishes
   the outliers of the same topic, as configured by default (large batches
   decoded by a second process) and with ``features.decode_process: false``
   (one process). Rates are events per second from the first event read to
   the last. The three readers take turns, ``--repeats`` times, because this
   machine's speed drifts by 10-20% between runs a minute apart; the figure
   is the median of the per-turn ratios daemon / bare (target: at least 0.6).
2. Delay. A producer, in a process of its own as on another host, writes a
   steady 5,000 events/s with one anomaly in 100. The daemon's
   ``streamgmm_outlier_delay_seconds`` histogram gives "event timestamp to
   outlier record acknowledged" (target: p99 under 100 ms); a reader tailing
   the outlier topic gives an upper bound (arrival minus the event's
   timestamp); a bare consumer of a second steady stream gives the floor:
   how old events are when kafka-python hands them over.

Run: ``python benchmarks/end_to_end.py [--events 600000] [--repeats 3] [--rate 5000 --seconds 30]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from streamgmm.embedded import EmbeddedBroker

FIELDS = [f"f{j}" for j in range(8)]
RESULTS = Path(__file__).resolve().parent / "results"
FAST = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


CENTRES = np.random.default_rng(42).normal(0, 5, (4, 8))  # one stream, one set of clusters


def events(rng: np.random.Generator, n: int, anomaly_every: int = 0) -> list[bytes]:
    centres = CENTRES
    rows = centres[rng.integers(0, 4, n)] + rng.normal(size=(n, 8))
    out = []
    for i, row in enumerate(rows):
        anomalous = anomaly_every and i % anomaly_every == anomaly_every - 1
        if anomalous:
            row = row + 40.0
        event = {
            "id": i,
            "host": f"h{i % 50}",
            **dict(zip(FIELDS, row.round(4).tolist(), strict=True)),
        }
        if anomalous:
            event["injected"] = True
        out.append(json.dumps(event).encode())
    return out


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    for value in values:
        producer.send(topic, value)
    producer.flush(120)
    producer.close(10)


def bare_consumer_rate(bootstrap: str, topic: str, n: int) -> float:
    """Events/s of a kafka-python consumer that reads and JSON-decodes the topic.

    It decodes with orjson when installed, as the daemon does, so the ratio
    compares the work on top of decoding, not two JSON parsers.
    """
    from kafka import KafkaConsumer

    try:
        from orjson import loads
    except ImportError:
        loads = json.loads

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{time.time()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=2000,
        fetch_max_wait_ms=50,
        **FAST,
    )
    seen, first = 0, None
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            if first is None:
                first = time.perf_counter()
            for message in batch:
                loads(message.value)
            seen += sum(1 for _ in batch)
    elapsed = time.perf_counter() - first
    consumer.close()
    if seen < n:
        raise RuntimeError(f"the bare consumer read only {seen} of {n} events")
    return n / elapsed


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(
    workdir: str,
    bootstrap: str,
    topic: str,
    outliers: str,
    group: str,
    decode_process: bool | None = None,
):
    port = free_port()
    config = {
        "source": {"kind": "kafka", "kafka": {
            "bootstrap_servers": [bootstrap], "topic": topic, "group_id": group,
            "max_poll_records": 2000, "client": FAST}},
        "features": {"fields": FIELDS, "key": "host", "decode_process": decode_process},
        "model": {"warmup": 2000, "random_state": 0},
        "sink": {"kind": "kafka", "kafka": {"topic": outliers,
                                            "dead_letter_topic": f"{outliers}-dead"}},
        "checkpoint": {"path": os.path.join(workdir, f"{group}.npz"), "interval_s": 10},
        "metrics": {"host": "127.0.0.1", "port": port},
        "log": {"level": os.environ.get("E2E_LOG_LEVEL", "WARNING"), "format": "json"},
    }  # fmt: skip
    path = os.path.join(workdir, f"{group}.yaml")
    Path(path).write_text(yaml.safe_dump(config))
    log = open(os.path.join(workdir, f"{group}.log"), "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "streamgmm.cli", "run", "-c", path],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, port


def events_counted(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("streamgmm_events_total{")
    )


def ack_histogram(port: int) -> np.ndarray:
    """The daemon's ``outlier_delay_seconds`` buckets: rows of (upper bound s, cumulative count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    prefix = 'streamgmm_outlier_delay_seconds_bucket{le="'
    rows = [
        (float(line[len(prefix) :].split('"')[0]), float(line.split()[-1]))
        for line in text.splitlines()
        if line.startswith(prefix)
    ]
    return np.array(rows)


def histogram_quantile(q: float, buckets: np.ndarray) -> float:
    """Prometheus' histogram_quantile: linear within the bucket holding the q-th observation."""
    bounds, counts = buckets[:, 0], buckets[:, 1]
    rank = q * counts[-1]
    i = int(np.searchsorted(counts, rank))
    if i >= len(bounds) - 1 and not np.isfinite(bounds[i]):
        return float(bounds[i - 1])
    lower, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], counts[i - 1])
    return float(lower + (bounds[i] - lower) * (rank - below) / max(counts[i] - below, 1.0))


def daemon_rate(
    workdir: str, bootstrap: str, topic: str, n: int, group: str, decode_process: bool | None
) -> float:
    """Events/s of the streamgmm process over the same topic, first event to last."""
    process, port = start_daemon(
        workdir, bootstrap, topic, f"{topic}-out", group, decode_process=decode_process
    )
    try:
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            counted = events_counted(port)
            if counted > 0 and first is None:
                first, first_count = time.perf_counter(), counted
            if counted >= n:
                return (n - first_count) / (time.perf_counter() - first)
            time.sleep(0.05)
        raise RuntimeError("the daemon did not finish the topic in time")
    finally:
        process.terminate()
        process.wait(60)


def throughput(workdir: str, bootstrap: str, topic: str, n: int, repeats: int) -> dict:
    """The three readers in turns over the same topic; their rates and the per-turn ratios."""
    rates: dict[str, list[float]] = {"bare": [], "daemon": [], "one_process": []}
    for turn in range(repeats):
        rates["bare"].append(bare_consumer_rate(bootstrap, topic, n))
        rates["daemon"].append(daemon_rate(workdir, bootstrap, topic, n, f"tput-{turn}", None))
        rates["one_process"].append(
            daemon_rate(workdir, bootstrap, topic, n, f"tput-one-{turn}", False)
        )
        print(
            f"turn {turn + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()),
            file=sys.stderr,
        )
    bare = np.array(rates["bare"])
    return {
        name: {"rates": values, "ratios": (np.array(values) / bare).tolist()}
        for name, values in rates.items()
    }


def spread(values: list[float], fmt: str) -> str:
    """Median, and the range when there is more than one value."""
    median = format(float(np.median(values)), fmt)
    if len(values) == 1:
        return median
    return f"{median} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def steady_producer(
    bootstrap: str,
    topic: str,
    warm: list[bytes],
    values: list[bytes],
    rate: float,
    port: int | None,
    times,
) -> None:
    """Send the warm-up, wait until the daemon has counted it, then ``values`` at ``rate``/s.

    ``port`` None: no daemon (the bare consumer's run), no warm-up to wait for.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    for value in warm:
        producer.send(topic, value)
    producer.flush(30)
    before = None
    if port is not None:
        deadline = time.monotonic() + 120
        while events_counted(port) < len(warm) and time.monotonic() < deadline:
            time.sleep(0.1)
        before = ack_histogram(port)  # the warm-up's outliers are not part of the figure
    started = time.monotonic()
    for i, value in enumerate(values):
        ahead = i / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
        producer.send(topic, value)
    producer.flush(30)
    times.put((started, time.monotonic(), before))
    producer.close(5)


def launch_producer(
    bootstrap: str,
    topic: str,
    warm: list[bytes],
    values: list[bytes],
    rate: float,
    port: int | None,
) -> Callable[[float], tuple]:
    """Start :func:`steady_producer` in a process of its own, as on another host.

    In the reader's process its send loop and sender thread would share a GIL
    with the reader. Returns ``finish(timeout_s)``: waits for the producer and
    gives ``(started, finished, acks before)``.
    """
    context = multiprocessing.get_context("spawn")
    times = context.Queue()
    process = context.Process(
        target=steady_producer, args=(bootstrap, topic, warm, values, rate, port, times)
    )
    process.start()

    def finish(timeout_s: float) -> tuple:
        try:
            return times.get(timeout=timeout_s)
        finally:
            process.join(30)
            if process.exitcode != 0:
                raise RuntimeError(f"the steady producer failed (exit {process.exitcode})")

    return finish


def tail(bootstrap: str, topic: str, **options):
    """A group-less consumer of partition 0 of ``topic``, at its end, connected."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options
    )
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    consumer.poll(timeout_ms=500)  # connected and at the end before anything is timed
    return consumer


def quantiles(milliseconds: list[float]) -> dict:
    d = np.array(milliseconds)
    return {"p50": float(np.percentile(d, 50)), "p99": float(np.percentile(d, 99)),
            "max": float(d.max())}  # fmt: skip


def bare_delay_run(bootstrap: str, rate: float, seconds: float) -> dict:
    """The floor: how old events are when a bare kafka-python consumer receives them.

    Same steady producer and the daemon's fetch settings; the age of every
    event at the moment ``poll`` returns it.
    """
    topic = "bare-delay-events"
    values = events(np.random.default_rng(2), int(rate * seconds))
    consumer = tail(bootstrap, topic, fetch_max_wait_ms=20, max_poll_records=2000)
    finish = launch_producer(bootstrap, topic, [], values, rate, None)
    ages: list[float] = []
    deadline = time.monotonic() + seconds + 120
    while len(ages) < len(values) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=50).values():
            now = time.time() * 1000
            ages.extend(now - message.timestamp for message in batch)
    finish(60)
    consumer.close()
    return {**quantiles(ages), "events": len(ages)}


def delay_run(workdir: str, bootstrap: str, rate: float, seconds: float) -> dict:
    topic, outliers = "delay-events", "delay-outliers"
    process, port = start_daemon(workdir, bootstrap, topic, outliers, "daemon-delay")
    rng = np.random.default_rng(1)
    warm = events(rng, 3000)
    values = events(rng, int(rate * seconds), anomaly_every=100)
    reader = tail(bootstrap, outliers, fetch_max_wait_ms=5)
    delays: list[float] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for batch in reader.poll(timeout_ms=50).values():
                now = time.time() * 1000
                for message in batch:
                    record = json.loads(message.value)
                    if record["event"].get("injected"):
                        delays.append(now - record["timestamp_ms"])
                        if os.environ.get("E2E_TRACE"):
                            scored = (
                                datetime.fromisoformat(
                                    record["detected_at"].replace("Z", "+00:00")
                                ).timestamp()
                                * 1000
                            )
                            print(
                                f"{now / 1000 % 1000:.2f} {delays[-1]:.0f} "
                                f"{scored - record['timestamp_ms']:.0f}",
                                file=sys.stderr,
                            )

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    finish = launch_producer(bootstrap, topic, warm, values, rate, port)
    started, finished, acks_before = finish(seconds + 300)
    achieved = len(values) / (finished - started)
    time.sleep(2)
    stop.set()
    thread.join(5)
    acks = ack_histogram(port)
    acks[:, 1] -= acks_before[:, 1]
    process.terminate()
    process.wait(60)
    reader.close()
    return {
        "rate": achieved,
        "outliers": len(delays),
        "expected": len(values) // 100,
        **quantiles(delays),
        "acked": int(acks[-1, 1]),
        "acked_within_100ms": float(acks[acks[:, 0] == 0.1, 1][0] / acks[-1, 1]),
        "acked_p50": 1000 * histogram_quantile(0.5, acks),
        "acked_p99": 1000 * histogram_quantile(0.99, acks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # long enough that one-off costs (group join excluded, the warm-up's batch fit
    # included: about 0.2 s) weigh little against the steady rate
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    workdir_keep = os.environ.get("E2E_WORKDIR")
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        workdir = workdir_keep or tmp
        broker.create_topics(
            [
                "tput-events",
                "tput-events-out",
                "tput-events-out-dead",
                "delay-events",
                "delay-outliers",
                "delay-outliers-dead",
                "bare-delay-events",
            ]
        )
        produce(broker.bootstrap, "tput-events", events(rng, args.events))
        tput = throughput(workdir, broker.bootstrap, "tput-events", args.events, args.repeats)
        delay = delay_run(workdir, broker.bootstrap, args.rate, args.seconds)
        floor = bare_delay_run(broker.bootstrap, args.rate, args.seconds)
    table = "\n".join([
        f"# End-to-end benchmark ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()})",
        "",
        f"Throughput over {args.events:,} JSON events with 8 fields, one Tansu broker; "
        f"the readers took {args.repeats} turns: median (range):",
        "",
        "| reader | events/s | ratio to the bare consumer of its turn |",
        "|---|---:|---:|",
        f"| bare kafka-python consumer + JSON decoding | {spread(tput['bare']['rates'], ',.0f')} "
        "| 1 |",
        f"| streamgmm run (decode, score, learn, publish), as configured by default "
        f"| {spread(tput['daemon']['rates'], ',.0f')} "
        f"| **{spread(tput['daemon']['ratios'], '.2f')}** (target >= 0.6) |",
        f"| the same in one process (`features.decode_process: false`) "
        f"| {spread(tput['one_process']['rates'], ',.0f')} "
        f"| {spread(tput['one_process']['ratios'], '.2f')} |",
        "",
        f"Outlier delay at a steady {delay['rate']:,.0f} events/s for {args.seconds:.0f} s "
        f"({delay['outliers']} of {delay['expected']} injected anomalies read back), in ms:",
        "",
        "| delay | p50 | p99 | max |",
        "|---|---:|---:|---:|",
        f"| event timestamp to outlier acknowledged (daemon's histogram, "
        f"{delay['acked']} outliers; {100 * delay['acked_within_100ms']:.1f}% within 100 ms) "
        f"| {delay['acked_p50']:.0f} | **{delay['acked_p99']:.0f}** | - |",
        f"| event timestamp to outlier read by a consumer (upper bound) "
        f"| {delay['p50']:.0f} | {delay['p99']:.0f} | {delay['max']:.0f} |",
        f"| floor: event timestamp to event read by a bare consumer "
        f"| {floor['p50']:.0f} | {floor['p99']:.0f} | {floor['max']:.0f} |",
        "",
        "Acknowledged: `streamgmm_outlier_delay_seconds`, observed when the broker acknowledges "
        "the outlier record, interpolated within its buckets as Prometheus' "
        "histogram_quantile does (target: p99 under 100 ms). The floor is what any "
        "kafka-python consumer of the same broker sees before doing any work.",
    ])  # fmt: skip
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "end_to_end.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
