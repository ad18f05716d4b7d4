"""File source and sink, and the Kafka sink's bookkeeping with a scripted producer.

The Kafka sink is tested against the real broker in tests/integration; here a
producer whose futures are driven by the test checks what is hard to provoke
there on cue: a producer that goes silent (no report at all), late reports
from a replaced producer, and config errors.
"""

from __future__ import annotations

import io
import os
import threading
import time
from typing import ClassVar

import pytest

from streamgmm.config import parse_config
from streamgmm.sinks import FileSink, KafkaSink, SendHandle, SinkError, sink_from_config
from streamgmm.sources import FileSource, Source, SourceError, TopicPartition, source_from_config

# ---------------------------------------------------------------------------
# FileSource


def test_file_source_offsets_are_zero_based_line_indexes(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"x": 1}\r\n\n{"x": 3}\n{"x": 4}')
    source = FileSource(str(path))
    assert isinstance(source, Source)
    records = source.poll(10, 0.1)
    assert [(r.topic, r.partition, r.offset, r.value) for r in records] == [
        ("in.jsonl", 0, 0, b'{"x": 1}'),
        ("in.jsonl", 0, 1, b""),
        ("in.jsonl", 0, 2, b'{"x": 3}'),
        ("in.jsonl", 0, 3, b'{"x": 4}'),
    ]
    assert records[0].timestamp is None and records[0].key is None
    assert source.exhausted and source.poll(10, 0.1) == []
    assert source.assignment() == {TopicPartition("in.jsonl", 0)}
    assert source.lag() == {TopicPartition("in.jsonl", 0): 0}
    source.close()


def test_file_source_honours_max_records(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_bytes(b"{}\n" * 25)
    source = FileSource(str(path))
    sizes = []
    while not source.exhausted:
        sizes.append(len(source.poll(10, 0.1)))
    assert sizes == [10, 10, 5]


def test_file_source_seeks_forward_and_back(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"".join(b'{"i": %d}\n' % i for i in range(6)))
    source = FileSource(str(path))
    tp = TopicPartition("s.jsonl", 0)
    source.seek({tp: 4})  # e.g. resume after a checkpoint
    assert [r.offset for r in source.poll(10, 0.1)] == [4, 5]
    source.seek({tp: 1})
    assert [r.offset for r in source.poll(2, 0.1)] == [1, 2]
    assert source.committed({tp}) == {} and source.topic_id("s.jsonl") is None


def test_file_source_on_assign_runs_once_with_the_single_partition(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"{}\n{}\n")
    source = FileSource(str(path))
    seen = []
    source.set_rebalance_callbacks(seen.append, None)
    source.poll(1, 0.1)
    source.poll(1, 0.1)
    assert seen == [{TopicPartition("a.jsonl", 0)}]


def test_file_source_on_a_pipe_honours_the_timeout_and_partial_lines():
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb", buffering=0)
    source = FileSource("-", stream=reader)
    try:
        started = time.monotonic()
        assert source.poll(10, 0.2) == []  # nothing yet: returns after the timeout
        assert 0.15 < time.monotonic() - started < 2
        os.write(write_fd, b'{"a": 1}\n{"b"')
        assert [r.value for r in source.poll(10, 0.5)] == [b'{"a": 1}']
        os.write(write_fd, b": 2}\n")
        assert [r.value for r in source.poll(10, 0.5)] == [b'{"b": 2}']
        assert not source.exhausted
        os.close(write_fd)
        assert source.poll(10, 0.5) == [] and source.exhausted
    finally:
        reader.close()


def test_file_source_cannot_seek_back_in_a_pipe():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"{}\n{}\n")
    reader = os.fdopen(read_fd, "rb", buffering=0)
    source = FileSource("-", stream=reader)
    try:
        source.poll(2, 0.5)
        with pytest.raises(SourceError, match="cannot seek back to line 1"):
            source.seek({TopicPartition("stdin", 0): 0})
    finally:
        os.close(write_fd)
        reader.close()


