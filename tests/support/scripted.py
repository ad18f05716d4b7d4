"""A scripted Kafka-like source and a Daemon around it: the loop without a broker.

The source's ``poll()`` runs one scripted step per call (a step may assign,
revoke or lose partitions as kafka-python does inside poll); once the steps
are spent it stops the daemon. Used by the rebalance and defect tests of
tests/unit; the same behaviours on a real broker are in tests/integration.
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

    def lag(self, timeout_s=5.0):
        return {}

    def connected(self):
        return True

    def topic_id(self, topic):
        return None

    def close(self):
        pass


def records(start: int, stop: int) -> list[Record]:
    """Events of 3 fields; every 50th far out, every 70th not JSON."""
    rng = np.random.default_rng(start)
    out = []
    for offset in range(start, stop):
        row = rng.normal(size=3) + (25.0 if offset % 50 == 49 else 0.0)
        value = json.dumps(dict(zip("abc", row.tolist(), strict=True))).encode()
        if offset % 70 == 69:
            value = value[:-1]
        out.append(Record(TP.topic, TP.partition, offset, None, None, value))
    return out


def daemon_with(source, decode_process: bool = False) -> Daemon:
    config = parse_config(
        {
            "source": {"kind": "kafka", "kafka": {"topic": "events"}},
            "features": {"fields": ["a", "b", "c"], "decode_process": decode_process},
            "model": {"warmup": 50, "random_state": 0},
            "checkpoint": {"path": None, "interval_s": 3600},
            "metrics": {"port": 0},
        }
    )
    outliers, dead_letters = io.BytesIO(), io.BytesIO()
    sink = FileSink(stdout=outliers, stderr=dead_letters)
    daemon = Daemon.from_config(config, source=source, sink=sink, serve_metrics=False)
    daemon.written = {"outliers": outliers, "dead_letter": dead_letters}
    source.daemon = daemon
    return daemon
