"""Where records go: Kafka topics or JSONL files, by role.

A sink accepts records for three roles, :data:`ROLES`: ``outliers``,
``dead_letter`` and ``scores`` (optional). Both sinks speak the small
:class:`Sink` protocol the daemon uses:

``send(role, key, value) -> SendHandle``
    Queue one record; never blocks on the network. The handle reports the
    outcome (``done()``, ``succeeded()``, ``exception()``, ``wait()``).
``flush(timeout_s) -> bool``
    Wait until every record sent before the call is acknowledged; ``True``
    only then, and only if no record failed for good since the last
    :meth:`take_failures`. The daemon checkpoints and commits offsets only
    after a ``True``, so nothing is silently lost.
``take_failures() -> list[FailedSend]``
    Records that can never be delivered (too large, not authorised...), for
    the daemon to report or re-route.
``close(timeout_s)``

:class:`KafkaSink` keeps every record until the broker acknowledges it
(``acks=all``). kafka-python's idempotent producer never recovers once a
delivery timeout expired while the broker was unreachable (every later send
hangs, see DESIGN.md section 4), so the sink watches its producer: a
delivery failure, or a record without any delivery report well past the
delivery timeout, marks the producer dead; a new one is built (with backoff)
and every unacknowledged record is sent again, in order. Records may thus be
written twice (at least once), never dropped. Rebuilds are counted in
``streamgmm_producer_rebuilds_total``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "ROLES",
    "FailedSend",
    "FileSink",
    "KafkaSink",
    "SendHandle",
    "Sink",
    "SinkError",
    "sink_from_config",
]

log = logging.getLogger(__name__)

#: Record roles: outlier records, dead letters, every event's score record.
ROLES = ("outliers", "dead_letter", "scores")


class SinkError(RuntimeError):
    """The sink cannot be used (refused configuration, closed); the message says why."""


class SendHandle:
    """The outcome of one :meth:`Sink.send`, future-like and thread-safe.

    ``metadata`` is ``(partition, offset)`` for Kafka once acknowledged. One
    is made per record sent (per event with a scores topic), so it holds one
    lock; the event a :meth:`wait` needs is made only when someone waits.
    """

    __slots__ = ("_callbacks", "_done", "_error", "_event", "_lock", "metadata", "role")

    def __init__(self, role: str) -> None:
        self.role = role
        self._lock = threading.Lock()
        self._done = False
        self._event: threading.Event | None = None
        self._callbacks: list[Callable[[SendHandle], None]] = []
        self._error: BaseException | None = None
        self.metadata: tuple[int, int] | None = None

    def done(self) -> bool:
        return self._done

    def succeeded(self) -> bool:
        return self._done and self._error is None

    def exception(self) -> BaseException | None:
        return self._error

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until done (or ``timeout_s``); True if done."""
        with self._lock:
            if self._done:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout_s)

    def add_done_callback(self, callback: Callable[[SendHandle], None]) -> None:
        """Call ``callback(handle)`` once the outcome is known (at once if it is).

        It runs in the thread that learns the outcome (kafka-python's sender
        thread for Kafka), so it must be quick and must not call the sink.
        """
        with self._lock:
            if not self._done:
                self._callbacks.append(callback)
                return
        callback(self)

    def _resolve(self, metadata: tuple[int, int] | None = None) -> None:
        self._finish(metadata, None)

    def _fail(self, error: BaseException) -> None:
        self._finish(None, error)

    def _finish(self, metadata: tuple[int, int] | None, error: BaseException | None) -> None:
        with self._lock:
            if self._done:
                return
            self.metadata, self._error = metadata, error
            self._done = True
            callbacks, self._callbacks = self._callbacks, []
            event = self._event
        if event is not None:
            event.set()
        self._run(callbacks)

    def _run(self, callbacks: list[Callable[[SendHandle], None]]) -> None:
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a report must not break the sender thread
                log.exception("a send callback failed (a bug: please report it)")

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("ok" if self.succeeded() else "failed")
        return f"<SendHandle {self.role} {state}>"


class FailedSend(NamedTuple):
    """A record that can never be delivered, and why."""

    role: str
    destination: str
    key: bytes | None
    value: bytes
    error: BaseException


