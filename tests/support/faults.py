"""Helpers of the reliability tests: a numbered event stream, checkpoints, offsets, waits.

Everything here talks to real things: the producer is kafka-python against
the test broker, checkpoints are read with streamgmm's own loader.

Where a partition ends is taken from the producer's acknowledgements, not
from the broker's ListOffsets: Tansu answers ListOffsets(latest) with the
base offset of the last record batch plus one, not the end of the log (the
high watermark of fetch responses is right).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamgmm.checkpoint import load_state

from .events import FIELDS, anomaly, normal_events
from .waits import wait_for

CHECKPOINT_KIND = "streamgmm-daemon"
HERE = Path(__file__).resolve().parent
#: ``streamgmm`` with a pause on each side of the checkpoint's rename (see checkpoint_pause.py)
PAUSING_LAUNCHER = [sys.executable, str(HERE / "checkpoint_pause.py")]


def read_checkpoint(path: Path) -> dict | None:
    """The daemon's checkpoint, verified by streamgmm's loader; None if there is none yet."""
    try:
        return load_state(path, kind=CHECKPOINT_KIND)
    except FileNotFoundError:
        return None


def checkpoint_offsets(state: dict | None, topic: str) -> dict[int, int]:
    if state is None:
        return {}
    return {int(p): int(o) for p, o in state.get("offsets", {}).get(topic, {}).items()}


def wait_checkpoint_at(
    daemon, path: Path, topic: str, ends: dict, deadline_s: float = 40.0, learnt: int | None = None
):
    """Wait until the checkpoint's offsets reach ``ends`` (and, with ``learnt``, its model
    has learnt that many events: offsets alone may repeat from one topic to the next)."""
    last: dict = {}

    def there():
        state = read_checkpoint(path)
        if state is None:
            return None
        last.update(offsets=checkpoint_offsets(state, topic), n_seen=state["detector"]["n_seen"])
        if last["offsets"] != ends or (learnt is not None and last["n_seen"] < learnt):
            return None
        return state

    try:
        return wait_for(there, deadline_s, f"the checkpoint at {ends}, {learnt} learnt", daemon)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast checkpoint: {last}") from None


def model_statistics(state: dict) -> dict[str, np.ndarray]:
    """The learnt numbers of a checkpointed detector, flattened: mixture, threshold, counts."""
    out: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = np.asarray(value)

    walk(state["detector"], "")
    return out


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict:
    """The group's committed offsets (None: nothing committed), read without joining it."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def produce_events(
    bootstrap: str, topic: str, events: list[dict | bytes | None], key_field: str | None = "host"
) -> list[tuple[int, int]]:
    """Send events (dicts as JSON, raw bytes, None for a tombstone), wait for every ack;
    the (partition, offset) of each."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = []
        for event in events:
            if isinstance(event, dict):
                key = str(event.get(key_field, "")).encode() if key_field else None
                futures.append(producer.send(topic, key=key, value=json.dumps(event).encode()))
            elif event is None:  # a tombstone needs a key
                futures.append(producer.send(topic, key=b"tombstone", value=None))
            else:
                futures.append(producer.send(topic, value=event))
        producer.flush(timeout=60)
        return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close(timeout=10)


def ends_of(coordinates: list[tuple[int, int]], ends: dict | None = None) -> dict[int, int]:
    """Next offset of each partition after the acknowledged records (merged into ``ends``)."""
    ends = dict(ends or {})
    for partition, offset in coordinates:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def read_records(broker, topic: str, deadline_s: float = 10.0, expected: int | None = None):
    """Every record of a topic (all partitions, from the start), without a group.

    Reads until ``expected`` records arrived, or else until every partition's
    position reaches the high watermark of the fetch responses (Tansu's
    ListOffsets end offsets can be short of the log's end), or the deadline.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None
    )
    try:
        partitions = broker.partition_counts([topic]).get(topic, 0)
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if expected is not None:
                if len(records) >= expected:
                    break
                continue
            highs = [consumer.highwater(tp) for tp in tps]
            if all(
                h is not None and consumer.position(tp) >= h
                for tp, h in zip(tps, highs, strict=True)
            ):
                break
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def read_json(
    broker, topic: str, deadline_s: float = 10.0, expected: int | None = None
) -> list[dict]:
    """Every record of a topic as parsed JSON, its partition and offset added (``_at``)."""
    out = []
    for r in read_records(broker, topic, deadline_s, expected):
        value = json.loads(r.value)
        value["_at"] = (r.partition, r.offset)
        out.append(value)
    return out


