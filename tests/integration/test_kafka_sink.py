"""KafkaSink against a real broker: delivery by role, permanent failures, dead producers."""

from __future__ import annotations

import time

import pytest

from streamgmm.metrics import Metrics
from streamgmm.sinks import KafkaSink, Sink
from tests.support.waits import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(broker, unique):
    names = {
        "outliers": unique("outliers"),
        "dead_letter": unique("dead"),
        "scores": unique("scores"),
    }
    broker.create_topics(names.values())
    return names


def test_records_reach_their_role_topic_and_flush_confirms(broker, topics, read_all):
    with KafkaSink([broker.bootstrap], topics) as sink:
        assert isinstance(sink, Sink)
        assert sink.roles == {"outliers", "dead_letter", "scores"}
        handles = [sink.send("outliers", b"k%d" % i, b'{"o": %d}' % i) for i in range(5)]
        handles.append(sink.send("dead_letter", None, b'{"d": 1}'))
        handles.append(sink.send("scores", b"s", b'{"s": 1}'))
        assert sink.flush(15) is True
        assert sink.pending == 0
        assert all(h.succeeded() for h in handles)
        assert [h.metadata for h in handles[:5]] == [(0, i) for i in range(5)]
    outliers = read_all(topics["outliers"], expected=5)
    assert [(r.key, r.value) for r in outliers] == [
        (b"k%d" % i, b'{"o": %d}' % i) for i in range(5)
    ]
    assert [r.value for r in read_all(topics["dead_letter"], expected=1)] == [b'{"d": 1}']
    assert [r.value for r in read_all(topics["scores"], expected=1)] == [b'{"s": 1}']


def test_role_without_a_topic_cannot_be_sent_to(broker, topics):
    sink = KafkaSink([broker.bootstrap], {"outliers": topics["outliers"], "scores": None})
    try:
        assert sink.roles == {"outliers"}
        with pytest.raises(ValueError, match="no topic configured for role 'scores'"):
            sink.send("scores", None, b"{}")
    finally:
        sink.close()


def test_a_record_too_large_fails_for_good_and_is_reported(broker, topics, read_all):
    sink = KafkaSink([broker.bootstrap], topics, client={"max_request_size": 2048})
    try:
        ok = sink.send("outliers", None, b'{"small": 1}')
        big = sink.send("outliers", None, b"x" * 10_000)
        assert sink.flush(15) is False  # not everything was delivered
        assert ok.succeeded()
        assert big.done() and not big.succeeded() and big.exception() is not None
        (failure,) = sink.take_failures()
        assert failure.role == "outliers" and failure.destination == topics["outliers"]
        assert len(failure.value) == 10_000
        assert sink.flush(5) is True  # reported, so the next flush is clean
    finally:
        sink.close()
    assert [r.value for r in read_all(topics["outliers"], expected=1)] == [b'{"small": 1}']


def test_dead_producer_is_rebuilt_and_every_record_is_delivered(broker, topics, read_all):
    """Broker frozen past the delivery timeout: kafka-python's idempotent producer
    never recovers; the sink replaces it and resends everything unacknowledged."""
    metrics = Metrics()
    client = {
        "delivery_timeout_ms": 2500,
        "request_timeout_ms": 1000,
        "linger_ms": 0,
        "retry_backoff_ms": 100,
        "reconnect_backoff_max_ms": 500,
    }
    sink = KafkaSink([broker.bootstrap], topics, client=client, metrics=metrics, stall_grace_s=2.0)
    try:
        before = [sink.send("outliers", None, b'{"n": %d}' % i) for i in range(5)]
        assert sink.flush(15) is True
        broker.pause()
        try:
            during = [sink.send("outliers", None, b'{"n": %d}' % i) for i in range(5, 10)]
            assert sink.flush(1.0) is False  # nothing can be acknowledged now
            wait_for(lambda: sink.rebuilds >= 1, 15, "the expired producer to be replaced")
            later = [sink.send("outliers", None, b'{"n": %d}' % i) for i in range(10, 15)]
        finally:
            broker.resume()
        assert sink.flush(30) is True
        assert all(h.succeeded() for h in before + during + later)
        assert sink.take_failures() == []
        assert metrics.producer_rebuilds_total._value.get() == sink.rebuilds
    finally:
        sink.close()
    values = {r.value for r in read_all(topics["outliers"], expected=15)}
    assert values == {b'{"n": %d}' % i for i in range(15)}  # at least once, none lost


def test_close_with_the_broker_gone_does_not_hang(broker, topics):
    sink = KafkaSink(
        [broker.bootstrap], topics, client={"delivery_timeout_ms": 2000, "request_timeout_ms": 1000}
    )
    assert sink.flush(5) is True
    sink.send("outliers", None, b"{}")
    sink.flush(5)
    broker.pause()
    try:
        sink.send("outliers", None, b'{"stuck": true}')
        started = time.monotonic()
        sink.close(timeout_s=2)
        assert time.monotonic() - started < 8
    finally:
        broker.resume()
