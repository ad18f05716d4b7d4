"""The compacted state topic (streamgmm.state_topic) on the real embedded broker."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from streamgmm.checkpoint import pack_state
from streamgmm.state_topic import StateStore, StateTopicError

FINGERPRINT = {"fields": ["a", "b"], "covariance_type": "diag"}


def head(level: float, n_components: int = 3) -> dict:
    return {
        "model": {"means": np.full((n_components, 2), level), "weights": np.ones(n_components)},
        "threshold": {"value": -level},
        "n_seen": int(level),
    }


def entity(level: float) -> dict:
    return {
        "n": np.full(3, level, np.float32),
        "first": np.full((3, 2), level, np.float32),
        "events": np.array(int(level), np.int64),
    }


@pytest.fixture
def store(broker, unique):
    stores = []

    def make(topic=None, input_topic="events", fingerprint=FINGERPRINT, **client):
        s = StateStore(
            broker.bootstrap,
            topic or unique("state"),
            input_topic,
            client=client,
            fingerprint=fingerprint,
        )
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close()


def test_creates_a_compacted_topic_and_accepts_it_again(broker, store):
    s = store()
    s.ensure_topic(3)
    assert broker.partition_counts([s.topic]) == {s.topic: 3}
    s.ensure_topic(3)  # existing, right count, compact: fine


def test_refuses_a_topic_with_another_partition_count(broker, store, unique):
    s = store()
    broker.create_topics([s.topic], partitions=2)
    with pytest.raises(StateTopicError, match=r"has 2 partitions.*has 6.*delete the state topic"):
        s.ensure_topic(6)


def test_refuses_a_topic_whose_policy_is_delete(broker, store):
    from kafka.admin import NewTopic

    s = store()
    broker.admin().create_topics(
        [NewTopic(s.topic, 2, 1, topic_configs={"cleanup.policy": "delete"})]
    )
    with pytest.raises(StateTopicError, match=r"cleanup.policy=delete.*compact"):
        s.ensure_topic(2)


def test_warns_and_goes_on_when_the_policy_cannot_be_read(broker, store, caplog):
    s = store()
    broker.create_topics([s.topic], partitions=2)  # Tansu reports no configs for it
    with caplog.at_level(logging.WARNING, logger="streamgmm.state_topic"):
        s.ensure_topic(2)
    assert "cannot read the cleanup.policy" in caplog.text


def test_write_then_restore_round_trip(store):
    s = store()
    s.ensure_topic(2)
    entities = {f"host-{i}": entity(i) for i in range(50)}
    records, size = s.write(1, head(5.0), entities, removed=[], next_offset=1000)
    assert records == 51 and size > 51 * 100
    assert s.flush(10)
    other = store(topic=s.topic)
    restored = other.restore(1, timeout_s=20)
    assert restored.next_offset == 1000 and restored.records == 51 and restored.rejected == 0
    np.testing.assert_array_equal(restored.head["model"]["means"], head(5.0)["model"]["means"])
    assert restored.head["threshold"]["value"] == -5.0
    assert sorted(restored.entities) == sorted(entities)
    np.testing.assert_array_equal(restored.entities["host-7"]["first"], entity(7)["first"])
    assert restored.entities["host-7"]["n"].dtype == np.float32
    assert restored.learn_from == {}
    assert restored.bytes == size
    empty = other.restore(0, timeout_s=20)  # nothing written to partition 0
    assert empty.head is None and empty.entities == {} and empty.next_offset is None


def test_entity_ids_of_any_text_round_trip(store):
    """Ids with a slash, non-ASCII text, a lone surrogate (a "\\ud800" escape in an
    event's JSON) and hundreds of characters are stored and read back as they were."""
    s = store()
    s.ensure_topic(1)
    names = ["a/b/c", "hôte-ü-東京", "bad-\ud800-half", "x" * 500, " "]
    s.write(0, head(1.0), {name: entity(i) for i, name in enumerate(names)}, [], next_offset=9)
    assert s.flush(10)
    restored = store(topic=s.topic).restore(0, timeout_s=20)
    assert sorted(restored.entities) == sorted(names) and restored.rejected == 0


def test_the_highest_carried_offset_wins_over_a_late_older_write(store):
    s = store()
    s.ensure_topic(1)
    s.write(0, head(2.0), {"a": entity(2), "b": entity(2)}, [], next_offset=200)
    assert s.flush(10)
    stale = store(topic=s.topic)  # an instance that lost the partition, writing late
    stale.write(0, head(1.0), {"a": entity(1), "c": entity(1)}, [], next_offset=100)
    assert stale.flush(10)
    restored = store(topic=s.topic).restore(0, timeout_s=20)
    assert restored.next_offset == 200 and restored.head["n_seen"] == 2
    assert restored.entities["a"]["events"] == 2 and restored.entities["b"]["events"] == 2
    # "c" was only ever written by the stale instance: its record is below the head
    assert set(restored.entities) == {"a", "b", "c"} and restored.learn_from == {}


def test_tombstones_delete_and_stale_writes_do_not_resurrect(store):
    s = store()
    s.ensure_topic(1)
    s.write(0, head(1.0), {"a": entity(1), "b": entity(1)}, [], next_offset=10)
    s.write(0, head(2.0), {}, removed=["a"], next_offset=20)
    assert s.flush(10)
    late = store(topic=s.topic)
    late.write(0, head(1.5), {"a": entity(1.5)}, [], next_offset=15)
    assert late.flush(10)
    restored = store(topic=s.topic).restore(0, timeout_s=20)
    assert set(restored.entities) == {"b"} and restored.next_offset == 20


def test_entities_ahead_of_the_head_learn_from_their_own_offset(store):
    s = store()
    s.ensure_topic(1)
    s.write(0, head(1.0), {"a": entity(1), "b": entity(1)}, [], next_offset=10)
    assert s.flush(10)
    # a crash inside the next state write: entities produced, head not
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all")
    value = pack_state(
        entity(3),
        kind="entity",
        next_offset=30,
        fingerprint=FINGERPRINT,
        describe_fingerprint=False,
    )
    producer.send(s.topic, key=s.entity_key(0, "a"), value=value, partition=0).get(10)
    producer.close(5)
    restored = store(topic=s.topic).restore(0, timeout_s=20)
    assert restored.next_offset == 10 and restored.learn_from == {"a": 30}
    assert restored.entities["a"]["events"] == 3


def test_corrupt_records_are_skipped_counted_and_the_older_state_kept(store, caplog):
    from kafka import KafkaProducer

    s = store()
    s.ensure_topic(1)
    s.write(0, head(1.0), {"a": entity(1)}, [], next_offset=10)
    assert s.flush(10)
    good = pack_state(
        entity(9),
        kind="entity",
        next_offset=90,
        fingerprint=FINGERPRINT,
        describe_fingerprint=False,
    )
    damaged = bytearray(good)
    damaged[-1] ^= 0xFF
    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all")
    producer.send(s.topic, key=s.entity_key(0, "a"), value=bytes(damaged), partition=0).get(10)
    producer.send(s.topic, key=s.entity_key(0, "b"), value=b"not ours", partition=0).get(10)
    producer.close(5)
    with caplog.at_level(logging.ERROR, logger="streamgmm.state_topic"):
        restored = store(topic=s.topic).restore(0, timeout_s=20)
    assert restored.rejected == 2 and set(restored.entities) == {"a"}
    assert restored.entities["a"]["events"] == 1 and restored.learn_from == {}
    assert "2 records skipped" in caplog.text and "checkpoint.topic" in caplog.text


def test_a_head_of_another_configuration_stops_the_restore(store):
    s = store()
    s.ensure_topic(1)
    s.write(0, head(1.0), {}, [], next_offset=10)
    assert s.flush(10)
    other = store(topic=s.topic, fingerprint={**FINGERPRINT, "fields": ["a", "c"]})
    with pytest.raises(StateTopicError, match=r"fields: record \['a', 'b'\].*elsewhere"):
        other.restore(0, timeout_s=20)


def test_only_the_partitions_own_keys_are_restored(store):
    s = store()
    s.ensure_topic(2)
    s.write(1, head(1.0), {"a": entity(1)}, [], next_offset=10)
    s.write(1, head(2.0), {"x": entity(2)}, [], next_offset=99)  # not read: other prefix below
    assert s.flush(10)
    other_input = store(topic=s.topic, input_topic="other")
    other_input.write(1, head(3.0), {"z": entity(3)}, [], next_offset=5)
    assert other_input.flush(10)
    restored = store(topic=s.topic).restore(1, timeout_s=20)
    assert restored.foreign == 2 and set(restored.entities) == {"a", "x"}
    assert restored.next_offset == 99


def test_a_head_over_the_request_size_is_refused_naming_the_cause(store):
    s = store(max_request_size=64 * 1024)
    s.ensure_topic(1)
    with pytest.raises(StateTopicError, match=r"head state of partition 0 is .* max_request_size"):
        s.write(0, head(1.0, n_components=4096), {"a": entity(1)}, [], next_offset=10)
    assert s.flush(10)  # nothing of the unit was sent
    assert store(topic=s.topic).restore(0, timeout_s=20).records == 0


def test_restore_of_an_uncompacted_topic_with_many_updates_per_entity(store):
    """20,000 entities x 10 updates (200,000 records, no compaction): report the rate."""
    s = store()
    s.ensure_topic(1)
    n_entities, updates = 20_000, 10
    template = entity(1)
    started = time.monotonic()
    for update in range(updates):
        offset = (update + 1) * 1000
        states = {}
        for i in range(n_entities):
            state = dict(template)
            state["events"] = np.array(update, np.int64)
            states[f"host-{i}"] = state
        s.write(0, head(float(update)), states, [], next_offset=offset)
        assert s.flush(60)
    write_s = time.monotonic() - started
    restored = store(topic=s.topic).restore(0, timeout_s=120)
    assert restored.records == n_entities * updates + updates
    assert len(restored.entities) == n_entities and restored.next_offset == updates * 1000
    assert all(int(e["events"]) == updates - 1 for e in restored.entities.values())
    mb = restored.bytes / 1e6
    print(
        f"\nstate restore: {restored.records} records, {mb:.1f} MB in {restored.seconds:.2f} s "
        f"({mb / restored.seconds:.1f} MB/s, {restored.records / restored.seconds:,.0f} "
        f"records/s, {restored.seconds / n_entities * 1e5 / updates:.2f} s per 100,000 "
        f"entity records); write {write_s:.1f} s"
    )


def test_flush_is_bounded_and_the_store_writes_again_after_an_outage(broker, store):
    s = store(request_timeout_ms=3000, delivery_timeout_ms=4000)
    s.ensure_topic(1)
    s.write(0, head(1.0), {"a": entity(1)}, [], next_offset=10)
    assert s.flush(10)
    with broker.paused():
        time.sleep(0.2)  # let the stop reach every thread of the broker
        s.write(0, head(2.0), {"a": entity(2)}, [], next_offset=20)
        started = time.monotonic()
        assert s.flush(1.5) is False
        assert time.monotonic() - started < 4
    s.write(0, head(3.0), {"a": entity(3)}, [], next_offset=30)  # a new producer
    assert s.flush(20)
    restored = store(topic=s.topic).restore(0, timeout_s=20)
    assert restored.next_offset == 30 and restored.entities["a"]["events"] == 3


def test_a_restore_that_cannot_finish_in_time_says_so(broker, store):
    s = store(request_timeout_ms=3000)
    s.ensure_topic(1)
    s.write(0, head(1.0), {"a": entity(1)}, [], next_offset=10)
    assert s.flush(10)
    reader = store(topic=s.topic)
    reader.restore(0, timeout_s=20)  # connected; now the broker stops answering
    with broker.paused():
        time.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="retry"):
            reader.restore(0, timeout_s=1.5)
        assert time.monotonic() - started < 5
    assert reader.restore(0, timeout_s=20).next_offset == 10


def test_entities_of_another_configuration_are_skipped_unless_none_is_checked(store):
    s = store()
    s.ensure_topic(1)
    s.write(0, head(1.0), {"a": entity(1)}, [], next_offset=10)
    assert s.flush(10)
    other = store(topic=s.topic, fingerprint={**FINGERPRINT, "fields": ["c"]})
    other.write(0, head(2.0), {"b": entity(2)}, [], next_offset=5)  # its head loses: older
    assert other.flush(10)
    restored = store(topic=s.topic).restore(0, timeout_s=20)
    assert set(restored.entities) == {"a"} and restored.rejected == 1
    unchecked = store(topic=s.topic, fingerprint=None).restore(0, timeout_s=20)
    assert set(unchecked.entities) == {"a", "b"} and unchecked.rejected == 0
