"""KafkaSource against a real broker: poll, commit, seek, lag, rebalance callbacks."""

from __future__ import annotations

import time

import pytest

from streamgmm.sources import KafkaSource, Record, Source, SourceError, TopicPartition
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


def make_source(broker, topic, group, **kw) -> KafkaSource:
    client = dict(FAST_GROUP)
    client.update(kw.pop("client", {}))
    return KafkaSource([broker.bootstrap], topic, group, client=client, **kw)


def poll_until(sources, predicate, deadline_s=15.0, max_records=1000):
    """Poll every source in turn until predicate(records_by_source) holds."""
    got = {id(s): [] for s in sources}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for s in sources:
            got[id(s)].extend(s.poll(max_records, 0.2))
        if predicate([got[id(s)] for s in sources]):
            break
    return [got[id(s)] for s in sources]


@pytest.fixture
def topic(broker, unique, produce):
    """A 2-partition topic with 10 events in each partition."""
    name = unique("events")
    broker.create_topics([name], partitions=2)
    for p in (0, 1):
        produce(
            name,
            [b'{"x": %d}' % i for i in range(10)],
            partition=p,
            keys=[b"k%d" % i for i in range(10)],
        )
    return name


def test_poll_returns_every_record_with_its_coordinates(broker, topic, unique):
    source = make_source(broker, topic, unique("g"))
    assert isinstance(source, Source)
    try:
        (records,) = poll_until([source], lambda got: len(got[0]) >= 20)
        assert len(records) == 20
        r = records[0]
        assert all(hasattr(r, name) for name in Record._fields) and r.topic == topic
        assert isinstance(r.timestamp, int) and r.timestamp > 1_600_000_000_000
        by_partition = {p: [x for x in records if x.partition == p] for p in (0, 1)}
        for p, rs in by_partition.items():
            assert [x.offset for x in rs] == list(range(10)), p
            assert [x.value for x in rs] == [b'{"x": %d}' % i for i in range(10)]
            assert rs[3].key == b"k3"
        assert source.assignment() == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
        assert source.connected()
        assert source.lag() == {TopicPartition(topic, 0): 0, TopicPartition(topic, 1): 0}
    finally:
        source.close()


def test_lag_counts_what_is_left_to_read(broker, unique, produce):
    name = unique("lag")
    broker.create_topics([name], partitions=1)
    produce(name, [b"{}"] * 10, partition=0)
    source = make_source(broker, name, unique("g"))
    try:
        (records,) = poll_until([source], lambda got: len(got[0]) >= 4, max_records=4)
        assert source.lag() == {TopicPartition(name, 0): 10 - len(records)}
        poll_until([source], lambda got: source.lag() == {TopicPartition(name, 0): 0})
        assert source.lag() == {TopicPartition(name, 0): 0}
    finally:
        source.close()


def test_committed_offsets_are_where_the_next_member_starts(broker, topic, unique):
    group = unique("g")
    first = make_source(broker, topic, group)
    try:
        poll_until([first], lambda got: len(got[0]) >= 20)
        first.commit({TopicPartition(topic, 0): 6, TopicPartition(topic, 1): 8})
        assert first.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)]) == {
            TopicPartition(topic, 0): 6,
            TopicPartition(topic, 1): 8,
        }
    finally:
        first.close()
    second = make_source(broker, topic, group)
    seen_in_hook = []
    second.set_rebalance_callbacks(lambda parts: seen_in_hook.append(second.committed(parts)), None)
    try:
        (records,) = poll_until([second], lambda got: len(got[0]) >= 6)
        assert seen_in_hook == [{TopicPartition(topic, 0): 6, TopicPartition(topic, 1): 8}]
        assert sorted((r.partition, r.offset) for r in records) == [
            (0, 6),
            (0, 7),
            (0, 8),
            (0, 9),
            (1, 8),
            (1, 9),
        ]
    finally:
        second.close()


