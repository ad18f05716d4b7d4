"""The loop: poll -> decode -> score and learn -> publish -> checkpoint -> commit.

One :class:`Daemon` owns the order of side effects, which is what makes the
guarantees hold:

- a batch's undecodable events are handed to the sink as dead letters; the
  rest are scored with the model as it was before the batch (prequential)
  and its inliers learnt, in one call (``Detector.process``); then its
  outliers are handed to the sink. Learning before publishing loses
  nothing: the checkpoint that records the learning waits until the sink
  has acknowledged every record, so a crash in between re-reads the batch
  with a model that has not learnt it;
- every ``checkpoint.interval_s`` (:meth:`Daemon.checkpoint`): the batches
  read are finished, the sink is flushed (every record sent so far
  acknowledged), the checkpoint (model, threshold, and the offsets they
  reflect) is written atomically, and only then are those offsets
  committed. A crash anywhere re-reads from the last checkpoint: the model
  learns each event once, outliers are published at least once;
- on partition assignment each partition is read from the checkpoint's
  offset or the group's committed one, whichever is further; on revocation
  a checkpoint is taken and the revoked offsets committed first; a topic
  whose cluster id changed (created again, or brokers restarted without
  their data) is read from its beginning, its old offsets dropped (the
  bookkeeping is :class:`streamgmm.offsets.Offsets`);
- SIGTERM/SIGINT/SIGHUP: the batch in hand is finished, then flush,
  checkpoint, commit, leave the group, exit 0 (under 50 s even when the
  brokers are unreachable: nothing is waited for twice);
- a broker that cannot be reached is retried with capped backoff while
  /readyz says why (:class:`streamgmm.status.Status`); only configuration
  errors end the process;
- a large batch is decoded by a child process (``decode_worker``) while the next
  poll runs; it is processed before that poll's records, before any
  checkpoint and before a rebalance moves the offsets, so the order of side
  effects above is the same as if it had been decoded in the loop.

:meth:`Daemon.from_config` does the I/O of a start (the checkpoint read, the
Kafka clients, the metrics HTTP server); the constructor does none. The
daemon computes no Gaussian: that is the detector's job.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import Any

import numpy as np

from . import __version__
from .checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    load_state,
    prepare_directory,
    remove_leftovers,
    save_state,
)
from .config import Config
from .decode_worker import ANSWER_TIMEOUT_S, Decoder, Pending, default_workers
from .detector import BatchResult, Detector
from .events import DecodeError
from .kafka_internals import generation_lost
from .metrics import Health, Metrics, MetricsServer, start_metrics_server
from .notify import Notifier
from .offsets import Offsets
from .records import MODEL_ERROR, encode_dead_letter, encode_score_records, outlier_records
from .sinks import SendHandle, Sink, sink_from_config
from .sources import Source, SourceError, TopicPartition, next_offsets, source_from_config
from .state_topic import StateStore, StateTopicError
from .status import Status
from .threshold import Threshold, make_threshold
from .units import Unit, Units, merge_results

log = logging.getLogger("streamgmm.daemon")

CHECKPOINT_KIND = "streamgmm-daemon"
MAX_BACKOFF_S = 10.0  # a backoff sleep still ticks (watchdog, liveness) every tick_s
FLUSH_TIMEOUT_S = 30.0
COMMIT_TIMEOUT_S = 5.0  # a failed commit costs nothing: the next checkpoint commits again
MAX_PENDING_RECORDS = 200_000
POLL_TIMEOUT_S = 1.0  # shortened under a short WatchdogSec= (see Daemon._block_s)
LAG_EVERY_S = 5.0
SLOW_ITERATION_S = 0.25
#: A record timestamp this far ahead of our clock is a producer's clock error, not a delay:
#: counted in streamgmm_future_timestamps_total, not observed in the delay histograms.
#: Smaller skews (NTP keeps clocks within milliseconds) count as a delay of 0.
FUTURE_TOLERANCE_S = 1.0


RESTORE_TIMEOUT_S = 60.0  # reading one partition's state to its end
SPLIT_LOGS_PER_MINUTE = 10  # entities seen in two partitions: log lines, the metric counts all
ENTITY_HOMES_MAX = 2_000_000  # entity -> partition remembered to see splits (then restarted)

_value = attrgetter("value")
_timestamp = attrgetter("timestamp")
_offset = attrgetter("offset")
_partition = attrgetter("partition")


class FatalError(Exception):
    """A condition that no retry will fix (configuration, refused checkpoint)."""


# ---------------------------------------------------------------------------
# model and checkpoint


def build_threshold(config: Config) -> Threshold:
    t = config.threshold
    params = {
        "quantile": {"q": t.quantile},
        "loglik": {"loglik": t.loglik},
        "chi2": {"probability": t.probability},
    }[t.kind]
    return make_threshold(t.kind, **params)


def build_detector(config: Config) -> Detector:
    m = config.model
    return Detector(
        n_components=m.n_components,
        covariance_type=m.covariance_type,
        warmup=m.warmup,
        standardize=m.standardize,
        reg_covar=m.reg_covar,
        half_life=m.half_life,
        learn_from_outliers=m.learn_from_outliers,
        threshold=build_threshold(config),
        max_components=m.max_components,
        n_init=m.n_init,
        random_state=m.random_state,
        min_entity_events=m.entity.min_events,
        relevance=m.entity.relevance,
        max_entities=m.entity.max_entities,
        idle_ttl_s=m.entity.idle_ttl_s,
    )


def fingerprint(config: Config) -> dict[str, Any]:
    """What a checkpoint is only valid for: the model's shape and the fields it reads."""
    return build_detector(config).fingerprint(list(config.features.fields))


@dataclass
class Restored:
    detector: Detector
    offsets: Offsets = field(default_factory=Offsets)
    rejected: str | None = None  # "corrupt" or "mismatch": the checkpoint gave way


