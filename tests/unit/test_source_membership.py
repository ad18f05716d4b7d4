"""KafkaSource fetches only as a confirmed member of its group (a scripted consumer).

After an outage, a consumer cannot tell from its cached state that a
restarted broker forgot the group and the topic: it would fetch its old
positions in a new, unrelated log. So fetching pauses while membership is
unsure, and resumes once a heartbeat was answered (or the group was joined
again) and the metadata, with the topics' ids, was refreshed since.
tests/integration/test_reliability_broker.py shows it on a real broker.
"""

from __future__ import annotations

import time

import kafka

from streamgmm.sources import KafkaSource, TopicPartition

TP = TopicPartition("events", 0)


def now() -> float:
    """kafka-python's clock (time.monotonic), strictly later than the last reading."""
    time.sleep(0.002)
    return time.monotonic()


class Heartbeat:
    def __init__(self) -> None:
        self.last_reset = now()
        self.last_receive = now()
        self.expired = False

    def session_timeout_expired(self) -> bool:
        return self.expired


class Cluster:
    def __init__(self) -> None:
        self._last_successful_refresh_ms = now() * 1000
        self.updates_requested = 0

    def request_update(self) -> None:
        self.updates_requested += 1

    def topic_id(self, topic):
        return None


class Consumer:
    """Enough of kafka.KafkaConsumer for KafkaSource.poll()."""

    def __init__(self, **options) -> None:
        self._coordinator = type("Coordinator", (), {})()
        self._coordinator.coordinator_id = "coordinator-1"
        self._coordinator.heartbeat = Heartbeat()
        self._client = type("Client", (), {})()
        self._client.cluster = Cluster()
        self._assigned = set()
        self._paused = set()
        self.listener = None

    def subscribe(self, topics, listener=None) -> None:
        self.listener = listener

    def assignment(self):
        return {kafka.TopicPartition(*tp) for tp in self._assigned}

    def paused(self):
        return set(self._paused)

    def pause(self, *partitions) -> None:
        self._paused |= set(partitions)

    def resume(self, *partitions) -> None:
        self._paused -= set(partitions)

    def poll(self, timeout_ms=0, max_records=None):
        return {}


def source_and_consumer():
    made = {}

    def factory(**options):
        made["consumer"] = Consumer(**options)
        return made["consumer"]

    source = KafkaSource(["b:9092"], "events", "g", consumer_factory=factory)
    source.set_rebalance_callbacks(lambda p: None, lambda p: None)
    source.poll(10, 0)
    consumer = made["consumer"]
    consumer._assigned = {TP}
    return source, consumer


def test_fetching_pauses_while_unsure_and_resumes_once_confirmed_and_refreshed():
    source, consumer = source_and_consumer()
    heartbeat, cluster = consumer._coordinator.heartbeat, consumer._client.cluster
    source.poll(10, 0)
    assert consumer.paused() == set(), "a confirmed member fetches"

    consumer._coordinator.coordinator_id = None  # the broker went away
    source.poll(10, 0)
    assert consumer.paused() == {TP}
    assert not source.connected()

    consumer._coordinator.coordinator_id = "coordinator-1"  # found again: reset, no answer yet
    heartbeat.last_reset = now()
    source.poll(10, 0)
    assert consumer.paused() == {TP}, "a rediscovered coordinator is no proof of membership"

    heartbeat.last_receive = now()  # a heartbeat answered
    source.poll(10, 0)
    assert consumer.paused() == {TP}, "the topic ids must be refreshed first"
    assert cluster.updates_requested == 1

    cluster._last_successful_refresh_ms = now() * 1000
    source.poll(10, 0)
    assert consumer.paused() == set()


def test_a_join_after_an_outage_pauses_the_new_assignment_at_once():
    """The partitions of a join are fetched in the same poll as the join: after an
    outage they are paused inside the callback, before that fetch."""
    source, consumer = source_and_consumer()
    consumer._coordinator.heartbeat.expired = True  # no heartbeat answered in time
    source.poll(10, 0)
    assert consumer.paused() == {TP}
    consumer._paused.clear()  # the group is joined again: a fresh assignment
    consumer._coordinator.heartbeat.expired = False
    consumer._coordinator.heartbeat.last_reset = now()
    source._note_join([kafka.TopicPartition(*TP)])
    assert consumer.paused() == {TP}


def test_a_normal_rebalance_does_not_pause():
    source, consumer = source_and_consumer()
    consumer._coordinator.heartbeat.last_reset = now()  # joined anew
    source._note_join([kafka.TopicPartition(*TP)])
    source.poll(10, 0)
    assert consumer.paused() == set()


def test_partitions_paused_by_the_daemon_stay_paused_until_it_resumes_them():
    """pause()/resume() (a partition being restored) and the pausing while membership is
    unsure do not undo each other."""
    source, consumer = source_and_consumer()
    other = TopicPartition("events", 1)
    consumer._assigned = {TP, other}
    heartbeat, cluster = consumer._coordinator.heartbeat, consumer._client.cluster
    source.pause([other])
    source.poll(10, 0)
    assert consumer.paused() == {kafka.TopicPartition(*other)}, "a confirmed member keeps it"

    consumer._coordinator.coordinator_id = None  # unsure: everything paused
    source.poll(10, 0)
    assert consumer.paused() == {kafka.TopicPartition(*TP), kafka.TopicPartition(*other)}
    source.resume([other])  # restored meanwhile: fetched once membership is confirmed
    assert len(consumer.paused()) == 2

    consumer._coordinator.coordinator_id = "coordinator-1"
    heartbeat.last_receive = now()
    cluster._last_successful_refresh_ms = now() * 1000
    source.poll(10, 0)
    assert consumer.paused() == set()


def test_group_member_is_false_once_the_generation_is_reset():
    source, consumer = source_and_consumer()
    consumer._coordinator._generation = type("Generation", (), {"generation_id": 7})()
    assert source.group_member()
    consumer._coordinator._generation.generation_id = -1  # evicted: kafka-python reset it
    assert not source.group_member()