def test_missing_input_file_names_the_key(tmp_path):
    with pytest.raises(SourceError, match=r"source.file.path: cannot open"):
        FileSource(str(tmp_path / "nope.jsonl"))


def test_source_from_config(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"{}\n")
    cfg = parse_config(
        {"features": {"fields": ["x"]}, "source": {"kind": "file", "file": {"path": str(path)}}},
        env={},
    )
    source = source_from_config(cfg)
    assert isinstance(source, FileSource) and source.topic == "c.jsonl"
    source.close()


def test_kafka_source_first_connection_waits_no_longer_than_the_daemon_allows():
    from kafka import KafkaConsumer

    from streamgmm.sources import KafkaSource

    def options(**kwargs):
        source = KafkaSource(["x:1"], "t", "g", consumer_factory=KafkaConsumer, **kwargs)
        return source._options["bootstrap_timeout_ms"]

    assert options() == 10_000  # kafka-python's 30 s would stall the loop
    assert options(max_block_s=0.25) == 250  # a short WatchdogSec= wins
    assert options(client={"bootstrap_timeout_ms": 2000}, max_block_s=3.75) == 2000


# ---------------------------------------------------------------------------
# FileSink


def test_file_sink_writes_each_role_to_its_file_and_fsyncs(tmp_path):
    sink = FileSink(
        str(tmp_path / "out.jsonl"), str(tmp_path / "dead.jsonl"), str(tmp_path / "scores.jsonl")
    )
    assert sink.roles == {"outliers", "dead_letter", "scores"}
    assert sink.send("outliers", b"k", b'{"o": 1}').succeeded()
    sink.send("dead_letter", None, b'{"d": 1}')
    sink.send("scores", None, b'{"s": 1}')
    assert sink.flush(1) is True
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"o": 1}\n'
    assert (tmp_path / "dead.jsonl").read_bytes() == b'{"d": 1}\n'
    assert (tmp_path / "scores.jsonl").read_bytes() == b'{"s": 1}\n'
    sink.close()
    again = FileSink(str(tmp_path / "out.jsonl"), str(tmp_path / "dead.jsonl"))
    again.send("outliers", None, b'{"o": 2}')
    again.close()
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"o": 1}\n{"o": 2}\n'  # appended


def test_file_sink_defaults_to_stdout_and_stderr_without_scores():
    out, err = io.BytesIO(), io.BytesIO()
    sink = FileSink(stdout=out, stderr=err)
    sink.send("outliers", None, b"{}")
    sink.send("dead_letter", None, b"[]")
    assert sink.flush(1) and out.getvalue() == b"{}\n" and err.getvalue() == b"[]\n"
    with pytest.raises(ValueError, match="no file configured for role 'scores'"):
        sink.send("scores", None, b"{}")


def test_file_sink_write_failure_is_reported_and_flush_says_so():
    out = io.BytesIO()
    sink = FileSink(stdout=out, stderr=io.BytesIO())
    out.close()  # e.g. the reading end of a pipe went away
    handle = sink.send("outliers", None, b"{}")
    assert handle.done() and not handle.succeeded()
    assert sink.flush(1) is False
    (failure,) = sink.take_failures()
    assert failure.role == "outliers" and failure.value == b"{}"


def test_file_sink_unwritable_path_names_the_key(tmp_path):
    with pytest.raises(SinkError, match=r"sink.file.dead_letter_path: cannot open"):
        FileSink(str(tmp_path / "o.jsonl"), str(tmp_path / "no" / "such" / "dir.jsonl"))


def test_sink_from_config_file(tmp_path):
    cfg = parse_config(
        {
            "features": {"fields": ["x"]},
            "sink": {
                "kind": "file",
                "file": {"path": str(tmp_path / "o"), "dead_letter_path": str(tmp_path / "d")},
            },
        },
        env={},
    )
    sink = sink_from_config(cfg)
    assert isinstance(sink, FileSink) and sink.roles == {"outliers", "dead_letter"}
    sink.close()