def test_seek_in_on_assign_is_honoured(broker, topic, unique):
    source = make_source(broker, topic, unique("g"))
    assigned = []

    def on_assign(parts):
        assigned.append(parts)
        assert source.committed(parts) == dict.fromkeys(parts)  # a new group: nothing yet
        source.seek({tp: 7 for tp in parts})  # e.g. offsets from a checkpoint

    source.set_rebalance_callbacks(on_assign, None)
    try:
        (records,) = poll_until([source], lambda got: len(got[0]) >= 6)
        assert assigned == [{TopicPartition(topic, 0), TopicPartition(topic, 1)}]
        assert sorted((r.partition, r.offset) for r in records) == [
            (0, 7),
            (0, 8),
            (0, 9),
            (1, 7),
            (1, 8),
            (1, 9),
        ]
        source.seek({TopicPartition(topic, 1): 9})  # outside a callback too
        more = poll_until([source], lambda got: len(got[0]) >= 1)[0]
        assert [(r.partition, r.offset) for r in more] == [(1, 9)]
    finally:
        source.close()


def test_rebalance_revokes_before_assigning_and_keeps_revoke_commits(broker, topic, unique):
    """A second member joins: the first is told before it loses partitions, commits its
    positions inside on_revoke, and the newcomer starts exactly there."""
    group = unique("g")
    log: list[tuple[str, str, set]] = []
    first = make_source(broker, topic, group)
    second = make_source(broker, topic, group)
    read_upto: dict[TopicPartition, int] = {}

    def first_revoke(parts):
        log.append(("first", "revoke", parts))
        first.commit({tp: read_upto[tp] for tp in parts if tp in read_upto})

    first.set_rebalance_callbacks(lambda p: log.append(("first", "assign", p)), first_revoke)
    second.set_rebalance_callbacks(
        lambda p: log.append(("second", "assign", p)),
        lambda p: log.append(("second", "revoke", p)),
    )
    try:
        (records,) = poll_until([first], lambda got: len(got[0]) >= 20)
        for r in records:  # the daemon would commit "last processed + 1"
            tp = TopicPartition(r.topic, r.partition)
            read_upto[tp] = max(read_upto.get(tp, 0), r.offset + 1)
        _, got_second = poll_until(
            [first, second],
            lambda got: len(first.assignment()) == 1 and len(second.assignment()) == 1,
            deadline_s=45,  # a rebalance takes seconds; a loaded 2-core runner, many more
        )
        assert len(first.assignment() | second.assignment()) == 2
        first_events = [(who, what) for who, what, _ in log if who == "first"]
        assert first_events[:2] == [("first", "assign"), ("first", "revoke")]
        assert ("second", "assign") in [(who, what) for who, what, _ in log]
        # everything was committed in on_revoke: the newcomer re-reads nothing
        assert got_second == []
        moved = next(iter(second.assignment()))
        assert second.committed([moved]) == {moved: 10}
    finally:
        second.close()
        first.close()


def test_callback_errors_surface_from_poll(broker, topic, unique):
    source = make_source(broker, topic, unique("g"))
    refused = []

    def broken(parts):
        try:
            source.lag()  # a network look-up: refused inside a callback, with a reason
        except SourceError as exc:
            refused.append(str(exc))
        raise RuntimeError("daemon bug")

    source.set_rebalance_callbacks(broken, None)
    try:
        with pytest.raises(RuntimeError, match="daemon bug"):
            poll_until([source], lambda got: False, deadline_s=10)
        assert refused and "cannot run inside a rebalance callback" in refused[0]
    finally:
        source.close()


def test_commit_skips_partitions_not_assigned(broker, topic, unique):
    source = make_source(broker, topic, unique("g"))
    try:
        poll_until([source], lambda got: len(got[0]) >= 1)
        source.commit({TopicPartition(topic, 0): 3, TopicPartition("elsewhere", 0): 5})
        assert source.committed([TopicPartition(topic, 0)]) == {TopicPartition(topic, 0): 3}
    finally:
        source.close()


def test_unreachable_broker_is_not_an_exception():
    port = free_port()  # nothing listens here
    source = KafkaSource(
        [f"127.0.0.1:{port}"],
        "events",
        "g",
        client={"bootstrap_timeout_ms": 1000, "reconnect_backoff_max_ms": 200},
    )
    try:
        started = time.monotonic()
        assert source.poll(10, 0.5) == []
        assert source.poll(10, 0.5) == []  # and again: it keeps trying
        assert time.monotonic() - started < 10
        assert not source.connected()
        assert source.assignment() == set() and source.lag() == {}
    finally:
        source.close()
