"""State that follows the partitions: a compacted Kafka topic (``checkpoint.topic``).

One state unit per input partition p, written to partition p of the state
topic (DESIGN.md section 7), as Kafka Streams' changelogs and Quix Streams'
``changelog__`` topics do:

- one record per entity, key ``"<input topic>/<p>/<entity>"``;
- one head record per unit (population, threshold, quarantine, counters),
  key ``"<input topic>/<p>/"``, written after the unit's entities.

Values are :func:`streamgmm.checkpoint.pack_state` records: pickle-free,
versioned, CRC-32 checked, each carrying the unit's next input offset; the
same offset also travels in the record header ``streamgmm-next-offset`` (8
bytes, big-endian), so tombstones (value None: entity removed) carry it too.

Restore reads the state partition from its beginning to the end offset taken
at the start and keeps, per key, the record with the highest carried next
offset (ties: the later record), so a late write by an instance that lost the
partition cannot win over its new owner's. Records are checked as they are
read; only the winners are decoded.

Measured on the embedded broker (Tansu) with kafka-python 3.0.12: a topic's
``cleanup.policy`` is read back by ``describe_configs`` only with
``config_filter="all"`` and only when the topic was created with it (nothing
is returned otherwise, and the broker drops the connection when specific
config names are asked); its ListOffsets answer for the latest offset can be
the last *batch's* base offset + 1, so a restore drains what the consumer has
buffered after reaching that end.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamgmm.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    fingerprint_crc,
    pack_state,
    read_header,
    unpack_state,
)

log = logging.getLogger(__name__)

HEAD_KIND = "head"
ENTITY_KIND = "entity"
OFFSET_HEADER = "streamgmm-next-offset"
TOPIC_CONFIGS = {
    "cleanup.policy": "compact",
    "segment.ms": "60000",
    "min.cleanable.dirty.ratio": "0.1",
}
_RECORD_OVERHEAD = 128  # batch + record framing, key and header, on top of the value
_OFFSET = struct.Struct(">q")


class StateTopicError(Exception):
    """A configuration problem of the state topic that no retry fixes; the message names the fix."""


@dataclass
class RestoredUnit:
    """What :meth:`StateStore.restore` read for one partition.

    Attributes
    ----------
    head : dict or None
        The head state (``Detector.get_state(entities=False)``), None when nothing is stored.
    entities : dict
        Entity key -> decoded entity state.
    learn_from : dict
        Entities whose record is ahead of the head (a crash inside a state write):
        key -> the input offset below which that entity learns nothing.
    next_offset : int or None
        The head's next input offset (None: no head).
    records, bytes : int
        Records and key + value bytes read.
    seconds : float
        Wall time of the restore.
    rejected : int
        Records skipped because they failed their checksum, format version or
        fingerprint (logged with what to do).
    """

    head: dict | None
    entities: dict[str, dict]
    learn_from: dict[str, int]
    next_offset: int | None
    records: int
    bytes: int
    seconds: float
    rejected: int = 0
    foreign: int = field(default=0)  # records of other input topics/partitions (ignored)


def cleanup_policy(answer: Any, topic: str) -> str | None:
    """The ``cleanup.policy`` in a kafka-python ``describe_configs`` answer, None if absent.

    ``answer`` is what ``KafkaAdminClient.describe_configs`` returns (kafka-python
    3: ``{"topic": {name: {config: {"value": ...}}}}``).

    >>> cleanup_policy({"topic": {"s": {"cleanup.policy": {"value": "compact"}}}}, "s")
    'compact'
    >>> cleanup_policy({"topic": {"s": {}}}, "s") is None  # Tansu, topic made without configs
    True
    """
    if not isinstance(answer, Mapping):
        return None
    entries = (answer.get("topic") or {}).get(topic)
    if not isinstance(entries, Mapping):
        return None
    entry = entries.get("cleanup.policy")
    value = entry.get("value") if isinstance(entry, Mapping) else entry
    return str(value) if value is not None else None


def check_cleanup_policy(policy: str | None, topic: str) -> None:
    """Refuse a state topic whose cleanup.policy is not ``compact``; warn when unknown.

    >>> check_cleanup_policy("compact", "s")
    >>> check_cleanup_policy("delete", "s")
    Traceback (most recent call last):
    ...
    streamgmm.state_topic.StateTopicError: the state topic 's' has cleanup.policy=delete; ...
    """
    if policy is None:
        log.warning(
            "cannot read the cleanup.policy of the state topic %r (the broker did not say); "
            "make sure it is compact (kafka-configs --alter --entity-type topics "
            "--entity-name %s --add-config cleanup.policy=compact), or a delete policy "
            "will throw state away",
            topic,
            topic,
        )
        return
    if {p.strip() for p in policy.split(",")} != {"compact"}:
        raise StateTopicError(
            f"the state topic {topic!r} has cleanup.policy={policy}; it must be compact only "
            "(a delete policy throws state away after its retention): set it with "
            f"kafka-configs --alter --entity-type topics --entity-name {topic} "
            "--add-config cleanup.policy=compact, delete the topic so streamgmm creates it, "
            "or point checkpoint.topic elsewhere"
        )


def _options(client: Mapping[str, Any], factory: Any, **overrides: Any) -> dict[str, Any]:
    """The ``client`` options the kafka-python class ``factory`` knows, plus overrides."""
    known = getattr(factory, "DEFAULT_CONFIG", {})
    options = {k: v for k, v in client.items() if k in known}
    if isinstance(options.get("api_version"), list):
        options["api_version"] = tuple(options["api_version"])
    options.update(overrides)
    return options


class StateStore:
    """The compacted state topic of one input topic: write units, restore them.

    Parameters
    ----------
    bootstrap_servers : sequence of str
    topic : str
        The state topic (``checkpoint.topic``).
    input_topic : str
        The input topic whose partitions are the units; the prefix of every key.
    client : mapping
        kafka-python options (security, timeouts...); each client (admin,
        producer, consumer) takes the ones it knows.
    fingerprint : dict or None
        The configuration the states are valid for (``Detector.fingerprint``);
        a head written for another is refused on restore.

    Examples
    --------
    >>> store = StateStore(["127.0.0.1:9092"], "streamgmm-state", "events")
    >>> store.head_key(3), store.entity_key(3, "host-7")
    (b'events/3/', b'events/3/host-7')
    """

    def __init__(
        self,
        bootstrap_servers: Iterable[str] | str,
        topic: str,
        input_topic: str,
        client: Mapping[str, Any] | None = None,
        fingerprint: dict | None = None,
    ) -> None:
        if isinstance(bootstrap_servers, str):
            bootstrap_servers = [bootstrap_servers]
        self.bootstrap_servers = list(bootstrap_servers)
        self.topic = topic
        self.input_topic = input_topic
        self.client = dict(client or {})
        self.fingerprint = fingerprint
        self._fingerprint_crc = fingerprint_crc(fingerprint)
        self._producer: Any = None
        self._consumer: Any = None
        self._futures: list[Any] = []
        self._write_error: str | None = None

    # -- keys -------------------------------------------------------------------------

    def head_key(self, partition: int) -> bytes:
        return f"{self.input_topic}/{int(partition)}/".encode()

    def entity_key(self, partition: int, entity: str) -> bytes:
        # an entity id may hold a lone surrogate (a "\ud800" escape in the event's JSON):
        # kept as it is, and read back the same (surrogatepass both ways)
        return f"{self.input_topic}/{int(partition)}/{entity}".encode("utf-8", "surrogatepass")

    # -- the topic --------------------------------------------------------------------

    def ensure_topic(self, partitions: int, timeout_s: float = 30.0) -> None:
        """Create the compacted topic with ``partitions`` partitions, or check the existing one.

        Raises
        ------
        StateTopicError
            The topic exists with another partition count or a cleanup.policy
            other than compact (the message names the fix).
        """
        from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(
            **_options(
                self.client,
                KafkaAdminClient,
                bootstrap_servers=self.bootstrap_servers,
                client_id="streamgmm-state-admin",
            )
        )
        try:
            # create first: asking about an unknown topic may auto-create it (Tansu does)
            new = NewTopic(
                self.topic,
                num_partitions=int(partitions),
                replication_factor=-1,  # the broker's default.replication.factor
                topic_configs=dict(TOPIC_CONFIGS),
            )
            try:
                response = admin.create_topics([new], timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                response = None
            for code, message in _create_errors(response):
                if code != TopicAlreadyExistsError.errno:
                    raise StateTopicError(
                        f"cannot create the state topic {self.topic!r}: error {code} {message}; "
                        "create it yourself (cleanup.policy=compact, as many partitions as "
                        f"{self.input_topic!r}) or point checkpoint.topic elsewhere"
                    )
            count = self._partition_count(admin, timeout_s)
            if count != int(partitions):
                raise StateTopicError(
                    f"the state topic {self.topic!r} has {count} partitions, the input topic "
                    f"{self.input_topic!r} has {partitions}: they must be equal (unit p is "
                    "written to partition p); delete the state topic so streamgmm creates it "
                    "again (the models start fresh), or point checkpoint.topic elsewhere"
                )
            resource = ConfigResource(ConfigResourceType.TOPIC, self.topic)
            try:
                answer = admin.describe_configs([resource], config_filter="all")
            except Exception as exc:  # a broker that cannot say: warn below
                log.debug("describe_configs of %s failed: %s", self.topic, exc)
                answer = None
            check_cleanup_policy(cleanup_policy(answer, self.topic), self.topic)
        finally:
            admin.close()

    def _partition_count(self, admin: Any, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            for entry in admin.describe_topics([self.topic]):
                name = entry.get("name", entry.get("topic"))
                if name == self.topic and not entry.get("error_code") and entry.get("partitions"):
                    return len(entry["partitions"])
            if time.monotonic() > deadline:
                raise StateTopicError(
                    f"the state topic {self.topic!r} is not visible {timeout_s:.0f} s after it "
                    "was created; check the brokers' logs"
                )
            time.sleep(0.05)

    # -- writing ----------------------------------------------------------------------

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            options = _options(self.client, KafkaProducer)
            # Duplicates and reordering from retries are harmless (the highest carried
            # offset wins), and kafka-python's idempotent producer does not recover from
            # a broker paused past the delivery timeout (DESIGN.md section 4).
            options.setdefault("enable_idempotence", False)
            options.setdefault("linger_ms", 5)
            options.setdefault("batch_size", 256 * 1024)
            options.setdefault("max_block_ms", 10_000)  # send() waiting for metadata
            options.update(bootstrap_servers=self.bootstrap_servers, acks="all")
            self._producer = KafkaProducer(**options)
        return self._producer

    def _max_request_size(self) -> int:
        from kafka import KafkaProducer

        return int(
            self.client.get("max_request_size", KafkaProducer.DEFAULT_CONFIG["max_request_size"])
        )

    def write(
        self,
        partition: int,
        head: dict,
        entities: Mapping[str, dict],
        removed: Iterable[str],
        next_offset: int,
        entity_offset: int | None = None,
    ) -> tuple[int, int]:
        """Produce one unit's changed entities, tombstones for ``removed``, then its head.

        Not flushed: call :meth:`flush` before committing input offsets. Every
        record carries ``next_offset``, except the entities' when ``entity_offset``
        is given: the offset their learning reaches (the first event the model has
        scored but the entities not yet learnt, ``Detector.pending_offset``), so an
        entity restored ahead of an older head learns again exactly the events its
        record lacks. Returns (records, bytes) produced. When
        Kafka cannot be reached (no broker, no metadata within the producer's
        ``max_block_ms``, 10 s unless set) the error is logged, what was sent
        is counted, and the next :meth:`flush` returns False.

        Raises
        ------
        StateTopicError
            A record is larger than the producer's max_request_size (nothing of
            the unit is sent then).
        ValueError
            An entity key is empty (it would be the head's key).
        """
        limit = self._max_request_size() - _RECORD_OVERHEAD
        offset_header = [(OFFSET_HEADER, _OFFSET.pack(int(next_offset)))]
        entity_offset = next_offset if entity_offset is None else min(entity_offset, next_offset)
        entity_header = [(OFFSET_HEADER, _OFFSET.pack(int(entity_offset)))]
        head_value = pack_state(
            head, kind=HEAD_KIND, next_offset=next_offset, fingerprint=self.fingerprint
        )
        if len(head_value) > limit:
            raise StateTopicError(
                f"the head state of partition {partition} is {len(head_value)} bytes, over the "
                f"state producer's max_request_size ({limit + _RECORD_OVERHEAD} bytes with "
                "framing): the model is too large for one record (fewer components or fields "
                "make it smaller); or raise max_request_size in the Kafka client options and "
                f"max.message.bytes of the topic {self.topic!r} (and the brokers' "
                "message.max.bytes) together"
            )
        records: list[tuple[bytes, bytes | None, list]] = []
        for entity, state in entities.items():
            if not entity:
                raise ValueError(
                    "an entity with an empty key cannot be stored (its key would be the "
                    "head's); treat empty keys as no entity"
                )
            value = pack_state(
                state,
                kind=ENTITY_KIND,
                next_offset=entity_offset,
                fingerprint=self.fingerprint,
                describe_fingerprint=False,
            )
            if len(value) > limit:
                raise StateTopicError(
                    f"the state of entity {entity!r} (partition {partition}) is {len(value)} "
                    f"bytes, over the state producer's max_request_size; raise max_request_size "
                    f"and the topic's max.message.bytes together"
                )
            records.append((self.entity_key(partition, entity), value, entity_header))
        records.extend(
            (self.entity_key(partition, entity), None, offset_header) for entity in removed
        )
        records.append((self.head_key(partition), head_value, offset_header))

        from kafka.errors import KafkaError

        written = sent = 0
        try:
            producer = self._ensure_producer()
            for key, value, headers in records:
                self._futures.append(
                    producer.send(
                        self.topic,
                        key=key,
                        value=value,
                        partition=int(partition),
                        headers=headers,
                    )
                )
                sent += 1
                written += len(key) + (len(value) if value is not None else 0)
        except KafkaError as exc:  # no broker, metadata timeout: the next flush says False
            self._write_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "state topic %s: cannot produce the state of partition %d (%s); it is written "
                "again at the next checkpoint",
                self.topic,
                partition,
                self._write_error,
            )
            self._drop_producer()
        return sent, written

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every record written; True when all were acknowledged.

        On False (a timeout or a failed record) the producer is dropped and built
        again on the next write; the caller must not commit input offsets.
        """
        from kafka.errors import KafkaError

        error, self._write_error = self._write_error, None
        if self._producer is None:
            self._futures = []
            return error is None
        futures, self._futures = self._futures, []
        try:
            self._producer.flush(timeout=max(0.0, float(timeout_s)))
        except KafkaError as exc:
            log.error(
                "state topic %s: flush did not finish in %.1f s: %s", self.topic, timeout_s, exc
            )
            self._drop_producer()
            return False
        failed = [f.exception for f in futures if f.is_done and f.failed()]
        pending = sum(1 for f in futures if not f.is_done)
        if error is not None:
            log.error("state topic %s: a write failed since the last flush: %s", self.topic, error)
            return False
        if failed or pending:
            log.error(
                "state topic %s: %d state records failed (first: %s), %d unacknowledged; "
                "the input offsets must not be committed",
                self.topic,
                len(failed),
                failed[0] if failed else None,
                pending,
            )
            self._drop_producer()
            return False
        return True

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:  # a dead producer may fail to close
                log.debug("closing the state producer: %s", exc)

    # -- restoring --------------------------------------------------------------------

    def _ensure_consumer(self) -> Any:
        if self._consumer is None:
            from kafka import KafkaConsumer

            options = _options(self.client, KafkaConsumer)
            options.setdefault("fetch_max_wait_ms", 20)
            options.setdefault("bootstrap_timeout_ms", 10_000)
            options.setdefault("max_partition_fetch_bytes", 16 * 1024 * 1024)
            options.update(
                bootstrap_servers=self.bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            self._consumer = KafkaConsumer(**options)
        return self._consumer

    def restore(self, partition: int, timeout_s: float) -> RestoredUnit:
        """Read state partition ``partition`` to its end and rebuild the unit's state.

        Per key the record with the highest carried next offset wins (ties: the
        later record); tombstones delete; a record failing its checksum, format
        version or fingerprint is skipped, counted in ``rejected`` and logged.

        Raises
        ------
        StateTopicError
            The head was written for another configuration.
        TimeoutError
            The partition could not be read to its end in ``timeout_s`` (retry).
        """
        from kafka import TopicPartition
        from kafka.errors import KafkaTimeoutError

        started = time.monotonic()
        deadline = started + float(timeout_s)
        consumer = self._ensure_consumer()
        tp = TopicPartition(self.topic, int(partition))

        def left_ms() -> int:
            return max(1, int((deadline - time.monotonic()) * 1000))

        def timed_out(position: Any, end: Any) -> TimeoutError:
            return TimeoutError(
                f"restoring partition {partition} of the state topic {self.topic!r}: read to "
                f"offset {position} of {end} in {timeout_s:.1f} s; retry, or give the restore "
                "more time"
            )

        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        try:
            end = consumer.end_offsets([tp], timeout_ms=left_ms())[tp]
        except KafkaTimeoutError as exc:
            raise timed_out(None, None) from exc
        prefix = f"{self.input_topic}/{int(partition)}/".encode()
        head_key = prefix
        check_fingerprint = self.fingerprint is not None
        winners: dict[bytes, tuple[int, bytes | None]] = {}
        n_records = n_bytes = rejected = foreign = 0
        first_rejection: str | None = None

        def take(records: list[Any]) -> None:
            nonlocal n_records, n_bytes, rejected, foreign, first_rejection
            for record in records:
                n_records += 1
                key = record.key
                value = record.value
                n_bytes += (len(key) if key else 0) + (len(value) if value is not None else 0)
                if key is None or not key.startswith(prefix):
                    foreign += 1
                    continue
                best = winners.get(key)
                if value is None:
                    carried = _carried(record.headers)
                    if carried is None:  # a tombstone of another tool: deletes what came before
                        carried = best[0] if best is not None else -1
                else:
                    try:
                        header = read_header(value)
                    except CheckpointError as exc:
                        rejected += 1
                        first_rejection = first_rejection or f"{key!r} at {record.offset}: {exc}"
                        continue
                    if (
                        check_fingerprint
                        and header.fingerprint_crc != self._fingerprint_crc
                        and key != head_key  # the head's mismatch is explained below
                    ):
                        rejected += 1
                        first_rejection = first_rejection or (
                            f"{key!r} at {record.offset}: written for another configuration"
                        )
                        continue
                    carried = header.next_offset
                if best is None or carried >= best[0]:
                    winners[key] = (carried, value)

        while True:
            try:
                position = consumer.position(tp, timeout_ms=left_ms())
            except KafkaTimeoutError as exc:
                raise timed_out(None, end) from exc
            if position >= end:
                break
            if time.monotonic() >= deadline:
                raise timed_out(position, end)
            batch = consumer.poll(timeout_ms=min(left_ms(), 1000), max_records=50_000)
            for records in batch.values():
                take(records)
        # Tansu may report the last batch's base offset + 1 as the end: take the rest
        # of what has been fetched with it.
        if end > 0:
            while True:
                batch = consumer.poll(timeout_ms=0, max_records=50_000)
                if not batch:
                    break
                for records in batch.values():
                    take(records)
        consumer.assign([])

        if rejected:
            log.error(
                "state topic %s partition %d: %d records skipped (first: %s); those keys "
                "start from an older state or fresh. If this repeats, the topic holds records "
                "of another streamgmm release or configuration: point checkpoint.topic "
                "elsewhere or delete the topic",
                self.topic,
                partition,
                rejected,
                first_rejection,
            )

        head = None
        next_offset = None
        head_entry = winners.pop(head_key, None)
        if head_entry is not None and head_entry[1] is not None:
            try:
                head, _ = unpack_state(
                    head_entry[1], kind=HEAD_KIND, fingerprint=self.fingerprint, verify=False
                )
            except CheckpointMismatchError as exc:
                raise StateTopicError(
                    f"the state topic {self.topic!r} holds for partition {partition} of "
                    f"{self.input_topic!r} a state that cannot be used: {exc}; restore the "
                    "old configuration, point checkpoint.topic elsewhere, or delete the topic "
                    "to start fresh"
                ) from exc
            except CheckpointError as exc:
                rejected += 1
                log.error(
                    "state topic %s: head of partition %d skipped: %s; the unit starts fresh",
                    self.topic,
                    partition,
                    exc,
                )
            else:
                next_offset = head_entry[0]
        entities: dict[str, dict] = {}
        learn_from: dict[str, int] = {}
        cut = len(prefix)
        for key, (carried, value) in winners.items():
            if value is None:
                continue
            try:
                state, _ = unpack_state(value, kind=ENTITY_KIND, verify=False)
            except CheckpointError as exc:
                rejected += 1
                log.error("state topic %s: entity %r skipped: %s", self.topic, key, exc)
                continue
            try:
                entity = key[cut:].decode("utf-8", "surrogatepass")
            except UnicodeDecodeError as exc:  # not written by streamgmm
                rejected += 1
                log.error("state topic %s: record with key %r skipped: %s", self.topic, key, exc)
                continue
            entities[entity] = state
            if next_offset is None or carried > next_offset:
                learn_from[entity] = carried
        seconds = time.monotonic() - started
        log.info(
            "restored partition %d of %s from %s: head at offset %s, %d entities, %d records, "
            "%.1f MB in %.2f s",
            partition,
            self.input_topic,
            self.topic,
            next_offset,
            len(entities),
            n_records,
            n_bytes / 1e6,
            seconds,
        )
        return RestoredUnit(
            head=head,
            entities=entities,
            learn_from=learn_from,
            next_offset=next_offset,
            records=n_records,
            bytes=n_bytes,
            seconds=seconds,
            rejected=rejected,
            foreign=foreign,
        )

    def close(self) -> None:
        """Close the producer (after a bounded flush) and the consumer."""
        producer, self._producer = self._producer, None
        consumer, self._consumer = self._consumer, None
        for client, options in ((producer, {"timeout": 5}), (consumer, {})):
            if client is not None:
                try:
                    client.close(**options)
                except Exception as exc:  # closing must not raise
                    log.debug("closing a state topic client: %s", exc)


def _carried(headers: Any) -> int | None:
    """The next offset in a record's ``streamgmm-next-offset`` header, None if absent."""
    for name, value in headers or ():
        if name == OFFSET_HEADER and value is not None and len(value) == _OFFSET.size:
            return _OFFSET.unpack(value)[0]
    return None


def _create_errors(response: Any) -> list[tuple[int, str | None]]:
    """(error code, message) of each failed topic in a CreateTopics answer."""
    if response is None:
        return []
    if isinstance(response, Mapping):
        entries = response.get("topics") or []
        return [(e["error_code"], e.get("error_message")) for e in entries if e.get("error_code")]
    entries = getattr(response, "topics", None) or getattr(response, "topic_errors", None) or []
    out = []
    for entry in entries:
        code = getattr(entry, "error_code", None)
        if code is None and isinstance(entry, tuple):
            code = entry[1]
        if code:
            out.append((code, getattr(entry, "error_message", None)))
    return out
