"""Clients that are not kafka-python (confluent-kafka, i.e. librdkafka) on both ends."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.support.events import anomaly, normal_events
from tests.support.processes import DaemonProcess, write_config

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka not installed")


def librdkafka_produce(bootstrap: str, topic: str, events: list[tuple[bytes | None, bytes]]):
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors = []
    for key, value in events:
        producer.produce(
            topic,
            value=value,
            key=key,
            on_delivery=lambda err, msg: errors.append(err) if err else None,
        )
    assert producer.flush(30) == 0 and not errors, errors


def librdkafka_read(bootstrap: str, topic: str, expected: int, deadline_s: float = 30.0):
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{topic}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
    })  # fmt: skip
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + deadline_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            messages.append(message)
    finally:
        consumer.close()
    return messages


def test_librdkafka_producer_and_consumer_interoperate(tmp_path, broker, unique):
    topics = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    broker.create_topics(list(topics.values()), partitions=1)
    rng = np.random.default_rng(5)
    events = normal_events(rng, 1200) + [anomaly(900_000 + i) for i in range(4)]
    batch = [(e["host"].encode(), json.dumps(e).encode()) for e in events]
    batch += [(b"broken-key", b"{not json"), (None, b'{"a": 1}')]
    librdkafka_produce(broker.bootstrap, topics["events"], batch)

    path, port = write_config(tmp_path, broker.bootstrap, topics, unique("g"))
    daemon = DaemonProcess(path, port, tmp_path / "daemon.log")
    try:
        daemon.wait_until(lambda: daemon.scored() >= len(batch), what="every event counted")
        outliers = librdkafka_read(
            broker.bootstrap, topics["outliers"], int(daemon.metric("streamgmm_outliers_total"))
        )
        dead = librdkafka_read(broker.bootstrap, topics["dead"], 2)
    finally:
        assert daemon.terminate() == 0

    injected = [m for m in outliers if json.loads(m.value())["event"].get("injected")]
    assert sorted(json.loads(m.value())["event"]["id"] for m in injected) == [
        900_000 + i for i in range(4)
    ]
    assert {m.key() for m in injected} == {b"bad"}  # the event's message key is kept
    by_key = {m.key(): json.loads(m.value()) for m in dead}
    assert by_key[b"broken-key"]["reason"] == "not_json"
    assert by_key[None]["reason"] == "missing_field"