# ---------------------------------------------------------------------------
# a numbered stream


@dataclass
class Sent:
    id: int
    kind: str  # normal | anomaly | invalid
    partition: int | None = None
    offset: int | None = None


INVALID = [  # (payload template, reason); {id} is the event number
    (b'{"id": %d, "a": "1.5", "b": 0.0, "c": 0.0}', "not_numeric"),
    (b'{"id": %d, "a": 1.0, "b": 2.0}', "missing_field"),
    (b'{"id": %d, "a": NaN, "b": 0.0, "c": 0.0}', "not_finite"),
    (b'{"id": %d, "a": 1.0, "b": [2.0], "c": 0.0', "not_json"),
]


@dataclass
class NumberedStream:
    """Numbered events sent at a steady rate by a background thread.

    Event ``i`` is an injected anomaly when ``i >= first_anomaly`` and
    ``(i - first_anomaly) % anomaly_every == 0``, an invalid event when
    ``i % invalid_every == invalid_every - 1``, else a normal event. Where
    each landed (partition, offset) is kept from the producer's acks.
    """

    bootstrap: str
    topic: str
    total: int
    rate: float
    anomaly_every: int = 250
    first_anomaly: int = 600
    invalid_every: int = 97
    seed: int = 0
    sent: list[Sent] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="numbered-stream", daemon=True)
        self._stop = threading.Event()
        self.finished = threading.Event()

    def start(self) -> NumberedStream:
        self._thread.start()
        return self

    def payload(self, i: int, rng: np.random.Generator) -> tuple[bytes, bytes, str]:
        if i >= self.first_anomaly and (i - self.first_anomaly) % self.anomaly_every == 0:
            return json.dumps(anomaly(i)).encode(), b"bad", "anomaly"
        if i % self.invalid_every == self.invalid_every - 1:
            template, _ = INVALID[(i // self.invalid_every) % len(INVALID)]
            return template % i, b"invalid", "invalid"
        event = normal_events(rng, 1, start_id=i)[0]
        return json.dumps(event).encode(), event["host"].encode(), "normal"

    def _run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        rng = np.random.default_rng(self.seed)
        started = time.monotonic()
        try:
            for i in range(self.total):
                if self._stop.is_set():
                    break
                due = started + i / self.rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                value, key, kind = self.payload(i, rng)
                record = Sent(i, kind)
                self.sent.append(record)
                future = producer.send(self.topic, key=key, value=value)
                future.add_callback(self._landed, record)
            producer.flush(timeout=60)
        except BaseException as exc:  # reported by wait()
            self.error = exc
        finally:
            producer.close(timeout=10)
            self.finished.set()

    @staticmethod
    def _landed(record: Sent, metadata) -> None:
        record.partition, record.offset = metadata.partition, metadata.offset

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout_s: float) -> list[Sent]:
        """Wait until every event is sent and acknowledged; the events."""
        if not self.finished.wait(timeout_s):
            raise AssertionError(f"the producer did not finish within {timeout_s:.0f} s")
        if self.error is not None:
            raise AssertionError(f"the producer failed: {self.error!r}")
        missing = [s.id for s in self.sent if s.offset is None]
        assert not missing, f"events without an acknowledgement: {missing[:10]}"
        return self.sent

    @staticmethod
    def end_offsets(sent: list[Sent]) -> dict[int, int]:
        ends: dict[int, int] = {}
        for s in sent:
            ends[s.partition] = max(ends.get(s.partition, 0), s.offset + 1)
        return ends


def valid_before(sent: list[Sent], offsets: dict[int, int]) -> int:
    """Number of valid (decodable) events below the given next-offsets."""
    return sum(
        1
        for s in sent
        if s.kind != "invalid" and s.offset is not None and s.offset < offsets.get(s.partition, 0)
    )


def rss_kib(pid: int) -> int:
    """Resident set size of a process from /proc/PID/status (KiB)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def temp_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".tmp-" in name)


__all__ = [
    "CHECKPOINT_KIND",
    "FIELDS",
    "INVALID",
    "PAUSING_LAUNCHER",
    "NumberedStream",
    "Sent",
    "checkpoint_offsets",
    "committed_offsets",
    "ends_of",
    "model_statistics",
    "produce_events",
    "read_checkpoint",
    "read_json",
    "read_records",
    "rss_kib",
    "temp_files",
    "valid_before",
    "wait_for",
]
