"""The embedded broker starts, creates topics, pauses and stops for real."""

from __future__ import annotations

import socket
import time

import pytest

from streamgmm.embedded import EmbeddedBroker

pytestmark = pytest.mark.integration


def test_broker_serves_produce_and_fetch(broker, unique, produce, read_all):
    topic = unique("roundtrip")
    broker.create_topics([topic], partitions=3)
    assert broker.partition_counts([topic]) == {topic: 3}
    produce(topic, [b"a", b"b"], partition=1)
    assert [r.value for r in read_all(topic, expected=2)] == [b"a", b"b"]


def test_create_topics_is_idempotent(broker, unique):
    topic = unique("again")
    broker.create_topics([topic], partitions=2)
    broker.create_topics([topic], partitions=2)
    assert broker.partition_counts([topic]) == {topic: 2}


def test_paused_broker_accepts_connections_but_does_not_answer(broker):
    broker.pause()
    try:
        with socket.create_connection((broker.host, broker.port), timeout=1) as conn:
            conn.settimeout(0.5)
            conn.sendall(b"\x00\x00\x00\x01\x00")
            with pytest.raises(TimeoutError):
                conn.recv(1)
    finally:
        broker.resume()
    broker.admin().list_topics()  # answers again


def test_stop_frees_the_port_and_start_is_fresh():
    with EmbeddedBroker() as own:
        port = own.port
        own.create_topics(["gone"])
        pid = own.pid
    assert not own.running()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)
    started = time.monotonic()
    with EmbeddedBroker() as again:
        assert time.monotonic() - started < 10
        assert again.partition_counts(["gone"]) == {}  # memory only: nothing survives
