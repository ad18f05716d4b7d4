"""Prometheus metrics and the /metrics, /healthz, /readyz HTTP server.

Every metric lives in the :class:`Metrics` object's own
``CollectorRegistry`` (never the process-global one, so two daemons in one
process, or a test next to a daemon, do not collide). Names carry the
``streamgmm_`` prefix and are spelled once, in :class:`Metrics`; the
Markdown reference is generated from the registry
(:func:`reference_markdown`). A registry the object creates also holds
prometheus-client's process, platform and GC collectors (``process_*``,
``python_info``, ``python_gc_*``: :data:`STANDARD_METRICS`), which the
global registry would otherwise be the only one to have.

Per-event histograms (``log_likelihood``, ``event_delay_seconds``) take a
whole batch at once: :class:`BatchHistogram` bins an array with numpy
instead of calling ``observe`` 2,000 times per poll.

The HTTP server (:class:`MetricsServer`, stdlib ``ThreadingHTTPServer`` in a
daemon thread) serves

* ``/metrics``: the Prometheus text format, or OpenMetrics when the scraper
  asks for it in ``Accept``; gzip when ``Accept-Encoding`` allows it;
* ``/healthz``: 200 while the loop has ticked within the liveness window,
  else 503 (for a liveness probe / systemd watchdog: restart me);
* ``/readyz``: 200 when every readiness condition holds (connected, assigned,
  warmed up), else 503 with a JSON body naming the failing conditions.

Examples
--------
>>> m = Metrics(version="1.2.3")
>>> m.events_total.labels(status="scored").inc(5)
>>> m.log_likelihood.observe([-3.0, -4.5, -250.0])
>>> m.set_components([0.7, 0.3])
>>> text = m.exposition().decode()
>>> 'streamgmm_events_total{status="scored"} 5.0' in text
True
>>> 'streamgmm_log_likelihood_count 3.0' in text, 'streamgmm_model_components 2.0' in text
(True, True)
"""

from __future__ import annotations

import collections
import gzip
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from streamgmm import __version__
from streamgmm.records import DEAD_LETTER_REASONS

__all__ = [
    "BROKER_OPERATIONS",
    "ENTITY_EVICTIONS",
    "PREFIX",
    "READINESS_CONDITIONS",
    "STANDARD_METRICS",
    "BatchHistogram",
    "Health",
    "Metrics",
    "MetricsServer",
    "MetricsServerError",
    "reference_markdown",
    "start_metrics_server",
]

log = logging.getLogger(__name__)

PREFIX = "streamgmm_"

