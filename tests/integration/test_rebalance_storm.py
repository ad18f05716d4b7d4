"""A rebalance storm: a second member joins and leaves the group ten times mid-stream.

The daemon must count every event once, publish every injected anomaly, keep
running and exit 0 on SIGTERM. Slow (each join takes about half the session
timeout), so it runs in `make soak`, not `make test`.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from kafka import KafkaConsumer

from tests.support.events import anomaly, encode, normal_events
from tests.support.processes import DaemonProcess, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.reliability]

STORM = 10


def test_a_rebalance_storm_loses_and_repeats_nothing(
    tmp_path, broker, unique, produce, read_all, fast_group
):
    topics = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    broker.create_topics([topics["events"]], partitions=4)
    broker.create_topics([topics["outliers"], topics["dead"]], partitions=1)
    group = unique("g")
    path, port = write_config(tmp_path, broker.bootstrap, topics, group)
    daemon = DaemonProcess(path, port, tmp_path / "daemon.log")
    rng = np.random.default_rng(0)
    warmup = normal_events(rng, 600)
    produce(topics["events"], encode(warmup), keys=[e["host"].encode() for e in warmup])
    daemon.wait_until(lambda: daemon.scored() >= len(warmup), what="warm-up")

    sent = [len(warmup)]
    injected = []
    stop = threading.Event()

    def stream() -> None:  # a steady stream with an anomaly now and then, until the storm ends
        next_id = len(warmup)
        while not stop.is_set():
            events = normal_events(rng, 200, start_id=next_id)
            events[100] = anomaly(100_000 + len(injected))
            injected.append(events[100]["id"])
            next_id += len(events)
            produce(topics["events"], encode(events), keys=[e["host"].encode() for e in events])
            sent[0] += len(events)
            time.sleep(0.2)

    producer = threading.Thread(target=stream, daemon=True)
    producer.start()
    joined = 0
    try:
        for _ in range(STORM):
            member = KafkaConsumer(
                topics["events"], bootstrap_servers=broker.bootstrap, group_id=group,
                enable_auto_commit=False, **fast_group,
            )  # fmt: skip
            deadline = time.monotonic() + 15
            while not member.assignment() and time.monotonic() < deadline:
                member.poll(timeout_ms=200, max_records=1)  # join; records read are not committed
            joined += bool(member.assignment())
            member.close(autocommit=False)
    finally:
        stop.set()
        producer.join(30)

    assert joined == STORM, "the second member never took partitions: no storm"
    total = sent[0]
    daemon.wait_until(lambda: daemon.scored() >= total, deadline_s=90, what="every event counted")
    assert daemon.process.poll() is None, daemon.log_tail()
    time.sleep(2)  # nothing counted twice: the count stays at what was sent
    assert daemon.scored() == total
    outliers = read_all(topics["outliers"], None, 5.0)
    published = {json.loads(record.value)["event"]["id"] for record in outliers}
    assert set(injected) <= published
    assert daemon.terminate() == 0, daemon.log_tail()