# ---------------------------------------------------------------------------
# SendHandle callbacks


def test_done_callbacks_run_once_when_the_outcome_is_known():
    handle, seen = SendHandle("outliers"), []
    handle.add_done_callback(lambda h: seen.append(("first", h.succeeded())))
    assert seen == []
    handle._resolve((0, 7))
    handle._resolve((0, 8))  # a duplicate report changes nothing
    handle.add_done_callback(lambda h: seen.append(("late", h.metadata)))  # runs at once
    assert seen == [("first", True), ("late", (0, 7))]


def test_done_callbacks_see_a_failure_and_a_raising_one_does_not_stop_the_others(caplog):
    handle, seen = SendHandle("outliers"), []
    handle.add_done_callback(lambda h: 1 / 0)
    handle.add_done_callback(lambda h: seen.append(type(h.exception()).__name__))
    handle._fail(TimeoutError("no broker"))
    assert seen == ["TimeoutError"]
    assert "a send callback failed" in caplog.text


def test_wait_blocks_until_the_outcome_from_another_thread():
    handle = SendHandle("outliers")
    assert handle.wait(0.01) is False and not handle.done()
    threading.Timer(0.05, handle._resolve, [(0, 3)]).start()
    assert handle.wait(5) is True and handle.succeeded() and handle.metadata == (0, 3)
    assert handle.wait(0) is True  # done: returns at once


def test_the_kafka_sink_runs_callbacks_on_acknowledgement(scripted):
    scripted.silent_first = False
    sink = KafkaSink(["x:1"], {"outliers": "o"}, producer_factory=scripted)
    try:
        acked = threading.Event()
        handle = sink.send("outliers", None, b"v")
        handle.add_done_callback(lambda h: acked.set() if h.succeeded() else None)
        assert acked.wait(5) and handle.metadata == (0, 0)
    finally:
        sink.close()


# ---------------------------------------------------------------------------
# KafkaSink bookkeeping with a scripted producer


class Metadata:
    def __init__(self, partition: int, offset: int) -> None:
        self.partition, self.offset = partition, offset


class ScriptedFuture:
    """A kafka-python-like future the test completes (or never completes)."""

    def __init__(self) -> None:
        self.callbacks, self.errbacks = [], []

    def add_callback(self, fn, *args):
        self.callbacks.append((fn, args))
        return self

    def add_errback(self, fn, *args):
        self.errbacks.append((fn, args))
        return self

    def succeed(self, metadata):
        for fn, args in self.callbacks:
            fn(*args, metadata)

    def fail(self, error):
        for fn, args in self.errbacks:
            fn(*args, error)


class ScriptedProducer:
    """Records sends; acks them at once unless told to stay silent."""

    instances: ClassVar[list[ScriptedProducer]] = []
    silent_first = True  # the first producer never reports: it is "dead"

    def __init__(self, **config) -> None:
        self.config = dict(config, api_version=(3, 9))
        self.sent: list[tuple[str, bytes]] = []
        self.futures: list[ScriptedFuture] = []
        self.closed = False
        self.silent = self.silent_first and not ScriptedProducer.instances
        ScriptedProducer.instances.append(self)

    def send(self, topic, key=None, value=None):
        future = ScriptedFuture()
        self.sent.append((topic, value))
        self.futures.append(future)
        if not self.silent:
            threading.Timer(0.01, future.succeed, [Metadata(0, len(self.sent) - 1)]).start()
        return future

    def close(self, timeout=None):
        self.closed = True


@pytest.fixture
def scripted():
    ScriptedProducer.instances = []
    ScriptedProducer.silent_first = True
    yield ScriptedProducer
    ScriptedProducer.instances = []