#: Log-likelihood buckets (nats): typical events of a few standardised fields sit
#: between -30 and 0; outliers fall far below.
LOG_LIKELIHOOD_BUCKETS = (
    -1000.0, -500.0, -200.0, -100.0, -75.0, -50.0, -40.0, -30.0, -25.0, -20.0,
    -15.0, -10.0, -7.5, -5.0, -2.5, 0.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
EVENT_DELAY_BUCKETS = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    86400.0,
)  # fmt: skip
# fine below 100 ms: the delay target is a p99 under 100 ms at 5,000 events/s
OUTLIER_DELAY_BUCKETS = (
    0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

#: Values of ``broker_errors_total{operation}``, created at zero so rates exist: a poll
#: that failed, a commit that failed, a record that can never be delivered.
BROKER_OPERATIONS = ("poll", "commit", "send")

#: Values of ``checkpoint_rejected{reason}``: why a checkpoint gave way to a fresh model.
CHECKPOINT_REJECTIONS = ("corrupt", "mismatch")

#: Values of ``entities_evicted_total{reason}``.
ENTITY_EVICTIONS = ("cap", "idle")

#: Readiness conditions, all required for /readyz to answer 200.
READINESS_CONDITIONS = ("connected", "assigned", "warmed_up")

#: prometheus-client's standard collectors in a registry :class:`Metrics` creates, and
#: what they export (``process_*`` on Linux only: read from /proc).
STANDARD_METRICS = (
    ("process", "`process_resident_memory_bytes`, `process_virtual_memory_bytes`, "
     "`process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`, "
     "`process_start_time_seconds` (Linux only: read from /proc; the daemon's own process, "
     "not its decoding child)"),
    ("platform", "`python_info` (labels: implementation, major, minor, patchlevel, version)"),
    ("gc", "`python_gc_objects_collected_total`, `python_gc_objects_uncollectable_total`, "
     "`python_gc_collections_total` (label: generation)"),
)  # fmt: skip


# ---------------------------------------------------------------------------
# a histogram that takes a batch


class BatchHistogram:
    """A Prometheus histogram fed with arrays: one numpy binning per batch.

    Non-finite values (NaN, infinities) are ignored: they would poison the
    ``_sum`` series for good.

    A histogram with a negative bucket bound has no ``_sum``, only its buckets
    and ``_count`` (the OpenMetrics rule): a sum of values that may be negative
    falls, and PromQL's ``rate()`` reads every fall as a counter reset.

    Parameters
    ----------
    name : str
        Full metric name (with prefix, without ``_bucket``).
    documentation : str
        HELP text.
    buckets : sequence of float
        Finite, increasing upper bounds; ``+Inf`` is added.
    registry : CollectorRegistry or None
        Where to register.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ) -> None:
        bounds = np.asarray(buckets, dtype=np.float64)
        if bounds.ndim != 1 or not np.all(np.isfinite(bounds)) or np.any(np.diff(bounds) <= 0):
            raise ValueError("buckets must be finite and strictly increasing")
        self.name = name
        self.documentation = documentation
        self._bounds = bounds
        self._labels = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self.has_sum = bool(bounds[0] >= 0) if bounds.size else True
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, values: Iterable[float] | np.ndarray | float) -> None:
        """Add every finite value of ``values`` (array-like of shape (n,), or a scalar)."""
        array = np.asarray(values, dtype=np.float64).ravel()
        if array.size == 0:
            return
        array = array[np.isfinite(array)]
        index = np.searchsorted(self._bounds, array, side="left")  # first bound >= value
        counts = np.bincount(index, minlength=len(self._counts))
        total = float(array.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def _family(self) -> Metric:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        # built by hand: prometheus-client's HistogramMetricFamily drops _count with _sum
        # when a bucket bound is negative, and log-likelihoods are mostly negative
        family = Metric(self.name, self.documentation, "histogram")
        for label, count in zip(self._labels, cumulative, strict=True):
            family.add_sample(self.name + "_bucket", {"le": label}, float(count))
        family.add_sample(self.name + "_count", {}, float(cumulative[-1]))
        if self.has_sum:
            family.add_sample(self.name + "_sum", {}, total)
        return family

    def collect(self):
        yield self._family()

    def describe(self):
        yield Metric(self.name, self.documentation, "histogram")


# ---------------------------------------------------------------------------
# the metrics


class Metrics:
    """All streamgmm metrics, in their own registry.

    Attributes are the prometheus-client objects (``events_total``,
    ``outliers_total``...); the ``set_*`` / ``count_*`` helpers keep labelled
    gauges free of stale series (a revoked partition, a removed component).

    Parameters
    ----------
    registry : CollectorRegistry or None
        A fresh one by default, with the process, platform and GC collectors
        (:data:`STANDARD_METRICS`); a registry passed in is used as it is
        (the global one has those collectors already).
    version : str
        The ``version`` label of ``streamgmm_build_info``.
    """

    def __init__(self, registry: CollectorRegistry | None = None, version: str = __version__):
        r = self.registry = registry if registry is not None else CollectorRegistry()
        if registry is None:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        p = PREFIX
        self.events_total = Counter(
            p + "events", "Events read, by status: scored, warmup (buffered before the "
            "model is fitted), invalid (sent to the dead letters).", ["status"], registry=r,
        )  # fmt: skip
        self.outliers_total = Counter(p + "outliers", "Events flagged as outliers.", registry=r)
        self.dead_letters_total = Counter(
            p + "dead_letters", "Events sent to the dead-letter sink, by reason label.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.log_likelihood = BatchHistogram(
            p + "log_likelihood", "Log-likelihood of scored events under the model (nats). "
            "Buckets and _count only: no _sum, as the values are mostly negative.",
            LOG_LIKELIHOOD_BUCKETS, r,
        )  # fmt: skip
        self.threshold = Gauge(
            p + "threshold", "Current outlier threshold on the score (-log-likelihood).",
            registry=r,
        )  # fmt: skip
        self.batch_duration_seconds = Histogram(
            p + "batch_duration_seconds", "Time to decode (or wait for the decoding process), "
            "score, publish and learn one poll.",
            buckets=BATCH_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.event_delay_seconds = BatchHistogram(
            p + "event_delay_seconds", "Scoring time minus the event's record timestamp.",
            EVENT_DELAY_BUCKETS, r,
        )  # fmt: skip
        self.future_timestamps_total = Counter(
            p + "future_timestamps", "Events whose record timestamp is more than 1 s ahead "
            "of the daemon's clock (a producer's clock is wrong); left out of the delay "
            "histograms.", registry=r,
        )  # fmt: skip
        self.outlier_delay_seconds = Histogram(
            p + "outlier_delay_seconds", "Time from an outlier's record timestamp to the "
            "broker's acknowledgement of its outlier record.",
            buckets=OUTLIER_DELAY_BUCKETS, registry=r,
        )  # fmt: skip
        self.consumer_lag = Gauge(
            p + "consumer_lag", "Events in the partition not yet read (end offset - position).",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.model_components = Gauge(
            p + "model_components", "Number of mixture components.", registry=r
        )
        self.component_weight = Gauge(
            p + "component_weight", "Mixture weight of each component.", ["component"],
            registry=r,
        )  # fmt: skip
        self.component_reseeds_total = Counter(
            p + "component_reseeds", "Components re-seeded after their weight collapsed.",
            registry=r,
        )  # fmt: skip
        self.checkpoint_timestamp_seconds = Gauge(
            p + "checkpoint_timestamp_seconds", "Unix time of the last successful checkpoint.",
            registry=r,
        )  # fmt: skip
        self.checkpoint_rejected = Gauge(
            p + "checkpoint_rejected", "1 when this process found its checkpoint damaged "
            "(corrupt) or made for another configuration (mismatch) and started a fresh "
            "model, as checkpoint.on_corrupt / on_mismatch: fresh allow.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.checkpoint_failures_total = Counter(
            p + "checkpoint_failures", "Checkpoints that could not be written.", registry=r
        )
        self.decoder_failures_total = Counter(
            p + "decoder_failures", "Times the decoding process died or stopped answering; "
            "its batches were decoded in the main loop.", registry=r,
        )  # fmt: skip
        self.build_info = Gauge(
            p + "build_info", "Always 1; the version label says which streamgmm runs.",
            ["version"], registry=r,
        )  # fmt: skip
        self.producer_rebuilds_total = Counter(
            p + "producer_rebuilds", "Kafka producers replaced after they stopped delivering "
            "(their unacknowledged records are resent).", registry=r,
        )  # fmt: skip
        self.broker_errors_total = Counter(
            p + "broker_errors", "Errors talking to the Kafka brokers, by operation: poll, "
            "commit, send (a record that can never be delivered).",
            ["operation"], registry=r,
        )  # fmt: skip
        self.ready = Gauge(
            p + "ready", "1 when /readyz answers 200 (connected, assigned, warmed up).",
            registry=r,
        )  # fmt: skip
        self.entities = Gauge(
            p + "entities", "Entities whose own model this process holds (model.entity; the "
            "sum over its partitions' units).", registry=r,
        )  # fmt: skip
        self.entities_max = Gauge(
            p + "entities_max", "The most entities this process may hold: "
            "model.entity.max_entities per unit (one unit per assigned partition with "
            "checkpoint.topic, else one).", registry=r,
        )  # fmt: skip
        self.entities_evicted_total = Counter(
            p + "entities_evicted", "Entities dropped, by reason: cap (max_entities reached, "
            "the least active went) or idle (idle_ttl_s passed).", ["reason"], registry=r,
        )  # fmt: skip
        self.entities_split_total = Counter(
            p + "entities_split", "Entities seen in two input partitions of this process: "
            "their events are split between two models; key the producer by the entity.",
            registry=r,
        )  # fmt: skip
        self.state_restore_seconds = Gauge(
            p + "state_restore_seconds", "Duration of the partition's last restore from the "
            "state topic (checkpoint.topic).", ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.state_restore_bytes = Gauge(
            p + "state_restore_bytes", "Bytes read by the partition's last restore from the "
            "state topic.", ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.state_records_written_total = Counter(
            p + "state_records_written", "Records produced to the state topic (entities, "
            "heads and tombstones).", registry=r,
        )  # fmt: skip
        self.state_bytes_written_total = Counter(
            p + "state_bytes_written", "Bytes produced to the state topic.", registry=r
        )

        self.build_info.labels(version=version).set(1)
        for status in ("scored", "warmup", "invalid"):
            self.events_total.labels(status=status)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters_total.labels(reason=reason)
        for operation in BROKER_OPERATIONS:
            self.broker_errors_total.labels(operation=operation)
        for reason in CHECKPOINT_REJECTIONS:
            self.checkpoint_rejected.labels(reason=reason).set(0)
        for reason in ENTITY_EVICTIONS:
            self.entities_evicted_total.labels(reason=reason)
        self._lag_labels: set[tuple[str, str]] = set()
        self._component_labels: set[str] = set()
        self._lock = threading.Lock()

    # -- helpers --------------------------------------------------------------

    def count_dead_letters(self, reasons: Iterable[str]) -> None:
        """Count dead letters by reason label (one ``inc`` per distinct label)."""
        for reason, n in collections.Counter(reasons).items():
            self.dead_letters_total.labels(reason=reason).inc(n)

    def set_lag(self, lags: Mapping[tuple[str, int], int | None]) -> None:
        """Replace the lag series: partitions absent from ``lags`` (revoked) are removed.

        ``None`` values (unknown lag) drop the series instead of exporting a guess.
        """
        with self._lock:
            fresh = {
                (str(topic), str(partition)): value
                for (topic, partition), value in lags.items()
                if value is not None
            }
            for labels in self._lag_labels - set(fresh):
                self.consumer_lag.remove(*labels)
            for labels, value in fresh.items():
                self.consumer_lag.labels(*labels).set(max(0, value))
            self._lag_labels = set(fresh)

    def set_components(self, weights: Sequence[float] | np.ndarray) -> None:
        """Set ``model_components`` and one ``component_weight`` per component."""
        w = np.asarray(weights, dtype=np.float64).ravel()
        with self._lock:
            labels = {str(k) for k in range(len(w))}
            for gone in self._component_labels - labels:
                self.component_weight.remove(gone)
            for k, value in enumerate(w.tolist()):
                self.component_weight.labels(component=str(k)).set(value)
            self._component_labels = labels
            self.model_components.set(len(w))

    def exposition(self, accept: str = "") -> bytes:
        """The registry in the format ``accept`` asks for (plain text by default)."""
        encoder, _ = choose_encoder(accept)
        return encoder(self.registry)


def reference_markdown(metrics: Metrics | None = None) -> str:
    """Every streamgmm metric's name, type, labels and help, as a Markdown table;
    then the standard collectors' metrics (:data:`STANDARD_METRICS`).

    >>> print(reference_markdown().splitlines()[2])
    | metric | type | labels | description |
    """
    metrics = metrics or Metrics()
    lines = ["# streamgmm metrics", "", "| metric | type | labels | description |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    declared = {
        obj._name: tuple(getattr(obj, "_labelnames", ()))
        for obj in vars(metrics).values()
        if hasattr(obj, "_labelnames") and hasattr(obj, "_name")
    }
    for family in metrics.registry.collect():
        if not family.name.startswith(PREFIX):
            continue  # the standard collectors: listed below, as exported on Linux
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = declared.get(family.name, declared.get(name, ()))
        lines.append(
            f"| `{name}` | {family.type} | {', '.join(labels) or '-'} | {family.documentation} |"
        )
    lines += ["", "Also exported, by prometheus-client's standard collectors:", ""]
    lines += [f"- {collector}: {names}" for collector, names in STANDARD_METRICS]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# health


class Health:
    """Liveness (the loop ticks) and readiness (named conditions all true).

    Parameters
    ----------
    liveness_s : float
        /healthz fails when the loop has not ticked for this long. The window
        starts at construction, so a daemon that never reaches its loop fails too.
    conditions : sequence of str
        Readiness conditions, all initially false.
    clock : callable
        Monotonic seconds (for tests).

    >>> h = Health(liveness_s=30)
    >>> h.alive(), h.readiness()[0]
    (True, False)
    >>> for name in READINESS_CONDITIONS:
    ...     h.set(name, True)
    >>> h.readiness()
    (True, {'ready': True, 'failing': [], 'conditions': {'connected': True, 'assigned': True, 'warmed_up': True}})
    """  # noqa: E501

    def __init__(
        self,
        liveness_s: float = 60.0,
        conditions: Sequence[str] = READINESS_CONDITIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if liveness_s <= 0:
            raise ValueError("liveness_s must be > 0")
        self.liveness_s = float(liveness_s)
        self._clock = clock
        self._last_tick = clock()
        self._conditions = dict.fromkeys(conditions, False)
        self._details: dict[str, str] = {}
        self._lock = threading.Lock()

    def tick(self) -> None:
        """The loop is alive: call once per iteration."""
        self._last_tick = self._clock()

    def seconds_since_tick(self) -> float:
        return self._clock() - self._last_tick

    def alive(self) -> bool:
        return self.seconds_since_tick() <= self.liveness_s

    def set(self, condition: str, ok: bool, detail: str | None = None) -> None:
        """Set a readiness condition; ``detail`` (why it fails) appears in /readyz."""
        with self._lock:
            if condition not in self._conditions:
                raise KeyError(f"unknown readiness condition {condition!r}")
            self._conditions[condition] = bool(ok)
            if detail and not ok:
                self._details[condition] = detail
            else:
                self._details.pop(condition, None)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): the body names every failing condition."""
        with self._lock:
            conditions = dict(self._conditions)
            details = dict(self._details)
        failing = [name for name, ok in conditions.items() if not ok]
        body: dict[str, Any] = {"ready": not failing, "failing": failing, "conditions": conditions}
        if details:
            body["details"] = details
        return not failing, body

    @property
    def ready(self) -> bool:
        return self.readiness()[0]


# ---------------------------------------------------------------------------
# HTTP


class MetricsServerError(OSError):
    """The HTTP server cannot listen; the message names the address and what to do."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 32

    def __init__(self, address, handler, family):
        self.address_family = family
        super().__init__(address, handler)


def _make_handler(metrics: Metrics, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"streamgmm/{__version__}"
        protocol_version = "HTTP/1.1"
        timeout = 10  # a stalled client cannot hold a thread forever

        def do_GET(self) -> None:
            self._respond(send_body=True)

        def do_HEAD(self) -> None:
            self._respond(send_body=False)

        def _respond(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    body = encoder(metrics.registry)
                    self._send(200, content_type, body, send_body, compress=True)
                elif path == "/healthz":
                    alive = health.alive()
                    since = health.seconds_since_tick()
                    body = json.dumps(
                        {"alive": alive, "seconds_since_tick": round(since, 3),
                         "liveness_s": health.liveness_s}
                    ).encode()  # fmt: skip
                    self._send(200 if alive else 503, "application/json", body, send_body)
                elif path == "/readyz":
                    ready, payload = health.readiness()
                    body = json.dumps(payload).encode()
                    self._send(200 if ready else 503, "application/json", body, send_body)
                else:
                    body = b"not found; try /metrics, /healthz or /readyz\n"
                    self._send(404, "text/plain; charset=utf-8", body, send_body)
            except Exception:  # never let a scrape kill the thread silently
                log.exception("error serving %s", path)
                self._send(500, "text/plain; charset=utf-8", b"internal error\n", send_body)

        def _send(
            self, status: int, content_type: str, body: bytes, send_body: bool,
            compress: bool = False,
        ) -> None:  # fmt: skip
            headers = {"Content-Type": content_type, "Cache-Control": "no-store"}
            if compress and "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics http: " + format, *args)

    return Handler


class MetricsServer:
    """Serve /metrics, /healthz and /readyz from a daemon thread.

    ``port=0`` binds an ephemeral port (read it back from :attr:`port`); the
    config's "0 disables the server" is :func:`start_metrics_server`'s rule.

    Parameters
    ----------
    metrics : Metrics
    health : Health
    host : str
        Address to listen on (IPv4 or IPv6 literal, or a name).
    port : int
    """

    def __init__(self, metrics: Metrics, health: Health, host: str = "127.0.0.1", port: int = 0):
        self.metrics = metrics
        self.health = health
        self._host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        metrics.ready.set_function(lambda: 1.0 if health.ready else 0.0)

    def start(self) -> MetricsServer:
        """Bind and start serving; raises :class:`MetricsServerError` if it cannot listen."""
        if self._server is not None:
            return self
        try:
            infos = socket.getaddrinfo(
                self._host, self._requested_port, type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )  # fmt: skip
            family, _, _, _, address = infos[0]
            self._server = _Server(address[:2], _make_handler(self.metrics, self.health), family)
        except OSError as exc:
            raise MetricsServerError(
                f"metrics.port: cannot listen on {self._host}:{self._requested_port} "
                f"({exc.strerror or exc}); pick another metrics.host/metrics.port, or set "
                "metrics.port: 0 to disable the metrics server"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="streamgmm-metrics", daemon=True,
        )  # fmt: skip
        self._thread.start()
        log.info("metrics at %s", self.url)
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._server.server_address[0]

    @property
    def url(self) -> str:
        host = self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_metrics_server(config: Any, metrics: Metrics, health: Health) -> MetricsServer | None:
    """Start the server for a ``MetricsConfig``; ``port: 0`` means disabled (``None``)."""
    if config.port == 0:
        log.info("metrics server disabled (metrics.port: 0)")
        return None
    return MetricsServer(metrics, health, config.host, config.port).start()