@runtime_checkable
class Sink(Protocol):
    """Everything the daemon's loop calls on a destination of records."""

    @property
    def roles(self) -> frozenset[str]:
        """The roles records can be sent for (``outliers``, ``dead_letter``, ``scores``)."""
        ...

    @property
    def pending(self) -> int:
        """Records sent and not yet acknowledged (0 for a sink that writes at once)."""
        ...

    def send(self, role: str, key: bytes | None, value: bytes) -> SendHandle:
        """Queue one record for ``role``; returns at once."""
        ...

    def flush(self, timeout_s: float) -> bool:
        """True when every record sent so far is acknowledged, within ``timeout_s``."""
        ...

    def take_failures(self) -> list[FailedSend]:
        """The records that can never be delivered, since the last call."""
        ...

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what can be within ``timeout_s``, then release the sink."""
        ...


def _check_roles(destinations: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(destinations) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown sink roles {sorted(unknown)}; roles are {', '.join(ROLES)}")
    return {role: d for role, d in destinations.items() if d is not None}


# ---------------------------------------------------------------------------
# Kafka


class _Pending:
    __slots__ = ("generation", "handed_at", "handle", "id", "key", "role", "topic", "value")

    def __init__(self, id_: int, role: str, topic: str, key, value, handle) -> None:
        self.id, self.role, self.topic, self.key, self.value = id_, role, topic, key, value
        self.handle = handle
        self.generation = -1
        self.handed_at = 0.0


def _is_transient(error: BaseException) -> bool:
    """Worth a new producer and a resend (timeouts, lost connections, idempotence state)."""
    from kafka import errors

    state_errors = tuple(
        getattr(errors, name)
        for name in (
            "OutOfOrderSequenceNumberError",
            "InvalidProducerEpochError",
            "UnknownProducerIdError",
            "InvalidPidMappingError",
        )
        if hasattr(errors, name)
    )
    return bool(getattr(error, "retriable", False)) or isinstance(
        error, (errors.KafkaTimeoutError, errors.KafkaConnectionError, *state_errors)
    )


class KafkaSink:
    """A kafka-python producer (``acks=all``) that is replaced when it stops delivering.

    Parameters
    ----------
    bootstrap_servers : sequence of str
    topics : mapping of role to topic (or None)
        ``{"outliers": ..., "dead_letter": ..., "scores": ...}``; a role
        without a topic cannot be sent to.
    client : mapping
        Extra ``KafkaProducer`` options (security, ``delivery_timeout_ms``...).
    metrics : streamgmm.metrics.Metrics or None
        Counts ``producer_rebuilds_total`` and ``broker_errors_total{operation="send"}``.
    stall_grace_s : float
        A record with no delivery report this long after the delivery timeout
        means the producer is stuck.
    producer_factory : callable
        Builds the producer (``kafka.KafkaProducer``); for tests.
    """

    def __init__(
        self,
        bootstrap_servers: Iterable[str],
        topics: Mapping[str, str | None],
        client: Mapping[str, Any] | None = None,
        metrics: Any = None,
        stall_grace_s: float = 5.0,
        producer_factory: Callable[..., Any] | None = None,
        max_rebuild_backoff_s: float = 30.0,
    ) -> None:
        from kafka import KafkaProducer

        self._topics = _check_roles(topics)
        options = dict(client or {})
        if isinstance(options.get("api_version"), list):
            options["api_version"] = tuple(options["api_version"])
        options.update(bootstrap_servers=list(bootstrap_servers), acks="all")
        self._options = options
        self._user_api_version = "api_version" in options
        delivery_ms = options.get(
            "delivery_timeout_ms", KafkaProducer.DEFAULT_CONFIG["delivery_timeout_ms"]
        )
        self.delivery_timeout_s = float(delivery_ms) / 1000.0
        self.stall_grace_s = float(stall_grace_s)
        self.max_rebuild_backoff_s = float(max_rebuild_backoff_s)
        self._factory = producer_factory or KafkaProducer
        self._metrics = metrics

        self._cond = threading.Condition()
        self._records: dict[int, _Pending] = {}  # unacknowledged, in send order
        self._queue: deque[int] = deque()  # ids waiting to be handed to the producer
        self._inflight: dict[int, int] = {}  # id -> generation, handed to the producer
        self._failures: list[FailedSend] = []
        self._next_id = 0
        self._producer: Any = None
        self._generation = 0
        self._dead_reason: str | None = None
        self._fatal: BaseException | None = None
        self._stop = False
        self._building = False  # the worker waits for a producer (a first broker)
        self._failed_builds = 0
        self._delivered_since_build = 0
        self.rebuilds = 0
        self._thread = threading.Thread(target=self._run, name="streamgmm-sink", daemon=True)
        self._thread.start()

    # -- the daemon's side -------------------------------------------------------

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(self._topics)

    @property
    def pending(self) -> int:
        """Records sent and not yet acknowledged."""
        with self._cond:
            return len(self._records)

    def send(self, role: str, key: bytes | None, value: bytes) -> SendHandle:
        """Queue a record for the role's topic; returns at once."""
        topic = self._topics.get(role)
        if topic is None:
            raise ValueError(f"no topic configured for role {role!r}")
        handle = SendHandle(role)
        with self._cond:
            if self._fatal is not None:
                raise SinkError(f"the Kafka producer cannot be created: {self._fatal}")
            if self._stop:
                raise SinkError("the sink is closed")
            rec = _Pending(self._next_id, role, topic, key, value, handle)
            self._next_id += 1
            self._records[rec.id] = rec
            self._queue.append(rec.id)
            self._cond.notify_all()
        return handle

    def flush(self, timeout_s: float) -> bool:
        """True when every record sent before this call is acknowledged (see module doc)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._next_id
            while True:
                if self._fatal is not None:
                    raise SinkError(f"the Kafka producer cannot be created: {self._fatal}")
                oldest = next(iter(self._records), None)
                if oldest is None or oldest >= target:
                    return not self._failures
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.25))

    def take_failures(self) -> list[FailedSend]:
        with self._cond:
            failures, self._failures = self._failures, []
        return failures

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what can be delivered within ``timeout_s``, then stop."""
        if self._thread is None:
            return
        delivered = self.flush(timeout_s) if self._fatal is None else False
        with self._cond:
            self._stop = True
            undelivered = len(self._records)
            producer, self._producer = self._producer, None
            building = self._building
            self._cond.notify_all()
        if undelivered:
            log.error("closing the Kafka sink with %d record(s) not acknowledged", undelivered)
        elif not delivered:
            log.warning("closing the Kafka sink with undelivered failures")
        # A worker still waiting for a first broker (kafka-python's bootstrap can
        # take its bootstrap_timeout_ms) has nothing left to deliver once stopped,
        # and closes the producer it may still get: no reason to wait for it.
        self._thread.join(timeout=0.1 if building else max(1.0, timeout_s))
        self._thread = None
        if producer is not None:
            _close_in_background(producer, timeout_s=max(0.0, min(timeout_s, 5.0)), wait=True)

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the worker thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop:
                    if self._producer is None or self._dead_reason is not None:
                        break
                    if self._queue:
                        break
                    self._check_stalled()
                    if self._dead_reason is None:
                        self._cond.wait(0.25)
                if self._stop:
                    return
                need_build = self._producer is None or self._dead_reason is not None
                backoff = self._backoff()
            if need_build:
                if backoff:
                    with self._cond:
                        self._cond.wait(backoff)
                        if self._stop:
                            return
                self._build()
                continue
            self._hand_off()

    def _backoff(self) -> float:
        """Seconds to wait before the next build: grows while builds do not deliver."""
        if self._failed_builds == 0:
            return 0.0
        return min(self.max_rebuild_backoff_s, 0.5 * 2 ** (self._failed_builds - 1))

    def _check_stalled(self) -> None:
        """Mark the producer dead if the oldest in-flight record is long overdue."""
        if not self._inflight or self._producer is None:
            return
        oldest = self._records.get(next(iter(self._inflight)))
        if oldest is None:
            return
        waited = time.monotonic() - oldest.handed_at
        if waited > self.delivery_timeout_s + self.stall_grace_s:
            self._dead_reason = (
                f"no delivery report for {waited:.0f} s (delivery timeout "
                f"{self.delivery_timeout_s:.0f} s): the producer is stuck"
            )

    def _build(self) -> None:
        from kafka import errors

        with self._cond:
            old, self._producer = self._producer, None
            reason = self._dead_reason
            self._generation += 1
            # every unacknowledged record goes back to the queue, in send order
            waiting = set(self._queue) | set(self._inflight)
            self._queue = deque(i for i in self._records if i in waiting)
            self._inflight.clear()
            if old is not None and self._delivered_since_build == 0:
                self._failed_builds += 1
            elif old is not None:
                self._failed_builds = 1
        options = dict(self._options)
        if old is not None:
            api_version = getattr(old, "config", {}).get("api_version")
            if api_version and not self._user_api_version:
                options["api_version"] = api_version  # no version probe against a dead broker
            _close_in_background(old, timeout_s=0.0, wait=False)
        with self._cond:
            self._building = True
        try:
            producer = self._factory(**options)
        except (errors.KafkaConfigurationError, TypeError, ValueError) as exc:
            with self._cond:
                self._fatal = exc
                self._fail_all(SinkError(f"the Kafka producer cannot be created: {exc}"))
                self._cond.notify_all()
            log.error("sink.kafka.client: kafka-python refused the producer options: %s", exc)
            return
        except Exception as exc:
            with self._cond:
                self._failed_builds += 1
            self._count_error()
            log.warning(
                "cannot create the Kafka producer (%s: %s); retrying", type(exc).__name__, exc
            )
            return
        finally:
            with self._cond:
                self._building = False
        with self._cond:
            if self._stop:
                _close_in_background(producer, timeout_s=0.0, wait=False)
                return
            self._producer = producer
            self._dead_reason = None
            self._delivered_since_build = 0
            if old is not None:
                self.rebuilds += 1
                resend = len(self._queue)
            self._cond.notify_all()
        if old is not None:
            if self._metrics is not None:
                self._metrics.producer_rebuilds_total.inc()
            log.warning(
                "Kafka producer replaced (%s); resending %d unacknowledged record(s)",
                reason,
                resend,
            )

    def _hand_off(self) -> None:
        """Give queued records to the producer (this may block on metadata: worker only)."""
        from kafka import errors

        while True:
            with self._cond:
                if self._stop or self._dead_reason is not None or not self._queue:
                    return
                rid = self._queue.popleft()
                rec = self._records.get(rid)
                if rec is None:  # acknowledged meanwhile (a late report from an old producer)
                    continue
                producer, generation = self._producer, self._generation
                rec.generation = generation
                rec.handed_at = time.monotonic()
                self._inflight[rid] = generation
            try:
                future = producer.send(rec.topic, key=rec.key, value=rec.value)
            except errors.KafkaTimeoutError as exc:
                # no metadata or no buffer space within max_block_ms: retry later
                with self._cond:
                    self._inflight.pop(rid, None)
                    self._queue.appendleft(rid)
                    if self._delivered_since_build == 0:
                        self._dead_reason = f"send timed out ({exc})"
                self._count_error()
                log.warning("send to %s timed out (%s); retrying", rec.topic, exc)
                return
            except Exception as exc:
                with self._cond:
                    self._inflight.pop(rid, None)
                    if _is_transient(exc):
                        self._queue.appendleft(rid)
                        self._dead_reason = f"send failed ({type(exc).__name__}: {exc})"
                        self._count_error()
                        return
                    self._fail_one(rec, exc)
                continue
            future.add_callback(self._delivered, rec, generation)
            future.add_errback(self._failed, rec, generation)

    # -- delivery reports (kafka-python's sender thread) ----------------------------

    def _delivered(self, rec: _Pending, generation: int, metadata: Any) -> None:
        with self._cond:
            if self._records.pop(rec.id, None) is None:
                return  # already acknowledged (a duplicate after a rebuild)
            self._inflight.pop(rec.id, None)
            if generation == self._generation:
                self._delivered_since_build += 1
                self._failed_builds = 0
            partition = getattr(metadata, "partition", None)
            offset = getattr(metadata, "offset", None)
            rec.handle._resolve(None if partition is None else (partition, offset))
            self._cond.notify_all()

    def _failed(self, rec: _Pending, generation: int, error: BaseException) -> None:
        with self._cond:
            if rec.id not in self._records or generation != self._generation:
                return  # delivered after all, or already queued for the new producer
            if _is_transient(error):
                if self._dead_reason is None:
                    self._dead_reason = f"delivery failed ({type(error).__name__}: {error})"
                self._cond.notify_all()
                transient = True
            else:
                self._inflight.pop(rec.id, None)
                self._fail_one(rec, error)
                transient = False
        if transient:
            self._count_error()

    # -- helpers (called with the lock held) ----------------------------------------

    def _fail_one(self, rec: _Pending, error: BaseException) -> None:
        self._records.pop(rec.id, None)
        rec.handle._fail(error)
        self._failures.append(FailedSend(rec.role, rec.topic, rec.key, rec.value, error))
        log.error(
            "record for %s (%s) cannot be delivered: %s: %s",
            rec.topic,
            rec.role,
            type(error).__name__,
            error,
        )
        self._cond.notify_all()

    def _fail_all(self, error: BaseException) -> None:
        for rec in list(self._records.values()):
            rec.handle._fail(error)
        self._records.clear()
        self._queue.clear()
        self._inflight.clear()

    def _count_error(self) -> None:
        if self._metrics is not None:
            self._metrics.broker_errors_total.labels(operation="send").inc()


