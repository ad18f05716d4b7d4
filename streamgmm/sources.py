"""Where events come from: a Kafka consumer group, or a JSONL file / standard input.

Both implement the :class:`Source` protocol, which declares everything the
daemon's loop calls (a file answers as one partition, always assigned and
connected, with nothing committed and no topic id). Offsets map
:class:`TopicPartition` to the *next* offset to read (last processed + 1), as
Kafka does.

Rebalance callbacks run while :meth:`poll` is in progress (kafka-python runs
them on its IO thread, with the caller blocked in ``poll``), so they never
race the daemon's loop. Inside them, :meth:`KafkaSource.commit` and
:meth:`KafkaSource.seek` are safe: a commit made in ``on_revoke`` is sent
before the partitions are given up. ``on_lost`` (partitions taken away after
the group evicted this member) cannot commit; by default it is ``on_revoke``
with commits ignored. :meth:`close` does not call ``on_revoke``: commit what
you need before closing.

Keep the hooks short (well under the session timeout): while they run,
kafka-python sends no heartbeats. Inside ``on_assign``,
:meth:`KafkaSource.committed` answers for the partitions being assigned (they
are fetched before the hook runs); other network look-ups
(:meth:`KafkaSource.lag`, other partitions' offsets) cannot run inside a hook
and raise :class:`SourceError`. Without a seek in ``on_assign``, a partition
resumes from the group's committed offset, else from ``auto_offset_reset``.

:class:`TopicPartition` is a plain ``(topic, partition)`` named tuple, equal to
(and hashing like) kafka-python's own, so either can be used as a key.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, BinaryIO, NamedTuple, Protocol, runtime_checkable

from . import kafka_internals

__all__ = [
    "CommitError",
    "FileSource",
    "KafkaSource",
    "Record",
    "Source",
    "SourceError",
    "TopicPartition",
    "source_from_config",
]

log = logging.getLogger(__name__)


class TopicPartition(NamedTuple):
    """A partition of a topic; equal to kafka-python's ``TopicPartition``."""

    topic: str
    partition: int


class Record(NamedTuple):
    """One message as read: where it is, when it was written, its raw key and value.

    ``timestamp`` is in milliseconds since the epoch (None if unknown, -1 if
    the producer set none). The Kafka source returns kafka-python's own
    ``ConsumerRecord`` objects, which have these fields under these names (not
    copied, for speed: see benchmarks/README.md, "Daemon settings chosen by
    measurement").
    """

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None


class Polled(list):
    """The records of one poll, and the next offset to read in each partition they are from."""

    __slots__ = ("next_offsets",)

    def __init__(self) -> None:
        super().__init__()
        self.next_offsets: dict[TopicPartition, int] = {}


def next_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """Where each partition of ``records`` continues: as :class:`Polled` says, or computed."""
    known = getattr(records, "next_offsets", None)
    if known is not None:
        return known
    last = {(r.topic, r.partition): r.offset for r in records}  # in order: the last wins
    return {TopicPartition(topic, partition): o + 1 for (topic, partition), o in last.items()}


class SourceError(RuntimeError):
    """The source cannot be used as configured; the message says why."""


class CommitError(SourceError):
    """Offsets could not be committed (e.g. the group rebalanced); they will be re-read."""


PartitionsCallback = Callable[[set[TopicPartition]], None]