def restore(config: Config) -> Restored:
    """The detector and offsets of the checkpoint, or fresh ones as the config allows."""
    fresh = Restored(build_detector(config))
    path = config.checkpoint.path
    if path is None:
        return fresh
    problem = prepare_directory(path)  # its missing directories are created (0700)
    if problem is not None:
        raise FatalError(f"checkpoint.path: {problem} (not started)")
    leftovers = remove_leftovers(path)
    if leftovers:
        log.info("removed temporary files of interrupted checkpoint writes: %s", leftovers)
    try:
        state = load_state(path, kind=CHECKPOINT_KIND, fingerprint=fingerprint(config))
    except FileNotFoundError:
        log.info("no checkpoint at %s: starting a new model", path)
        return fresh
    except CheckpointMismatchError as exc:
        return _refuse_or_fresh(path, config.checkpoint.on_mismatch, "mismatch", exc, fresh)
    except CheckpointCorruptError as exc:
        return _refuse_or_fresh(path, config.checkpoint.on_corrupt, "corrupt", exc, fresh)
    except OSError as exc:
        raise FatalError(
            f"checkpoint.path: cannot read {path}: {exc.strerror or exc}; fix the path or "
            "its permissions (an unreadable file is never replaced by a new model)"
        ) from exc
    detector = Detector.from_state(state["detector"])
    configured = build_threshold(config)
    if configured.get_params() != detector.threshold.get_params() or (
        configured.kind != detector.threshold.kind
    ):
        log.warning(
            "the threshold configuration changed since the checkpoint: starting the new "
            "threshold from scratch (no outliers until it has seen inlier scores)"
        )
        if detector.n_features:
            configured.bind(detector.n_features)
        detector.threshold = configured
    offsets = Offsets.from_state(state)
    log.info(
        "resumed from checkpoint %s",
        path,
        extra={"fields": {"events_seen": detector.n_seen, "partitions": len(offsets)}},
    )
    return Restored(detector, offsets)


def _refuse_or_fresh(
    path: str, policy: str, reason: str, exc: CheckpointError, fresh: Restored
) -> Restored:
    key = f"on_{reason}"
    if policy == "refuse":
        way_out = f"checkpoint.{key}: fresh"
        hint = "" if way_out in str(exc) else f"; or set {way_out} to start a new model"
        raise FatalError(
            f"checkpoint.path: {exc}{hint} (checkpoint.{key} is refuse: not started)"
        ) from exc
    kept = f"{path}.rejected-{int(time.time())}"
    try:
        os.replace(path, kept)
    except OSError:
        kept = path
    log.error(
        "STARTING A FRESH MODEL: %s; the rejected file is kept as %s (checkpoint.%s: fresh)",
        exc,
        kept,
        key,
    )
    fresh.rejected = reason
    return fresh


def state_store(config: Config) -> StateStore:
    """The state topic's store (``checkpoint.topic``); no I/O until it is used."""
    k = config.source.kafka
    return StateStore(
        k.bootstrap_servers,
        config.checkpoint.topic,
        k.topic,
        client=k.client,
        fingerprint=fingerprint(config),
    )


def _max_block_s(notifier: Notifier) -> float | None:
    """The longest anything the loop waits for may take (None: no systemd watchdog).

    Under a systemd watchdog the notifier pings at most once per half of its
    interval; nothing the loop waits for (a poll, a backoff sleep, a first
    connection, a flush, a commit) may take longer than a quarter of the
    interval, so no gap between pings exceeds 3/4 of it (WATCHDOG_USEC * 3/8),
    which leaves room for the work of a batch.
    """
    interval = notifier.watchdog_interval()
    return None if interval is None else interval / 4


# ---------------------------------------------------------------------------
# the daemon


def _read_limits(config: Config) -> tuple[int, int]:
    """Records per poll and the largest value, as the source's configuration sets them."""
    if config.source.kind == "kafka":
        return config.source.kafka.max_poll_records, config.source.kafka.max_message_bytes
    return 2000, 1 << 20