def _close_in_background(producer: Any, timeout_s: float, wait: bool) -> None:
    """Close a producer without ever blocking the caller for long (a dead one can hang)."""

    def close() -> None:
        with contextlib.suppress(Exception):
            producer.close(timeout=timeout_s)

    thread = threading.Thread(target=close, name="streamgmm-producer-close", daemon=True)
    thread.start()
    if wait:
        thread.join(timeout_s + 1.0)


# ---------------------------------------------------------------------------
# files


class FileSink:
    """JSONL files by role: one record per line, appended.

    ``outliers`` go to ``path`` (``"-"``: standard output), ``dead_letter`` to
    ``dead_letter_path`` (``None``: standard error), ``scores`` to
    ``scores_path`` (``None``: no scores role). :meth:`flush` flushes and
    fsyncs regular files, so a ``True`` means the lines are on disk.

    Examples
    --------
    >>> import io
    >>> out, dead = io.BytesIO(), io.BytesIO()
    >>> sink = FileSink(stdout=out, stderr=dead)
    >>> sink.send("outliers", None, b'{"score": 9.5}').succeeded()
    True
    >>> sink.flush(1.0), out.getvalue(), sorted(sink.roles)
    (True, b'{"score": 9.5}\\n', ['dead_letter', 'outliers'])
    """

    def __init__(
        self,
        path: str = "-",
        dead_letter_path: str | None = None,
        scores_path: str | None = None,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
    ) -> None:
        stdout = stdout if stdout is not None else sys.stdout.buffer
        stderr = stderr if stderr is not None else sys.stderr.buffer
        self._files: dict[str, tuple[str, BinaryIO, bool]] = {}
        self._failures: list[FailedSend] = []
        self._lock = threading.Lock()
        try:
            self._open("outliers", path, stdout)
            self._open("dead_letter", dead_letter_path, stderr)
            if scores_path is not None:
                self._open("scores", scores_path, stdout)
        except OSError:
            self.close()
            raise

    def _open(self, role: str, path: str | None, default: BinaryIO | None) -> None:
        if path is None or path == "-":
            name = "<stderr>" if role == "dead_letter" else "<stdout>"
            self._files[role] = (name, default, False)  # type: ignore[arg-type]
            return
        try:
            handle = open(path, "ab")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            key = {"outliers": "path", "dead_letter": "dead_letter_path"}.get(role, "scores_path")
            raise SinkError(
                f"sink.file.{key}: cannot open {path!r}: {exc.strerror or exc}"
            ) from exc
        self._files[role] = (path, handle, True)

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(self._files)

    @property
    def pending(self) -> int:
        """Always 0: a line is written (or has failed) when :meth:`send` returns."""
        return 0

    def send(self, role: str, key: bytes | None, value: bytes) -> SendHandle:
        """Write one line; the handle fails if the write does (disk full, closed pipe)."""
        entry = self._files.get(role)
        if entry is None:
            raise ValueError(f"no file configured for role {role!r}")
        name, handle_io, _ = entry
        handle = SendHandle(role)
        try:
            with self._lock:
                handle_io.write(value + b"\n")
            handle._resolve()
        except (OSError, ValueError) as exc:
            handle._fail(exc)
            with self._lock:
                self._failures.append(FailedSend(role, name, key, value, exc))
        return handle

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Flush (and fsync regular files); False if a write failed since the last check."""
        ok = True
        with self._lock:
            for name, handle_io, owned in self._files.values():
                try:
                    handle_io.flush()
                    if owned and stat.S_ISREG(os.fstat(handle_io.fileno()).st_mode):
                        os.fsync(handle_io.fileno())  # devices and pipes have nothing to sync
                except (OSError, ValueError) as exc:
                    log.error("cannot flush %s: %s", name, exc)
                    ok = False
            return ok and not self._failures

    def take_failures(self) -> list[FailedSend]:
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def close(self, timeout_s: float = 10.0) -> None:
        with contextlib.suppress(Exception):
            self.flush(timeout_s)
        for _, handle_io, owned in self._files.values():
            if owned:
                with contextlib.suppress(OSError):
                    handle_io.close()
        self._files = {}


# ---------------------------------------------------------------------------


def sink_from_config(config: Any, metrics: Any = None) -> KafkaSink | FileSink:
    """Build the sink a :class:`streamgmm.config.Config` describes."""
    sink = config.sink
    if sink.kind == "file":
        f = sink.file
        return FileSink(f.path, f.dead_letter_path, f.scores_path)
    k = sink.kafka
    bootstrap = k.bootstrap_servers or config.source.kafka.bootstrap_servers
    topics = {"outliers": k.topic, "dead_letter": k.dead_letter_topic, "scores": k.scores_topic}
    return KafkaSink(bootstrap, topics, k.client, metrics=metrics)