def test_a_silent_producer_is_replaced_after_the_delivery_timeout(scripted):
    sink = KafkaSink(
        ["x:1"],
        {"outliers": "o", "dead_letter": "d"},
        client={"delivery_timeout_ms": 300},
        stall_grace_s=0.2,
        producer_factory=scripted,
    )
    try:
        handles = [sink.send("outliers", None, b"%d" % i) for i in range(3)]
        assert sink.flush(0.2) is False  # the first producer never answers
        assert sink.flush(5) is True  # replaced, everything resent and acknowledged
        assert sink.rebuilds == 1 and all(h.succeeded() for h in handles)
        first, second = scripted.instances[:2]
        assert first.closed
        assert second.sent == [("o", b"0"), ("o", b"1"), ("o", b"2")]  # in order
        assert second.config["api_version"] == (3, 9)  # no version probe on rebuild
        assert second.config["acks"] == "all"
    finally:
        sink.close()


def test_a_late_ack_from_the_replaced_producer_still_counts(scripted):
    sink = KafkaSink(
        ["x:1"],
        {"outliers": "o"},
        client={"delivery_timeout_ms": 300},
        stall_grace_s=0.2,
        producer_factory=scripted,
    )
    try:
        handle = sink.send("outliers", None, b"a")
        deadline = time.monotonic() + 5
        while sink.rebuilds == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        scripted.instances[0].futures[0].succeed(Metadata(0, 41))  # the old one answers after all
        assert sink.flush(5) is True and handle.succeeded()
    finally:
        sink.close()


def test_transient_delivery_error_rebuilds_and_permanent_one_does_not(scripted):
    from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

    scripted.silent_first = True
    sink = KafkaSink(
        ["x:1"],
        {"outliers": "o"},
        client={"delivery_timeout_ms": 60_000},
        producer_factory=scripted,
    )
    try:
        too_big = sink.send("outliers", None, b"big")
        expired = sink.send("outliers", None, b"expired")
        deadline = time.monotonic() + 5
        while len(scripted.instances[0].futures) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        first = scripted.instances[0]
        first.futures[0].fail(MessageSizeTooLargeError("too large"))
        first.futures[1].fail(KafkaTimeoutError("Expiring 1 record(s)"))
        assert sink.flush(5) is False  # the too-large record is lost for good
        assert too_big.exception() is not None and expired.succeeded()
        assert sink.rebuilds == 1
        assert [f.value for f in sink.take_failures()] == [b"big"]
        assert sink.flush(1) is True
    finally:
        sink.close()


def test_refused_producer_options_are_fatal_with_the_key():
    def refuse(**config):
        from kafka.errors import KafkaConfigurationError

        raise KafkaConfigurationError("bad security_protocol")

    sink = KafkaSink(["x:1"], {"outliers": "o"}, producer_factory=refuse)
    try:
        with pytest.raises(SinkError, match="bad security_protocol"):
            sink.send("outliers", None, b"x")
            sink.flush(2)
    finally:
        sink.close(timeout_s=1)


def test_close_does_not_wait_for_a_producer_still_looking_for_a_broker(scripted):
    release = threading.Event()
    built = []

    def slow_bootstrap(**config):  # kafka-python waits bootstrap_timeout_ms for a first broker
        release.wait(30)
        built.append(ScriptedProducer(**config))
        return built[-1]

    sink = KafkaSink(["x:1"], {"outliers": "o"}, producer_factory=slow_bootstrap)
    time.sleep(0.1)  # the worker is inside the factory now
    started = time.monotonic()
    sink.close(timeout_s=30)
    assert time.monotonic() - started < 2
    release.set()
    deadline = time.monotonic() + 5
    while not (built and built[0].closed) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert built and built[0].closed, "the late producer is closed by the worker itself"


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="unknown sink roles"):
        KafkaSink(["x:1"], {"alerts": "a"}, producer_factory=ScriptedProducer)