@runtime_checkable
class Source(Protocol):
    """Everything the daemon's loop calls on a source of records.

    A source with no consumer group (a file) answers as one partition that is
    always assigned and connected, with nothing committed and no topic id.
    """

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records, waiting at most about ``timeout_s``."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float = 30.0) -> None:
        """Record ``offsets`` (the next offset to read) as processed, within ``timeout_s``."""
        ...

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets of ``partitions`` (absent or None: none)."""
        ...

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read each partition from its offset next."""
        ...

    def seek_to_beginning(self, partitions: Iterable[TopicPartition]) -> None:
        """Read ``partitions`` from their first offset next."""
        ...

    def topic_id(self, topic: str) -> str | None:
        """The cluster's id of ``topic``; None when unknown (or not a Kafka topic)."""
        ...

    def assignment(self) -> set[TopicPartition]:
        """The partitions this source reads now."""
        ...

    def lag(self, timeout_s: float = 5.0) -> dict[TopicPartition, int | None]:
        """Per assigned partition: records left to read (None: unknown)."""
        ...

    def connected(self) -> bool:
        """Whether records can be read now (the brokers and the group answer)."""
        ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch nothing from ``partitions`` until :meth:`resume` (their position is kept)."""
        ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch from ``partitions`` again (paused by :meth:`pause`)."""
        ...

    def partition_count(self, topic: str) -> int | None:
        """How many partitions ``topic`` has (None: unknown yet)."""
        ...

    def group_member(self) -> bool:
        """Whether this member is sure it still belongs to its group's generation."""
        ...

    def set_rebalance_callbacks(
        self,
        on_assign: PartitionsCallback | None,
        on_revoke: PartitionsCallback | None,
        on_lost: PartitionsCallback | None = None,
    ) -> None:
        """The daemon's hooks, called inside :meth:`poll` with sets of partitions."""
        ...

    @property
    def exhausted(self) -> bool:
        """True when no record will ever come again (the end of a file)."""
        ...

    def close(self) -> None:
        """Release the source (a consumer leaves its group; no commit)."""
        ...


# ---------------------------------------------------------------------------
# Kafka


def _kafka():
    import kafka

    return kafka


#: Default wait for a first broker when creating the consumer (kafka-python's is 30 s).
DEFAULT_BOOTSTRAP_TIMEOUT_MS = 10_000
#: Bound on fetching the group's committed offsets when partitions are assigned.
PREFETCH_TIMEOUT_MS = 10_000