class Daemon:
    """The streamgmm service loop.

    Build it with :meth:`from_config`, which reads the checkpoint and starts
    the clients and the metrics server; the constructor takes them ready-made
    and does no I/O.

    Parameters
    ----------
    config : Config
    detector : Detector, optional
        The model, fresh or restored, of every partition (no state topic).
    units : Units, optional
        Instead of ``detector``: the models the daemon holds, one per partition
        with a state topic (:class:`streamgmm.units.Units`).
    store : StateStore, optional
        The state topic's store (``checkpoint.topic``), with per-partition ``units``.
    source : Source
    sink : Sink
    offsets : Offsets, optional
        Where the model is in each partition (restored with the detector).
    metrics, health : optional
    notifier : Notifier, optional
    server : MetricsServer or None
        The /metrics HTTP server, stopped with the daemon.
    on_batch : callable or None
        Called with ``(records, decoded, result)`` after each batch (the demo
        prints outliers from it).
    """

    def __init__(
        self,
        config: Config,
        *,
        detector: Detector | None = None,
        source: Source,
        sink: Sink,
        units: Units | None = None,
        store: StateStore | None = None,
        offsets: Offsets | None = None,
        metrics: Metrics | None = None,
        health: Health | None = None,
        notifier: Notifier | None = None,
        server: MetricsServer | None = None,
        on_batch: Callable[..., None] | None = None,
    ) -> None:
        self.config = config
        self.fields = list(config.features.fields)
        if units is None:
            if detector is None:
                raise TypeError("Daemon needs a detector or units")
            units = Units.shared(detector)
        self.units = units
        self.store = store
        self.source = source
        self.sink = sink
        self.offsets = offsets if offsets is not None else Offsets()
        self.metrics = metrics or Metrics(version=__version__)
        self.health = health or Health()
        self.notifier = notifier or Notifier()
        self.status = Status(self.health, self.notifier)
        self.server = server
        self.on_batch = on_batch
        self._block_s = _max_block_s(self.notifier)
        self._tick_s = min(POLL_TIMEOUT_S, self._block_s or POLL_TIMEOUT_S)
        self.max_poll_records, self.max_bytes = _read_limits(config)
        in_child = config.features.decode_process
        self.decoder = Decoder(  # its child process starts with the first large batch
            self.fields,
            config.features.key,
            self.max_bytes,
            workers=default_workers() if in_child is None else int(in_child),
            on_failure=lambda why: self.metrics.decoder_failures_total.inc(),
            timeout_s=min(ANSWER_TIMEOUT_S, self._block_s or ANSWER_TIMEOUT_S),
        )
        # batches read and handed to the decoder, not yet processed (at most two)
        self._in_flight: deque[tuple[list, Pending]] = deque()
        self._stop = threading.Event()
        self._last_checkpoint = time.monotonic()
        self._dirty = False  # events processed since the last checkpoint
        self._backoff = 0.0
        self._last_lag = 0.0
        self._warned_future = False  # events timestamped in the future: logged once
        self._seen_warmup = self.units.is_warmed_up
        self._topic_ensured = store is None
        self._entity_homes: dict[str, int] = {}  # entity -> the partition it was seen in
        self._split_logged: deque[float] = deque()
        self.source.set_rebalance_callbacks(self._on_assign, self._on_revoke, self._on_lost)
        self.status.set("warmed_up", self.units.is_warmed_up, "warming up")
        self.status.set("assigned", bool(self.source.assignment()), "no partitions assigned")
        self.status.set("connected", self.source.connected(), "not connected to the brokers yet")
        self._publish_model_metrics(None)

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        source: Source | None = None,
        sink: Sink | None = None,
        metrics: Metrics | None = None,
        health: Health | None = None,
        serve_metrics: bool = True,
        on_batch: Callable[..., None] | None = None,
    ) -> Daemon:
        """A daemon as ``config`` describes it: the I/O of a start, in this order.

        1. The checkpoint is read (its directory created), or a fresh model
           built as ``checkpoint.on_*`` allow (:class:`FatalError` otherwise).
        2. The source and sink are built unless given (the CLI's ``score``
           passes its own); a Kafka client connects on first use.
        3. The /metrics HTTP server starts (with ``serve_metrics``).

        Raises :class:`FatalError` or :class:`streamgmm.metrics.MetricsServerError`.
        """
        metrics = metrics or Metrics(version=__version__)
        notifier = Notifier()
        restored = restore(config)  # 1
        if restored.rejected is not None:
            metrics.checkpoint_rejected.labels(reason=restored.rejected).set(1)
        units, store = None, None
        if config.checkpoint.topic is not None:  # the units are restored as assigned
            units = Units.per_partition(partial(build_detector, config))
            store = state_store(config)
        if source is None:  # 2
            source = source_from_config(config, max_block_s=_max_block_s(notifier))
        if sink is None:
            sink = sink_from_config(config, metrics)
        health = health or Health()
        server = start_metrics_server(config.metrics, metrics, health) if serve_metrics else None
        return cls(
            config,
            detector=restored.detector,
            units=units,
            store=store,
            source=source,
            sink=sink,
            offsets=restored.offsets,
            metrics=metrics,
            health=health,
            notifier=notifier,
            server=server,
            on_batch=on_batch,
        )

    @property
    def detector(self) -> Detector:
        """The model of every partition (no state topic); with one, the unit that has seen
        the most events (:meth:`streamgmm.units.Units.leader`)."""
        return self.units.leader()

    # -- control ----------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch and shut down (thread- and signal-safe)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT and SIGHUP: a clean shutdown (no reload: restart to reconfigure);
        SIGUSR1: a status line in the log. Any of them left at its default would end the
        process at once, without the shutdown checkpoint (its events read again, their
        outliers published twice)."""

        def handle(signum: int, frame: Any) -> None:
            # Only set the flag: the handler may run inside a notifier send that
            # holds its lock. The loop sends STOPPING=1 within a tick.
            log.info(
                "received %s: finishing the batch, then shutting down", signal.Signals(signum).name
            )
            self.stop()

        def status(signum: int, frame: Any) -> None:
            self.status.requested = True  # logged by the loop within a tick

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGHUP, handle)
        signal.signal(signal.SIGUSR1, status)

    # -- the loop -----------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or a file source is exhausted); the exit code (0, or 2 when
        a condition no retry fixes ends the loop)."""
        self.notifier.ready()
        log.info(
            "streamgmm %s running",
            __version__,
            extra={
                "fields": {
                    "source": self.config.source.kind,
                    "fields": self.fields,
                    "metrics": self.server.url if self.server else None,
                }
            },
        )
        try:
            while not self._stop.is_set():
                if not self._step():
                    break
        except FatalError as exc:
            log.error("%s", exc)
            self._close()
            return 2
        self._shutdown()
        return 0

    def _step(self) -> bool:
        """One turn of the loop; False when a file source is exhausted.

        0. restore the units of partitions just assigned (state topic), then resume them;
        1. poll (not waiting while a batch is being decoded elsewhere);
        2. hand the records to the decoder (here, or its child process);
        3. process the batches decoded (score, learn, publish: :meth:`_process`),
           leaving the newest to its child while it works;
        4. checkpoint and commit, when ``checkpoint.interval_s`` is due;
        5. report (lag, the status line).
        """
        self.status.tick()
        began = time.monotonic()
        if self.units.to_restore:  # 0: partitions assigned, paused until restored
            self._restore_assigned()
        records = self._poll(wait=not self._in_flight)  # 1
        polled = time.monotonic()
        if records:  # 2
            pending = self.decoder.submit(list(map(_value, records)))
            self._in_flight.append((records, pending))
            self._backoff = 0.0
        self._finish_batches(keep_one=bool(records))  # 3
        if not records and self.source.exhausted:
            return False
        processed = time.monotonic()
        due = processed - self._last_checkpoint >= self.config.checkpoint.interval_s
        if due and not self._stop.is_set():  # 4 (stopping: the shutdown checkpoint follows)
            self.checkpoint("interval")
        self._report()  # 5
        self._note_slow(began, polled, processed, len(records))
        return True

    def _note_slow(self, began: float, polled: float, processed: float, n: int) -> None:
        """Say where the time went when one iteration holds events back noticeably."""
        ended = time.monotonic()
        if ended - began < SLOW_ITERATION_S or (
            n == 0 and processed - polled < 0.05 and ended - processed < 0.05
        ):
            return
        log.info(
            "slow loop iteration",
            extra={
                "fields": {
                    "poll_ms": round(1000 * (polled - began)),
                    "process_ms": round(1000 * (processed - polled)),
                    "checkpoint_and_report_ms": round(1000 * (ended - processed)),
                    "events": n,
                }
            },
        )

    def _tick(self) -> None:
        self.status.tick()

    def _poll(self, wait: bool = True) -> list:
        if self._sink_backlogged():
            return []
        try:
            records = self.source.poll(self.max_poll_records, self._tick_s if wait else 0.0)
        except SourceError as exc:
            raise FatalError(str(exc)) from exc
        except Exception as exc:  # broker unreachable, metadata errors: all transient
            self.metrics.broker_errors_total.labels(operation="poll").inc()
            self.status.set("connected", False, f"{type(exc).__name__}: {exc}")
            self._sleep_backoff(f"cannot reach the brokers ({type(exc).__name__}: {exc})")
            return []
        records = self._drop_replaced(records)
        connected = bool(records) or self._check_connected()
        if not connected:
            self._sleep_backoff("no connection to the brokers")
        return records

    def _drop_replaced(self, records: list) -> list:
        """Check the assigned topics' ids on every poll (cheap: cached metadata).

        The id may change after the partitions were assigned (the metadata
        is refreshed later), and with no record to read (the old offset is
        the new log's end): a replaced topic is read from its start, and
        records read from it at old positions are dropped, not learnt.
        """
        assigned = self.source.assignment()
        replaced = self._replaced_topics({tp.topic for tp in assigned} | {r.topic for r in records})
        if not replaced:
            return records
        self.source.seek_to_beginning(tp for tp in assigned if tp.topic in replaced)
        return [r for r in records if r.topic not in replaced]

    def _replaced_topics(self, topics: set[str]) -> set[str]:
        """The topics among ``topics`` created anew since their offsets were read."""
        return self.offsets.replaced({topic: self.source.topic_id(topic) for topic in topics})

    def _check_connected(self) -> bool:
        """Refresh the readiness conditions the source knows about; whether it is connected."""
        connected = self.source.connected()
        self.status.set("connected", connected, "no broker connection")
        self.status.set("assigned", bool(self.source.assignment()), "no partitions assigned")
        return connected

    def _sleep_backoff(self, why: str) -> None:
        self._backoff = min(MAX_BACKOFF_S, max(0.5, self._backoff * 2))
        log.warning(
            "%s; retrying in %.1f s (check source.kafka.bootstrap_servers and the broker)",
            why,
            self._backoff,
        )
        self.status.retrying()
        deadline = time.monotonic() + self._backoff
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._tick()
            self._stop.wait(min(self._tick_s, 0.5, max(0.0, deadline - time.monotonic())))

    def _flush(self, timeout_s: float) -> bool:
        """``sink.flush`` in slices, bounded by ``timeout_s``.

        Between slices the loop ticks (liveness, watchdog) and /readyz is kept
        current: a broker that stopped answering shows there, not as a hung loop.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._tick()
            remaining = deadline - time.monotonic()
            if self.sink.flush(max(0.0, min(self._tick_s, remaining))):
                return True
            self._check_connected()
            if remaining <= self._tick_s or not self.sink.pending:
                return False  # timed out, or nothing pending: a record failed for good

    def _sink_backlogged(self) -> bool:
        pending = self.sink.pending
        if pending <= MAX_PENDING_RECORDS:
            return False
        log.warning(
            "%d records wait for the broker's acknowledgement: pausing reads until they "
            "drain (check the sink brokers)",
            pending,
        )
        self._flush(min(5.0, MAX_BACKOFF_S))
        return True

    # -- one batch ----------------------------------------------------------------

    def _finish_batches(self, keep_one: bool = False) -> None:
        """Process the batches in flight, in order; with ``keep_one``, leave the newest
        to its decoder if it is still at work (it overlaps the next poll)."""
        while self._in_flight:
            if keep_one and len(self._in_flight) == 1 and self._in_flight[0][1].elsewhere:
                return
            self._process(*self._in_flight.popleft())

    def _process(self, records: list, pending: Pending) -> None:
        """One batch, in the order the guarantees rest on.

        1. decode (here, or the child's answer); undecodable events become dead letters;
        2. score, flag and learn, in one call (``Detector.process``: each event is
           scored by the model as it was before the batch); a batch the model
           raises on becomes dead letters;
        3. publish the outliers (and scores) to the sink;
        4. move the offsets past the batch: the next checkpoint covers it.
        """
        started = time.perf_counter()
        decoded = pending.result()  # 1
        self._send_dead_letters(records, decoded.errors)
        result = None
        if len(decoded.X):
            try:
                result, seen = self._score(records, decoded)  # 2
            except Exception as exc:  # one batch must not stop the stream (a crash loop)
                self._model_error(records, decoded, exc)
            else:
                self._send_outliers(records, decoded, result, seen)  # 3
                self._send_scores(records, decoded, result, seen)
        self.offsets.advance(next_offsets(records))  # 4
        self._dirty = True
        self._count(records, decoded, result)
        self.metrics.batch_duration_seconds.observe(time.perf_counter() - started)
        if self.on_batch is not None:
            self.on_batch(records, decoded, result)

    def _score(self, records: list, decoded: Any) -> tuple[BatchResult, np.ndarray]:
        """Each unit's rows of the batch through its detector; the results in the batch's
        order, and the events each row's model had seen (n_ok,).

        With ``model.entity.enabled`` each row carries its entity key and input offset.
        """
        ok = decoded.ok_index
        n = len(ok)
        if self.units.is_shared:
            partitions = np.zeros(n, dtype=np.int64)
        else:
            partitions = np.fromiter(map(_partition, records), dtype=np.int64, count=len(records))
            partitions = partitions[ok]
        entity = self.config.model.entity.enabled
        if entity:
            offsets = np.fromiter(map(_offset, records), dtype=np.int64, count=len(records))[ok]
            keys = np.asarray(decoded.keys, dtype=object)
        pieces = []
        seen = np.empty(n, dtype=np.int64)
        for tp, rows in self.units.split(records[0].topic, partitions):
            unit = self._unit(tp)
            if entity:
                unit_keys = keys[rows].tolist()
                if tp is not None:
                    self._check_split(tp.partition, unit_keys)
                result = unit.detector.process(
                    decoded.X[rows], keys=unit_keys, offsets=offsets[rows]
                )
            else:
                result = unit.detector.process(decoded.X[rows])
            unit.dirty = True
            seen[rows] = unit.detector.n_seen
            pieces.append((rows, result))
        return merge_results(pieces, n), seen

    def _unit(self, tp: TopicPartition | None) -> Unit:
        unit = self.units.get(tp)
        if unit is None:  # records of a partition never assigned: not expected
            assert tp is not None
            log.warning("records of %s:%d, which has no model here: starting one", *tp)
            unit = self.units.add(tp, self.units.build())
        return unit

    def _check_split(self, partition: int, keys: list) -> None:
        """Count (and log, a few per minute) entities seen in a second partition here."""
        homes = self._entity_homes
        if len(homes) > ENTITY_HOMES_MAX:
            homes.clear()
        split = []
        for key in set(keys):
            if key is None:
                continue
            home = homes.setdefault(key, partition)
            if home != partition and home >= 0:
                homes[key] = -1  # counted once
                split.append((key, home))
        if not split:
            return
        self.metrics.entities_split_total.inc(len(split))
        now = time.monotonic()
        while self._split_logged and now - self._split_logged[0] > 60.0:
            self._split_logged.popleft()
        for key, home in split:
            if len(self._split_logged) >= SPLIT_LOGS_PER_MINUTE:
                break
            self._split_logged.append(now)
            log.warning(
                "entity %r is in input partitions %d and %d: its events are split between "
                "two models, each seeing part of them; key the producer by the entity "
                "(features.key) so each entity stays in one partition (counted in "
                "streamgmm_entities_split_total; at most %d of these lines a minute)",
                key,
                home,
                partition,
                SPLIT_LOGS_PER_MINUTE,
            )

    def _send_dead_letters(self, records: list, errors: Iterable) -> None:
        errors = list(errors)
        for error in errors:
            record = records[error.index]
            value = encode_dead_letter(
                topic=record.topic, partition=record.partition, offset=record.offset,
                timestamp_ms=record.timestamp, error=error.error, reason=error.reason,
                payload=record.value,
            )  # fmt: skip
            self.sink.send("dead_letter", record.key, value)
        if errors:
            self.metrics.count_dead_letters(error.reason for error in errors)
            self.metrics.events_total.labels(status="invalid").inc(len(errors))

    def _model_error(self, records: list, decoded: Any, exc: Exception) -> None:
        """The model raised on this batch: its events become dead letters, the loop goes on
        (their offsets advance as any batch's do, so a restart does not meet them again)."""
        error = f"the model could not process this event's batch: {type(exc).__name__}: {exc}"
        self._send_dead_letters(
            records, [DecodeError(int(i), MODEL_ERROR, error) for i in decoded.ok_index]
        )
        first = records[decoded.ok_index[0]]
        log.error(
            "the model raised on a batch of %d events (from %s:%d offset %d): %s: %s; they are "
            "sent to the dead letters (reason %s) and the daemon goes on. One event can cause "
            "it: report it with those dead letters (their payloads reproduce it)",
            len(decoded.ok_index),
            first.topic,
            first.partition,
            first.offset,
            type(exc).__name__,
            exc,
            MODEL_ERROR,
            exc_info=exc,
        )

    def _send_outliers(
        self, records: list, decoded: Any, result: BatchResult, seen: np.ndarray
    ) -> None:
        outliers = outlier_records(
            records, decoded, result, self.fields, seen, detected_at=time.time()
        )
        for index, key, value in outliers:
            record = records[index]
            message_key = (
                record.key
                if record.key is not None
                # a lone surrogate (a "\ud800" escape in the event) is no UTF-8: kept escaped
                else (key.encode("utf-8", "backslashreplace") if key is not None else None)
            )
            handle = self.sink.send("outliers", message_key, value)
            if (record.timestamp or 0) > 0:  # -1: the producer set no timestamp
                handle.add_done_callback(partial(self._observe_ack, record.timestamp))

    def _observe_ack(self, timestamp_ms: int, handle: SendHandle) -> None:
        """Runs in the sink's delivery thread: how late the outlier reached the broker."""
        if handle.succeeded():
            delay = time.time() - timestamp_ms / 1000.0
            if delay >= -FUTURE_TOLERANCE_S:  # beyond: counted in _count, not a delay
                self.metrics.outlier_delay_seconds.observe(max(0.0, delay))

    def _send_scores(
        self, records: list, decoded: Any, result: BatchResult, seen: np.ndarray
    ) -> None:
        if "scores" not in self.sink.roles:
            return
        rows = [records[i] for i in decoded.ok_index]
        values = encode_score_records(
            topics=[r.topic for r in rows], partitions=[r.partition for r in rows],
            offsets=[r.offset for r in rows], timestamps_ms=[r.timestamp for r in rows],
            keys=decoded.keys, log_likelihood=result.log_likelihood, score=result.score,
            threshold=result.threshold, outlier=result.is_outlier, component=result.component,
            responsibilities=result.responsibilities, model_events_seen=seen,
        )  # fmt: skip
        for record, value in zip(rows, values, strict=True):
            self.sink.send("scores", record.key, value)

    def _count(self, records: list, decoded: Any, result: BatchResult | None) -> None:
        now = time.time()
        try:
            stamps = np.fromiter(map(_timestamp, records), dtype=np.float64, count=len(records))
        except TypeError:  # a None among them: not known
            stamps = np.array([r.timestamp or 0 for r in records], dtype=np.float64)
        stamps = stamps[stamps > 0]  # 0: none known, -1: the producer set none
        if len(stamps):
            delays = now - stamps / 1000.0
            future = delays < -FUTURE_TOLERANCE_S
            if future.any():
                self._count_future(int(future.sum()), float(-delays.min()))
                delays = delays[~future]
            self.metrics.event_delay_seconds.observe(np.maximum(delays, 0.0))
        if result is None:
            self.status.count(len(records), 0)
            return
        warmup = int(result.is_warmup.sum())
        scored = len(result) - warmup
        outliers = int(result.is_outlier.sum())
        self.metrics.events_total.labels(status="warmup").inc(warmup)
        self.metrics.events_total.labels(status="scored").inc(scored)
        self.metrics.outliers_total.inc(outliers)
        self.status.count(len(records), outliers)
        if scored:
            self.metrics.log_likelihood.observe(result.log_likelihood[~result.is_warmup])
        self._publish_model_metrics(result)

    def _count_future(self, n: int, ahead_s: float) -> None:
        self.metrics.future_timestamps_total.inc(n)
        if not self._warned_future:
            self._warned_future = True  # once: the counter says how often
            log.warning(
                "%d event(s) are timestamped up to %.1f s ahead of this host's clock: a "
                "producer's clock (or this host's) is wrong; check NTP on both. They are "
                "scored, but left out of the delay histograms and counted in "
                "streamgmm_future_timestamps_total (logged once)",
                n,
                ahead_s,
            )

    def _publish_model_metrics(self, result: BatchResult | None) -> None:
        """Threshold and components of the leading unit (the one model, or the partition's
        that has seen the most); reseeds, evictions and entities summed over the units."""
        units = self.units
        detector = self.detector
        if detector.is_warmed_up and math.isfinite(detector.threshold.value):
            self.metrics.threshold.set(detector.threshold.value)
        for unit in units:
            reseeds = unit.detector.model.n_reseeds_
            if reseeds > unit.reseeds:
                self.metrics.component_reseeds_total.inc(reseeds - unit.reseeds)
            unit.reseeds = reseeds
            for reason, n in unit.detector.entities.n_evicted.items():
                if n > unit.evicted.get(reason, 0):
                    self.metrics.entities_evicted_total.labels(reason=reason).inc(
                        n - unit.evicted.get(reason, 0)
                    )
                unit.evicted[reason] = n
        if self.config.model.entity.enabled:
            self.metrics.entities.set(units.entities_held())
            self.metrics.entities_max.set(
                self.config.model.entity.max_entities * max(1, len(units))
            )
        if detector.is_warmed_up:
            self.metrics.set_components(detector.model.weights_)
            if not self._seen_warmup:
                self._seen_warmup = True
                self.status.soon()
                log.info(
                    "warm-up done: scoring starts",
                    extra={
                        "fields": {
                            "components": detector.model.n_components_,
                            "events": detector.n_seen,
                        }
                    },
                )
        self.status.set(
            "warmed_up",
            units.is_warmed_up,
            f"warming up ({detector.n_seen}/{detector.warmup} events)",
        )

    # -- checkpoints and offsets ------------------------------------------------------

    def checkpoint(self, reason: str) -> bool:
        """Make what was read durable, in the order the guarantees rest on; True when all of
        it happened (else it is tried again at the next checkpoint, nothing is lost).

        1. Finish the batches in hand (scored, learnt, their records sent).
        2. Flush the sink: every record sent so far acknowledged.
        3. Write the checkpoint (model, threshold, offsets) atomically; with a state
           topic, each owned unit's changed entities and head, then flush the store
           (:meth:`_write_state`).
        4. Commit its offsets to the group.
        """
        self._finish_batches()  # 1
        self._expire_idle()
        self._last_checkpoint = time.monotonic()
        if not self._flush(FLUSH_TIMEOUT_S):  # 2
            self._report_failures()
            log.warning(
                "not every record was acknowledged within %.0f s: checkpoint and commit "
                "postponed, nothing is lost (the records are retried); check the sink brokers",
                FLUSH_TIMEOUT_S,
            )
            return False
        self._report_failures()
        written = self._write_state() if self.store is not None else self._write_checkpoint()
        if not written:  # 3
            return False
        return self._commit(reason)  # 4

    def _expire_idle(self) -> None:
        """Drop the entities idle longer than ``model.entity.idle_ttl_s`` (their removal is
        written as tombstones by this checkpoint); counted as evictions (idle)."""
        entity = self.config.model.entity
        if not entity.enabled or entity.idle_ttl_s is None:
            return
        now = time.time()
        for unit in self.units:
            if unit.detector.expire_idle(now):
                unit.dirty = True
                self._dirty = True
        self._publish_model_metrics(None)

    def _write_state(self) -> bool:
        """Each owned unit's changed entities and head, with its next offset, to the state
        topic; then flush it. Nothing is written unless this member is sure it is still
        in its group's generation (a member the group evicted would overwrite the state
        of the partitions' new owner); fenced partitions (a commit refused for a lost
        generation) are never written until assigned again."""
        assigned = self.source.assignment()
        owned = [
            (tp, unit)
            for tp, unit in self.units.owned()
            if unit.dirty and tp in assigned and tp not in self.units.fenced
            and tp in self.offsets.positions
        ]  # fmt: skip
        if not owned:
            self._dirty = False
            return True
        if not self.source.group_member():
            log.warning(
                "not sure this member is still in its group: no state written for %s (the "
                "partitions may have a new owner); tried again at the next checkpoint",
                [tp.partition for tp, _ in owned],
            )
            return False
        records = size = 0
        entity = self.config.model.entity.enabled
        try:
            for tp, unit in owned:
                changes, removed = unit.detector.entity_changes() if entity else ({}, [])
                n, b = self.store.write(
                    tp.partition,
                    head=unit.detector.get_state(entities=False),
                    entities=changes,
                    removed=removed,
                    next_offset=self.offsets.positions[tp],
                    entity_offset=unit.detector.pending_offset if entity else None,
                )
                records += n
                size += b
            flushed = self.store.flush(FLUSH_TIMEOUT_S)
        except Exception as exc:
            flushed = False
            log.error("cannot write the state topic: %s: %s", type(exc).__name__, exc)
        if not flushed:
            self.metrics.checkpoint_failures_total.inc()
            log.error(
                "the state topic %s did not acknowledge the state within %.0f s: offsets "
                "are not committed until it does (a restart re-reads from the last state "
                "written); check the brokers",
                self.config.checkpoint.topic,
                FLUSH_TIMEOUT_S,
            )
            return False
        for _, unit in owned:
            if entity:
                unit.detector.mark_entities_saved()
            unit.dirty = False
        self.metrics.state_records_written_total.inc(records)
        self.metrics.state_bytes_written_total.inc(size)
        self.metrics.checkpoint_timestamp_seconds.set(time.time())
        self._dirty = False
        return True

    def _write_checkpoint(self) -> bool:
        """Write the checkpoint when something changed since the last (or it is missing)."""
        path = self.config.checkpoint.path
        if path is not None and (self._dirty or not os.path.exists(path)):
            state = {
                "detector": self.detector.get_state(),
                **self.offsets.to_state(),
                "written_at": time.time(),
                "version": __version__,
            }
            try:
                save_state(path, state, kind=CHECKPOINT_KIND, fingerprint=fingerprint(self.config))
            except OSError as exc:
                self.metrics.checkpoint_failures_total.inc()
                log.error(
                    "cannot write the checkpoint %s: %s; offsets are not committed until it "
                    "can be (a restart would re-read from the last good checkpoint): make "
                    "its directory writable and give it space",
                    path,
                    exc.strerror or exc,
                )
                return False
            self.metrics.checkpoint_timestamp_seconds.set(time.time())
        self._dirty = False
        return True

    def _commit(self, reason: str) -> bool:
        offsets = self.offsets.committable(self.source.assignment())
        if not offsets:
            return True
        if not self.source.connected():
            # a commit would block until its timeout: the checkpoint holds the offsets
            log.info("not connected to the brokers: offsets not committed (%s)", reason)
            return False
        # bounded: a stalled broker must not stall the loop or the watchdog
        timeout = (
            COMMIT_TIMEOUT_S if self._block_s is None else min(COMMIT_TIMEOUT_S, self._block_s)
        )
        try:
            self.source.commit(offsets, timeout_s=timeout)
        except Exception as exc:  # a rebalance in progress, a broker away: retried next time
            self.metrics.broker_errors_total.labels(operation="commit").inc()
            if self.store is not None and generation_lost(exc):
                self.units.fenced |= set(offsets)
                log.warning(
                    "the group's generation of this member is over (%s): no more state is "
                    "written for partitions %s until they are assigned again",
                    type(exc.__cause__ or exc).__name__,
                    sorted(tp.partition for tp in offsets),
                )
            log.warning(
                "could not commit offsets (%s): %s; the checkpoint holds them, the next "
                "checkpoint commits again",
                reason,
                exc,
            )
            return False
        return True

    def _report_failures(self) -> None:
        for failure in self.sink.take_failures():
            self.metrics.broker_errors_total.labels(operation="send").inc()
            log.error(
                "a %s record can never be delivered to %s: %s; it is logged here in full so it "
                "is not lost: %s",
                failure.role,
                failure.destination,
                failure.error,
                failure.value[:4096].decode("utf-8", "replace"),
            )

    # -- rebalances (called by the source inside poll) ------------------------------------

    def _on_revoke(self, partitions: set[TopicPartition]) -> None:
        """1. checkpoint and commit (the revoked partitions included); 2. forget them."""
        log.info(
            "partitions revoked: checkpointing and committing them first",
            extra={"fields": {"partitions": sorted(map(tuple, partitions))}},
        )
        self.checkpoint("revoke")
        if not self.units.is_shared:  # kept for an (eager) rebalance that gives them back
            for tp in partitions:
                unit = self.units.get(tp)
                if unit is not None and tp not in self.units.fenced:
                    self.units.retained[tp] = (unit, self.offsets.positions.get(tp))
            self.units.drop(partitions)
        self.offsets.forget(partitions)

    def _on_lost(self, partitions: set[TopicPartition]) -> None:
        self._finish_batches()  # their offsets are the positions kept
        if not self.units.is_shared:
            # their state is the next owner's: dropped unwritten, with what they learnt
            self.units.drop(partitions)
            for tp in partitions:
                self.units.retained.pop(tp, None)
            self.offsets.forget(partitions)
        # The positions are kept: the model has learnt every event before them, and
        # the group's committed offset may be older (nothing could be committed). A
        # partition that comes back resumes here; one another member moved further
        # is resumed at its commit (the larger of the two wins in _on_assign).
        log.warning(
            "partitions lost to the group (evicted: session timed out, or the brokers "
            "restarted): their next owner reads them from the group's committed offset",
            extra={"fields": {"partitions": sorted(partitions)}},
        )

    def _on_assign(self, partitions: set[TopicPartition]) -> None:
        """1. finish the batches read; 2. drop the offsets of topics created anew; 3. seek
        each partition to the larger of our offset and the group's (replaced topics: to
        their beginning)."""
        self._finish_batches()  # 1: the offsets sought below must include every batch read
        if not self.units.is_shared:
            self._assign_units(partitions)
            return
        committed: dict[TopicPartition, int | None] = {}
        try:
            committed = self.source.committed(partitions)
        except Exception as exc:
            log.warning(
                "cannot read the group's committed offsets (%s): using the checkpoint's", exc
            )
        replaced = self._replaced_topics({tp.topic for tp in partitions})  # 2
        # neither our offsets nor the group's belong to a replaced topic
        targets = self.offsets.resume_at(
            [tp for tp in partitions if tp.topic not in replaced], committed
        )
        if targets:  # 3
            self.source.seek(targets)
        if replaced:
            self.source.seek_to_beginning(tp for tp in partitions if tp.topic in replaced)
        log.info(
            "partitions assigned",
            extra={
                "fields": {
                    "partitions": {
                        f"{tp.topic}:{tp.partition}": targets.get(tp) for tp in partitions
                    }
                }
            },
        )
        self.status.set("assigned", bool(partitions), "no partitions assigned")

    def _assign_units(self, partitions: set[TopicPartition]) -> None:
        """With a state topic: a partition given back unmoved (the group's offset is where
        we left it) keeps its unit; the others are paused, to be restored by the loop
        (:meth:`_restore_assigned`), never here: a long restore inside the rebalance
        would exceed max.poll.interval.ms and loop the group."""
        self.units.fenced -= partitions
        committed: dict[TopicPartition, int | None] = {}
        if self.units.retained:
            try:
                committed = self.source.committed(partitions)
            except Exception as exc:
                log.info("committed offsets unknown in the rebalance (%s): restoring", exc)
        kept: dict[TopicPartition, int] = {}
        for tp in partitions:
            if self.units.get(tp) is not None:
                continue
            unit, position = self.units.retained.pop(tp, (None, None))
            if unit is not None and position is not None and committed.get(tp) == position:
                self.units.units[tp] = unit
                self.offsets.positions[tp] = kept[tp] = position
            else:
                self.units.to_restore.add(tp)
        self.units.retained.clear()  # the others went to other members
        if kept:
            self.source.seek(kept)
        paused = self.units.to_restore & partitions
        if paused:
            self.source.pause(paused)
        log.info(
            "partitions assigned",
            extra={
                "fields": {
                    "kept": sorted(f"{tp.topic}:{tp.partition}" for tp in kept),
                    "to_restore": sorted(f"{tp.topic}:{tp.partition}" for tp in paused),
                }
            },
        )
        self.status.set("assigned", bool(partitions), "no partitions assigned")

    def _restore_assigned(self) -> None:
        """Restore the units of the partitions assigned since the last step, each from its
        state (or fresh), seek it to the larger of the state's offset and the group's,
        and resume it. A transient failure leaves the rest paused for the next step."""
        assigned = self.source.assignment()
        self.units.to_restore &= assigned
        pending = sorted(self.units.to_restore)
        if not pending:
            return
        try:
            self._ensure_state_topic(pending[0].topic)
            committed = self.source.committed(pending)
            for tp in pending:
                self._restore_unit(tp, committed)
                self.status.tick()
        except StateTopicError as exc:
            raise FatalError(f"checkpoint.topic: {exc}") from exc
        except Exception as exc:
            self.metrics.broker_errors_total.labels(operation="poll").inc()
            self._sleep_backoff(
                f"cannot restore the state of partitions {[tp.partition for tp in pending]} "
                f"from {self.config.checkpoint.topic} ({type(exc).__name__}: {exc})"
            )

    def _ensure_state_topic(self, topic: str) -> None:
        if self._topic_ensured:
            return
        partitions = self.source.partition_count(topic)
        if partitions is None:
            raise RuntimeError(f"the partitions of {topic} are not known yet")
        self.store.ensure_topic(partitions)
        self._topic_ensured = True

    def _restore_unit(self, tp: TopicPartition, committed: dict) -> None:
        restored = self.store.restore(tp.partition, RESTORE_TIMEOUT_S)
        if restored.head is not None:
            detector = Detector.from_state(restored.head)
            if self.config.model.entity.enabled and restored.entities:
                detector.load_entities(restored.entities, restored.learn_from)
        else:
            detector = self.units.build()
            if restored.entities:  # the first write of this unit was cut short
                log.warning(
                    "partition %d: %d entity records but no head in %s (the unit's first "
                    "state write was interrupted): they are ignored and the partition is "
                    "learnt again from the group's committed offset",
                    tp.partition,
                    len(restored.entities),
                    self.config.checkpoint.topic,
                )
        self.units.add(tp, detector)
        if restored.next_offset is not None:
            self.offsets.positions[tp] = int(restored.next_offset)
        else:
            self.offsets.positions.pop(tp, None)
        target = self.offsets.resume_at([tp], committed)
        if target:
            self.source.seek(target)
        self.source.resume([tp])
        labels = {"topic": tp.topic, "partition": str(tp.partition)}
        self.metrics.state_restore_seconds.labels(**labels).set(restored.seconds)
        self.metrics.state_restore_bytes.labels(**labels).set(restored.bytes)
        log.info(
            "partition restored",
            extra={
                "fields": {
                    "partition": f"{tp.topic}:{tp.partition}",
                    "seconds": round(restored.seconds, 3),
                    "bytes": restored.bytes,
                    "records": restored.records,
                    "entities": len(restored.entities),
                    "rejected": restored.rejected,
                    "events_seen": detector.n_seen,
                    "state_offset": restored.next_offset,
                    "committed": committed.get(tp),
                    "resume_at": target.get(tp),
                }
            },
        )

    # -- reporting ----------------------------------------------------------------

    def _report(self) -> None:
        now = time.monotonic()
        if self.status.requested:
            self.status.log_line(self.units, self.offsets.positions, now - self._last_checkpoint)
        if now - self._last_lag >= LAG_EVERY_S:
            self._last_lag = now
            try:
                if self._block_s is None:
                    self.metrics.set_lag(self.source.lag())
                else:
                    self.metrics.set_lag(self.source.lag(self._block_s))
            except Exception as exc:
                log.debug("lag unavailable: %s", exc)
        self.status.report(self.units)

    # -- shutdown -----------------------------------------------------------------

    def _shutdown(self) -> None:
        """1. tell the service manager; 2. checkpoint (the batch in hand finished, flush,
        write, commit); 3. close the source (leave the group), the sink, the decoder."""
        self.notifier.stopping()
        clean = self.checkpoint("shutdown")  # waits up to FLUSH_TIMEOUT_S for the sink
        if not clean:
            log.warning(
                "shutting down with records unacknowledged or offsets uncommitted: the "
                "next start re-reads from the last checkpoint, nothing is lost"
            )
        # nothing left to wait for if the sink could not deliver within FLUSH_TIMEOUT_S:
        # the stop must fit in the service manager's timeout (systemd: 60 s)
        self._close(FLUSH_TIMEOUT_S if clean else 1.0)
        log.info(
            "stopped",
            extra={
                "fields": {
                    "events_seen": self.units.n_seen,
                    "outliers": self.units.n_outliers,
                }
            },
        )

    def _close(self, sink_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        closers = [self.source.close, lambda: self.sink.close(sink_timeout_s), self.decoder.close]
        if self.store is not None:
            closers.append(self.store.close)
        for closer in closers:
            try:
                closer()
            except Exception as exc:
                log.warning("while closing: %s", exc)
        if self.server is not None:
            self.server.stop()
