"""The daemon's offsets across rebalances, with a scripted source (no broker).

The model reflects every event up to the daemon's in-memory positions; a
partition that comes back after a rebalance must resume there, not at an
older committed offset (which would teach the model the same events twice).
The integration tests show the same on real brokers
(tests/integration/test_reliability_broker.py).
"""

from __future__ import annotations

import io
import json

import numpy as np

from streamgmm.config import parse_config
from streamgmm.daemon import Daemon
from streamgmm.sinks import FileSink
from streamgmm.sources import Record, TopicPartition

TP = TopicPartition("events", 0)


class ScriptedSource:
    """A Kafka-like source whose poll() runs one scripted step per call."""

    exhausted = False

    def __init__(self, steps, group_committed=None):
        self.steps = list(steps)
        self.group_committed = dict(group_committed or {})
        self.assigned: set[TopicPartition] = set()
        self.seeks: list[dict] = []
        self.commits: list[dict] = []
        self.daemon = None

    def set_rebalance_callbacks(self, on_assign, on_revoke, on_lost=None):
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost

    # rebalance events, as kafka-python runs them inside poll()
    def assign(self, partitions):
        self.assigned = set(partitions)
        self.on_assign(set(partitions))

    def lose(self, partitions):
        self.on_lost(set(partitions))
        self.assigned -= set(partitions)

    def poll(self, max_records, timeout_s):
        if not self.steps:
            self.daemon.stop()
            return []
        return self.steps.pop(0)(self) or []

    def commit(self, offsets, timeout_s=30.0):
        self.commits.append(dict(offsets))
        self.group_committed.update(offsets)

    def seek(self, offsets):
        self.seeks.append(dict(offsets))

    def seek_to_beginning(self, partitions):
        self.seeks.append(dict.fromkeys(partitions, 0))

    def committed(self, partitions):
        return {tp: self.group_committed.get(tp) for tp in partitions}

    def assignment(self):
        return set(self.assigned)

    def lag(self):
        return {}

    def connected(self):
        return True

    def topic_id(self, topic):
        return None

    def close(self):
        pass


def records(start: int, stop: int) -> list[Record]:
    rng = np.random.default_rng(start)
    return [
        Record(TP.topic, TP.partition, offset, None, None,
               json.dumps(dict(zip("abc", rng.normal(size=3).tolist(), strict=True))).encode())
        for offset in range(start, stop)
    ]  # fmt: skip


def daemon_with(source) -> Daemon:
    config = parse_config(
        {
            "source": {"kind": "kafka", "kafka": {"topic": "events"}},
            "features": {"fields": ["a", "b", "c"]},
            "model": {"warmup": 50, "random_state": 0},
            "checkpoint": {"path": None, "interval_s": 3600},
            "metrics": {"port": 0},
        }
    )
    sink = FileSink(stdout=io.BytesIO(), stderr=io.BytesIO())
    daemon = Daemon(config, source=source, sink=sink, serve_metrics=False)
    source.daemon = daemon
    return daemon


def test_partitions_lost_and_given_back_resume_where_the_model_is():
    """Evicted from the group (a frozen process, a broker restarted with its data) after
    reading up to 300 while the group's committed offset is 100: when the partition comes
    back, reading resumes at 300, not at 100 (the model already learnt 100..299)."""

    def first(source):
        source.assign({TP})
        return records(0, 300)

    def evicted_and_back(source):
        source.lose({TP})
        source.assign({TP})

    source = ScriptedSource([first, evicted_and_back], group_committed={TP: 100})
    daemon = daemon_with(source)
    assert daemon.run() == 0
    assert source.seeks[0] == {TP: 100}  # first assignment: the group's offset
    assert source.seeks[1] == {TP: 300}, "the lost partition must resume where the model is"
    assert daemon.detector.n_seen == 300


def test_partitions_revoked_and_given_back_resume_where_the_model_is():
    """A revocation commits first; the partition then resumes at the committed position."""

    def first(source):
        source.assign({TP})
        return records(0, 120)

    def revoked_and_back(source):
        source.on_revoke({TP})
        source.assigned = set()
        source.assign({TP})

    source = ScriptedSource([first, revoked_and_back])
    daemon = daemon_with(source)
    assert daemon.run() == 0
    assert source.commits[0] == {TP: 120}
    assert source.seeks[-1] == {TP: 120}
    assert daemon.detector.n_seen == 120