class KafkaSource:
    """A kafka-python consumer in a group, committing only when told to.

    ``enable_auto_commit`` is off: offsets are committed by :meth:`commit`,
    which the daemon calls after each checkpoint. Client options (security,
    timeouts...) pass through unchanged.

    Parameters
    ----------
    bootstrap_servers : sequence of str
    topic : str
    group_id : str
    auto_offset_reset : {"earliest", "latest"}
        Where to start in a partition without committed or sought offset.
    max_poll_records : int
        Default for :meth:`poll`'s ``max_records``.
    client : mapping
        Extra ``KafkaConsumer`` options.
    consumer_factory : callable
        Builds the consumer (``kafka.KafkaConsumer``); for tests.
    max_block_s : float or None
        Longest wait for a first broker when the consumer is created (inside
        :meth:`poll`), overriding ``bootstrap_timeout_ms`` when shorter: the
        daemon passes what its systemd watchdog allows. The consumer is built
        again on the next poll after a timeout.
    """

    exhausted = False

    def __init__(
        self,
        bootstrap_servers: Iterable[str],
        topic: str,
        group_id: str,
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 2000,
        client: Mapping[str, Any] | None = None,
        consumer_factory: Callable[..., Any] | None = None,
        max_block_s: float | None = None,
    ) -> None:
        kafka = _kafka()
        options = dict(client or {})
        if isinstance(options.get("api_version"), list):
            options["api_version"] = tuple(options["api_version"])
        factory = consumer_factory or kafka.KafkaConsumer
        defaults = getattr(factory, "DEFAULT_CONFIG", {})
        if "bootstrap_timeout_ms" in defaults:
            # kafka-python waits this long for a first broker, in the constructor:
            # keep the daemon's loop (and its liveness) moving while Kafka is down
            options.setdefault("bootstrap_timeout_ms", DEFAULT_BOOTSTRAP_TIMEOUT_MS)
            if max_block_s is not None:
                options["bootstrap_timeout_ms"] = min(
                    int(options["bootstrap_timeout_ms"]), max(1, int(max_block_s * 1000))
                )
        # Tansu holds a fetch for the whole fetch_max_wait_ms even when data arrives
        # meanwhile, which delays outliers (figures: benchmarks/README.md, "Daemon
        # settings chosen by measurement"); set it in source.kafka.client for a
        # broker that answers fetches as data arrive.
        options.setdefault("fetch_max_wait_ms", 20)
        options.update(
            bootstrap_servers=list(bootstrap_servers),
            group_id=group_id,
            auto_offset_reset=auto_offset_reset,
            max_poll_records=max_poll_records,
            enable_auto_commit=False,
        )
        self.topic = topic
        self.group_id = group_id
        self.max_poll_records = max_poll_records
        self._options = options
        self._factory = factory
        self._consumer: Any = None
        self._on_assign: PartitionsCallback | None = None
        self._on_revoke: PartitionsCallback | None = None
        self._on_lost: PartitionsCallback | None = None
        self._callback_error: BaseException | None = None
        self._callback_thread: int | None = None
        self._callback_commits: dict[TopicPartition, int] | None = None
        self._callback_committed: dict[TopicPartition, int | None] | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._closed = False
        self._last_error: str | None = None
        self._async_listener = hasattr(kafka, "AsyncConsumerRebalanceListener")
        self._joined_at: float | None = None  # heartbeat clock reset of our last join
        self._unsure_since: float | None = None  # fetching paused since (monotonic ms)
        self._refresh_requested = False
        self._held: set[TopicPartition] = set()  # paused by pause(), not by membership

    # -- setup -------------------------------------------------------------------

    def set_rebalance_callbacks(
        self,
        on_assign: PartitionsCallback | None,
        on_revoke: PartitionsCallback | None,
        on_lost: PartitionsCallback | None = None,
    ) -> None:
        """Register the daemon's hooks; call before the first :meth:`poll`."""
        self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost

    def _ensure_consumer(self) -> Any:
        if self._closed:
            raise SourceError("the source is closed")
        if self._consumer is None:
            kafka = _kafka()
            try:
                consumer = self._factory(**self._options)
            except (kafka.errors.KafkaConfigurationError, TypeError, ValueError) as exc:
                raise SourceError(f"source.kafka.client: kafka-python refused it: {exc}") from exc
            except kafka.errors.KafkaError as exc:  # brokers unreachable: try again later
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("cannot connect to Kafka (%s); retrying", self._last_error)
                return None
            consumer.subscribe([self.topic], listener=self._listener())
            self._consumer = consumer
        return self._consumer

    def _listener(self):
        kafka = _kafka()
        source = self
        if self._async_listener:

            class AsyncListener(kafka.AsyncConsumerRebalanceListener):
                async def on_partitions_revoked(self, revoked):
                    commits = source._run_callback(source._on_revoke, revoked, "on_revoke")
                    await source._commit_from_callback(commits)

                async def on_partitions_assigned(self, assigned):
                    source._note_join(assigned)
                    # committed offsets fetched here, on the IO loop, so the hook can
                    # ask for them (a blocking fetch is impossible inside it)
                    source._callback_committed = await source._prefetch_committed(assigned)
                    try:
                        source._run_callback(source._on_assign, assigned, "on_assign")
                    finally:
                        source._callback_committed = None

                async def on_partitions_lost(self, lost):
                    source._run_callback(
                        source._on_lost or source._on_revoke, lost, "on_lost", lost=True
                    )

            return AsyncListener()

        class SyncListener(kafka.ConsumerRebalanceListener):  # kafka-python 2.x
            def on_partitions_revoked(self, revoked):
                commits = source._run_callback(source._on_revoke, revoked, "on_revoke")
                if commits:
                    source._commit_now(commits)

            def on_partitions_assigned(self, assigned):
                source._note_join(assigned)
                source._run_callback(source._on_assign, assigned, "on_assign")

        return SyncListener()

    def _note_join(self, assigned) -> None:
        """A join just completed: membership is confirmed (see :meth:`_group_alive`).

        After an outage the partitions stay paused until the metadata is fresh
        (:meth:`_fetch_only_as_member`): paused here, before the rest of this
        poll fetches them at positions that may belong to a replaced topic.
        """
        self._joined_at = kafka_internals.heartbeat_reset_at(self._consumer)
        if self._unsure_since is not None and assigned:
            with contextlib.suppress(Exception):
                self._consumer.pause(*assigned)

    def _run_callback(
        self,
        callback: PartitionsCallback | None,
        partitions: Iterable,
        name: str,
        lost: bool = False,
    ) -> dict[TopicPartition, int]:
        """Run a daemon hook; return the commits it asked for (sent by the listener)."""
        parts = {TopicPartition(tp.topic, tp.partition) for tp in partitions}
        if name in ("on_revoke", "on_lost"):
            for tp in parts:
                self._positions.pop(tp, None)
            self._held -= parts
        log.info("%s: %s", name, sorted(parts))
        if callback is None or (not parts and name != "on_assign"):
            return {}
        self._callback_thread = threading.get_ident()
        self._callback_commits = {}
        try:
            callback(parts)
        except BaseException as exc:  # re-raised from poll() on the daemon's thread
            log.exception("the %s callback failed", name)
            if self._callback_error is None:
                self._callback_error = exc
        finally:
            commits = self._callback_commits or {}
            self._callback_thread = None
            self._callback_commits = None
        if lost and commits:
            log.warning(
                "partitions %s were lost (evicted from the group): their offsets "
                "cannot be committed; they will be re-read",
                sorted(parts),
            )
            return {}
        return commits

    async def _prefetch_committed(self, partitions) -> dict[TopicPartition, int | None] | None:
        fetch = kafka_internals.committed_offsets_fetcher(self._consumer)
        if fetch is None or not partitions or self._on_assign is None:
            return None
        try:
            offsets = await fetch(set(partitions), timeout_ms=PREFETCH_TIMEOUT_MS)
        except Exception as exc:
            log.warning("cannot read the group's committed offsets on assignment: %s", exc)
            return None
        result: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            meta = offsets.get(tp)
            offset = getattr(meta, "offset", None)
            result[TopicPartition(tp.topic, tp.partition)] = (
                offset if offset is not None and offset >= 0 else None
            )
        return result

    async def _commit_from_callback(self, commits: Mapping[TopicPartition, int]) -> None:
        if not commits:
            return
        try:
            future = self._consumer.commit_async(self._kafka_offsets(commits))
            if inspect.isawaitable(future):  # a kafka.future.Future, completed by this loop
                await future
        except Exception as exc:
            log.warning(
                "commit before revocation failed (%s); those events will be re-read "
                "by the partitions' next owner",
                exc,
            )

    def _refuse_in_callback(self, what: str) -> None:
        if self._callback_thread == threading.get_ident():
            raise SourceError(
                f"{what} needs the network and cannot run inside a rebalance callback; "
                "call it from the loop instead"
            )

    # -- reading -----------------------------------------------------------------

    def poll(self, max_records: int | None = None, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records; ``[]`` on timeout or a transient broker error.

        Raises
        ------
        SourceError
            The configuration is refused by kafka-python.
        BaseException
            Whatever a rebalance callback raised (re-raised here, on the caller's thread).
        """
        kafka = _kafka()
        started = time.monotonic()
        consumer = self._ensure_consumer()
        if consumer is None:
            time.sleep(max(0.0, timeout_s - (time.monotonic() - started)))
            return []
        max_records = max_records or self.max_poll_records
        try:
            self._fetch_only_as_member(consumer)
            batches = consumer.poll(
                timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records
            )
            self._last_error = None
        except kafka.errors.KafkaError as exc:
            self._raise_callback_error()
            self._last_error = str(exc)
            log.warning("poll failed (%s: %s); retrying", type(exc).__name__, exc)
            return []
        self._raise_callback_error()
        records = Polled()  # of kafka-python's ConsumerRecords: the fields of a Record
        for tp, messages in batches.items():
            records.extend(messages)
            if messages:
                records.next_offsets[TopicPartition(tp.topic, tp.partition)] = (
                    messages[-1].offset + 1
                )
        self._positions.update(records.next_offsets)
        return records

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error

    # -- offsets -----------------------------------------------------------------

    @staticmethod
    def _kafka_offsets(offsets: Mapping[TopicPartition, int]) -> dict:
        kafka = _kafka()
        return {
            kafka.TopicPartition(tp[0], tp[1]): kafka.OffsetAndMetadata(int(offset), "", -1)
            for tp, offset in offsets.items()
        }

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float = 30.0) -> None:
        """Commit the next offsets to read of assigned partitions (others are skipped).

        Inside a rebalance callback the commit is sent before the partitions
        are released. Raises :class:`CommitError` when the broker refuses it.
        """
        offsets = {TopicPartition(*tp): int(o) for tp, o in offsets.items()}
        if self._callback_thread == threading.get_ident() and self._callback_commits is not None:
            self._callback_commits.update(offsets)
            return
        consumer = self._ensure_consumer()
        if consumer is None:
            raise CommitError(f"not connected to Kafka ({self._last_error}); nothing committed")
        assigned = self.assignment()
        skipped = sorted(set(offsets) - assigned)
        if skipped:
            log.info("not committing partitions no longer assigned: %s", skipped)
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if offsets:
            self._commit_now(offsets, consumer, timeout_s)

    def _commit_now(self, offsets, consumer=None, timeout_s: float = 30.0) -> None:
        kafka = _kafka()
        consumer = consumer or self._consumer
        try:
            try:
                consumer.commit(self._kafka_offsets(offsets), timeout_ms=int(timeout_s * 1000))
            except TypeError:  # kafka-python 2.x: no timeout_ms
                consumer.commit(self._kafka_offsets(offsets))
        except kafka.errors.KafkaError as exc:
            raise CommitError(
                f"committing {dict(sorted(offsets.items()))} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read each assigned partition from the given offset next (others are skipped)."""
        kafka = _kafka()
        consumer = self._ensure_consumer()
        assigned = self.assignment() if consumer is not None else set()
        for tp, offset in offsets.items():
            tp = TopicPartition(*tp)
            if tp not in assigned:
                log.info("not seeking %s: not assigned", tp)
                continue
            consumer.seek(kafka.TopicPartition(tp.topic, tp.partition), int(offset))
            self._positions[tp] = int(offset)

    def seek_to_beginning(self, partitions: Iterable[TopicPartition]) -> None:
        """Read each assigned partition from its first offset next (others are skipped)."""
        kafka = _kafka()
        consumer = self._ensure_consumer()
        assigned = self.assignment() if consumer is not None else set()
        wanted = [TopicPartition(*tp) for tp in partitions if TopicPartition(*tp) in assigned]
        if wanted:
            consumer.seek_to_beginning(*(kafka.TopicPartition(*tp) for tp in wanted))
        for tp in wanted:
            self._positions.pop(tp, None)

    def topic_id(self, topic: str) -> str | None:
        """The cluster's id of ``topic`` (a UUID, as text), None when unknown.

        From the metadata the consumer already holds: no network, safe in a
        rebalance callback. A topic deleted and created again, or re-created
        by brokers that lost their storage, has a new id: offsets read in the
        old one mean nothing in it. Brokers before Kafka 2.8 give no ids.
        """
        return kafka_internals.topic_id(self._consumer, topic)

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets (``None``: nothing committed)."""
        wanted = [TopicPartition(*tp) for tp in partitions]
        cached = self._callback_committed
        in_hook = cached is not None and self._callback_thread == threading.get_ident()
        if in_hook and all(tp in cached for tp in wanted):  # fetched for on_assign
            return {tp: cached[tp] for tp in wanted}
        self._refuse_in_callback("committed() of partitions not being assigned")
        kafka = _kafka()
        consumer = self._ensure_consumer()
        if consumer is None:
            raise SourceError(f"not connected to Kafka ({self._last_error})")
        return {
            TopicPartition(*tp): consumer.committed(kafka.TopicPartition(*tp)) for tp in partitions
        }

    def assignment(self) -> set[TopicPartition]:
        if self._consumer is None:
            return set()
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment() or ()}

    def lag(self, timeout_s: float = 5.0) -> dict[TopicPartition, int | None]:
        """Per assigned partition: end offset minus the next offset to read (None: unknown).

        Uses the high watermark of the last fetch when there is one, else asks
        the broker for end offsets (bounded by ``timeout_s``).
        """
        self._refuse_in_callback("lag()")
        kafka = _kafka()
        assigned = self.assignment()
        if not assigned:
            return {}
        consumer = self._consumer
        ends: dict[TopicPartition, int | None] = {}
        missing = []
        for tp in assigned:
            high = consumer.highwater(kafka.TopicPartition(*tp))
            if high is None:
                missing.append(kafka.TopicPartition(*tp))
            ends[tp] = high
        if missing:
            try:
                for ktp, end in consumer.end_offsets(
                    missing, timeout_ms=int(timeout_s * 1000)
                ).items():
                    ends[TopicPartition(ktp.topic, ktp.partition)] = end
            except (kafka.errors.KafkaError, TypeError) as exc:
                log.debug("end offsets unavailable: %s", exc)
        lags: dict[TopicPartition, int | None] = {}
        for tp, end in ends.items():
            position = self._positions.get(tp)
            if position is None:
                with contextlib.suppress(Exception):
                    position = consumer.position(
                        kafka.TopicPartition(*tp), timeout_ms=int(timeout_s * 1000)
                    )
            lags[tp] = None if end is None or position is None else max(0, end - position)
        return lags

    def connected(self) -> bool:
        """A broker connection is up, the last poll did not fail, and the group answers.

        Once partitions are assigned, a group coordinator that was forgotten or
        answers no heartbeat within the session timeout counts as disconnected.
        """
        if self._consumer is None or self._last_error is not None:
            return False
        if not self._group_alive():
            return False
        return kafka_internals.broker_connected(self._consumer)

    def _group_alive(self) -> bool:
        """False when this member cannot be sure it is still in the group.

        A frozen broker keeps its TCP connections open (the kernel still accepts
        them), so "a connection is up" stays true while nothing is answered.
        What does stop is the group: kafka-python's heartbeat thread forgets the
        coordinator when a request to it times out, and no heartbeat is answered
        within the session timeout. And once the coordinator is found again
        (after a broker restart, say), membership is only sure again when a
        heartbeat is answered or the group is joined anew: a restarted broker
        may have forgotten the group, and the topic with it. kafka-python has
        no public call for this: without these internals, assume alive.
        """
        if not self.assignment():
            return True  # joining: the "assigned" readiness condition says so
        return kafka_internals.group_alive(self._consumer, self._joined_at)

    def _fetch_only_as_member(self, consumer) -> None:
        """Pause fetching while membership is unsure (see :meth:`_group_alive`), and after
        it is confirmed again until the metadata (topic ids) has been refreshed.

        A broker restarted without its data answers fetches at the old
        positions in a new, unrelated log before the group says this member is
        gone: events there would be read (and learnt) before the daemon can
        tell, from the topic's new id, that the topic changed. Paused
        partitions keep their position.
        """
        assigned = self.assignment()
        if not assigned:
            return
        kafka = _kafka()
        paused = consumer.paused()
        everything = [kafka.TopicPartition(*tp) for tp in assigned]
        if not self._group_alive():
            if self._unsure_since is None:
                self._unsure_since = time.monotonic() * 1000
                log.info("group membership unsure: fetching paused until it is confirmed")
            if len(paused) < len(assigned):
                consumer.pause(*everything)
            return
        if self._unsure_since is not None:
            refreshed = kafka_internals.metadata_refreshed_ms(consumer)
            if refreshed is not None and refreshed <= self._unsure_since:
                if not self._refresh_requested:  # the topic ids must be the current ones
                    self._refresh_requested = True
                    kafka_internals.request_metadata_update(consumer)
                if len(paused) < len(assigned):
                    consumer.pause(*everything)
                return
            self._unsure_since = None
            self._refresh_requested = False
            log.info("group membership confirmed and metadata refreshed: fetching again")
        held = self._held
        resumable = [tp for tp in paused if TopicPartition(tp.topic, tp.partition) not in held]
        if resumable:
            consumer.resume(*resumable)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch nothing from ``partitions`` until :meth:`resume`; safe in a rebalance hook.

        Kept apart from the pausing while membership is unsure: a partition paused
        here stays paused when membership is confirmed again.
        """
        wanted = {TopicPartition(*tp) for tp in partitions}
        self._held |= wanted
        chosen = self._assigned_kafka(wanted)
        if chosen:
            self._consumer.pause(*chosen)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch from ``partitions`` again, unless membership is unsure (then when it is
        confirmed)."""
        wanted = {TopicPartition(*tp) for tp in partitions}
        self._held -= wanted
        if self._unsure_since is not None:
            return
        chosen = self._assigned_kafka(wanted)
        if chosen:
            self._consumer.resume(*chosen)

    def _assigned_kafka(self, partitions: set[TopicPartition]) -> list:
        """Those of ``partitions`` assigned now, as kafka-python's TopicPartitions (none
        without a consumer)."""
        if self._consumer is None:
            return []
        assigned = self.assignment()
        kafka = _kafka()
        return [kafka.TopicPartition(*tp) for tp in partitions if tp in assigned]

    def partition_count(self, topic: str) -> int | None:
        """How many partitions ``topic`` has, from the consumer's metadata (None: unknown)."""
        consumer = self._consumer
        if consumer is None:
            return None
        try:
            partitions = consumer.partitions_for_topic(topic)
        except Exception as exc:
            log.debug("partitions of %s unknown: %s", topic, exc)
            return None
        return len(partitions) if partitions else None

    def group_member(self) -> bool:
        """Sure to belong to the group's generation: partitions assigned, the coordinator
        known and a heartbeat answered since the last reset (see :meth:`_group_alive`)."""
        return (
            bool(self.assignment())
            and kafka_internals.group_alive(self._consumer, self._joined_at)
            and not kafka_internals.generation_reset(self._consumer)
        )

    def close(self, timeout_s: float = 10.0) -> None:
        """Leave the group and close (no autocommit; ``on_revoke`` is not called)."""
        if self._closed:
            return
        self._closed = True
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        self._on_assign = self._on_revoke = self._on_lost = None
        try:
            consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
        except TypeError:  # kafka-python 2.x
            consumer.close(autocommit=False)
        except Exception as exc:
            log.warning("closing the consumer: %s", exc)


# ---------------------------------------------------------------------------
# files


class FileSource:
    """JSONL lines from a file or standard input, one record per line.

    Offsets are zero-based line indexes (the line number minus one), the
    partition is 0 and the topic is the file's name (``"stdin"`` for ``-``).
    Empty lines are records too (the codec reports them as ``empty``), so
    offsets always match line numbers. :meth:`poll` honours its timeout on
    pipes and terminals; :attr:`exhausted` turns true at the end of the input.

    Parameters
    ----------
    path : str
        File to read, or ``"-"`` for standard input.
    stream : binary file or None
        Read this instead of opening ``path`` (for tests and embedding).

    Examples
    --------
    >>> import io
    >>> src = FileSource("-", stream=io.BytesIO(b'{"x": 1}\\n\\n{"x": 2}'))
    >>> [(r.offset, r.value) for r in src.poll(10, 0.1)]
    [(0, b'{"x": 1}'), (1, b''), (2, b'{"x": 2}')]
    >>> src.exhausted
    True
    """

    def __init__(self, path: str = "-", stream: BinaryIO | None = None) -> None:
        self.path = path
        if stream is not None:
            self._stream = stream
            self._owned = False
        elif path == "-":
            self._stream = sys.stdin.buffer
            self._owned = False
        else:
            try:
                self._stream = open(path, "rb")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise SourceError(
                    f"source.file.path: cannot open {path!r}: {exc.strerror or exc}"
                ) from exc
            self._owned = True
        self.topic = "stdin" if path == "-" else os.path.basename(path)
        self._tp = TopicPartition(self.topic, 0)
        self._next = 0  # offset of the next line to return
        self._buffer = b""
        self._eof = False
        self._skip_to = 0
        self._on_assign: PartitionsCallback | None = None
        self._assigned_once = False
        self._fd = self._fileno()
        self._selectable = self._fd is not None and not _is_regular(self._fd)

    def _fileno(self) -> int | None:
        try:
            return self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            return None

    @property
    def exhausted(self) -> bool:
        return self._eof and not self._buffer

    def set_rebalance_callbacks(self, on_assign, on_revoke, on_lost=None) -> None:
        """Files have one partition, always assigned: ``on_assign`` runs on the first poll."""
        self._on_assign = on_assign
        self._assigned_once = False

    def _read_chunk(self, timeout_s: float) -> bytes | None:
        """Up to 64 KiB; ``None`` if nothing arrived within the timeout (pipes only)."""
        if self._selectable:
            ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout_s))
            if not ready:
                return None
            return os.read(self._fd, 65536)
        reader = getattr(self._stream, "read1", None) or self._stream.read
        return reader(65536)

    def poll(self, max_records: int = 2000, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` lines (a partial last line waits for its newline or EOF)."""
        if self._on_assign is not None and not self._assigned_once:
            self._assigned_once = True
            self._on_assign({self._tp})
        deadline = time.monotonic() + timeout_s
        records: list[Record] = []
        while len(records) < max_records:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
                self._emit(line, records)
                continue
            if self._eof:
                if self._buffer:  # last line without a newline
                    line, self._buffer = self._buffer, b""
                    self._emit(line, records)
                break
            if records and self._selectable:
                # return what we have rather than wait for more from a pipe
                chunk = self._read_chunk(0)
            else:
                chunk = self._read_chunk(max(0.0, deadline - time.monotonic()))
            if chunk is None:
                break
            if not chunk:
                self._eof = True
                continue
            self._buffer += chunk
        return records

    def _emit(self, line: bytes, records: list[Record]) -> None:
        offset = self._next
        self._next += 1
        if offset < self._skip_to:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        records.append(Record(self.topic, 0, offset, None, None, line))

    def commit(self, offsets: Mapping[TopicPartition, int], timeout_s: float = 30.0) -> None:
        """Nothing to do: a file keeps no group state (the checkpoint holds the offsets)."""

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """Nothing: a file has no group."""
        return {}

    def topic_id(self, topic: str) -> str | None:
        """None: a file is no Kafka topic."""
        return None

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Skip forward to an offset (a restart from a checkpoint); backward only on files."""
        for tp, offset in offsets.items():
            if TopicPartition(*tp) != self._tp:
                continue
            offset = int(offset)
            if offset >= self._next:
                self._skip_to = offset
            elif self._owned or not self._selectable:
                try:
                    self._stream.seek(0)
                except (OSError, AttributeError, ValueError) as exc:
                    raise SourceError(f"cannot seek back in {self.path}: {exc}") from exc
                self._buffer, self._eof, self._next, self._skip_to = b"", False, 0, offset
            else:
                raise SourceError(f"cannot seek back to line {offset + 1} of a stream")

    def seek_to_beginning(self, partitions: Iterable[TopicPartition]) -> None:
        """Read from the first line again (files only; a stream cannot go back)."""
        self.seek(dict.fromkeys(partitions, 0))

    def assignment(self) -> set[TopicPartition]:
        return {self._tp}

    def lag(self, timeout_s: float = 5.0) -> dict[TopicPartition, int | None]:
        """Unknown for files (the number of lines left is not known without reading)."""
        return {self._tp: 0 if self.exhausted else None}

    def connected(self) -> bool:
        return True

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Nothing to do: the daemon pauses partitions only with a state topic (Kafka)."""

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Nothing to do (see :meth:`pause`)."""

    def partition_count(self, topic: str) -> int | None:
        """1: a file is one partition."""
        return 1

    def group_member(self) -> bool:
        """True: a file has no group to lose."""
        return True

    def close(self) -> None:
        if self._owned:
            with contextlib.suppress(OSError):
                self._stream.close()


def _is_regular(fd: int) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


# ---------------------------------------------------------------------------


def source_from_config(config: Any, max_block_s: float | None = None) -> KafkaSource | FileSource:
    """Build the source a :class:`streamgmm.config.Config` describes.

    ``max_block_s``: see :class:`KafkaSource` (a file source never blocks long).
    """
    src = config.source
    if src.kind == "file":
        return FileSource(src.file.path)
    k = src.kafka
    return KafkaSource(
        k.bootstrap_servers,
        k.topic,
        k.group_id,
        k.auto_offset_reset,
        k.max_poll_records,
        k.client,
        max_block_s=max_block_s,
    )
