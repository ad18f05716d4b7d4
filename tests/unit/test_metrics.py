"""Metrics: the contract's names over real HTTP, valid for promtool; health endpoints."""

from __future__ import annotations

import gzip
import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from streamgmm.config import parse_config
from streamgmm.metrics import (
    READINESS_CONDITIONS,
    STANDARD_METRICS,
    BatchHistogram,
    Health,
    Metrics,
    MetricsServer,
    MetricsServerError,
    reference_markdown,
    start_metrics_server,
)
from tests.support.promtool import check_metrics

#: DESIGN.md section 3 "Metrics", plus the documented additions.
CONTRACT = {
    "streamgmm_events_total": "counter",
    "streamgmm_outliers_total": "counter",
    "streamgmm_dead_letters_total": "counter",
    "streamgmm_log_likelihood": "histogram",
    "streamgmm_threshold": "gauge",
    "streamgmm_batch_duration_seconds": "histogram",
    "streamgmm_event_delay_seconds": "histogram",
    "streamgmm_consumer_lag": "gauge",
    "streamgmm_model_components": "gauge",
    "streamgmm_component_weight": "gauge",
    "streamgmm_component_reseeds_total": "counter",
    "streamgmm_checkpoint_timestamp_seconds": "gauge",
    "streamgmm_checkpoint_failures_total": "counter",
    "streamgmm_build_info": "gauge",
    # additions
    "streamgmm_producer_rebuilds_total": "counter",
    "streamgmm_broker_errors_total": "counter",
    "streamgmm_ready": "gauge",
    "streamgmm_outlier_delay_seconds": "histogram",
    "streamgmm_checkpoint_rejected": "gauge",
    "streamgmm_future_timestamps_total": "counter",
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def busy_metrics() -> Metrics:
    """A Metrics object with a value in every series, as after some batches."""
    m = Metrics(version="9.9.9")
    m.events_total.labels(status="scored").inc(1990)
    m.events_total.labels(status="warmup").inc(500)
    m.events_total.labels(status="invalid").inc(10)
    m.outliers_total.inc(3)
    m.count_dead_letters(["not_json", "not_json", "missing_field"])
    m.log_likelihood.observe(np.linspace(-60, 2, 1990))
    m.threshold.set(21.5)
    m.batch_duration_seconds.observe(0.004)
    m.event_delay_seconds.observe(np.full(1990, 0.3))
    m.set_lag({("events", 0): 12, ("events", 1): 0})
    m.set_components([0.6, 0.3, 0.1])
    m.component_reseeds_total.inc()
    m.checkpoint_timestamp_seconds.set(1.7e9)
    m.checkpoint_failures_total.inc(0)
    m.producer_rebuilds_total.inc()
    m.broker_errors_total.labels(operation="poll").inc()
    return m


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def served():
    metrics = busy_metrics()
    clock = FakeClock()
    health = Health(liveness_s=30, clock=clock)
    with MetricsServer(metrics, health, "127.0.0.1", 0) as server:
        yield server, metrics, health, clock


# ---------------------------------------------------------------------------
# /metrics


def test_scrape_over_http_exposes_every_contract_metric(served):
    server, *_ = served
    status, headers, body = get(server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name, kind in CONTRACT.items():
        family_name = name.removesuffix("_total") if kind == "counter" else name
        assert family_name in families, name
        assert families[family_name].type == kind, name
    text = body.decode()
    assert 'streamgmm_build_info{version="9.9.9"} 1.0' in text
    assert 'streamgmm_events_total{status="scored"} 1990.0' in text
    assert 'streamgmm_dead_letters_total{reason="not_json"} 2.0' in text
    assert 'streamgmm_dead_letters_total{reason="oversize"} 0.0' in text  # pre-created
    assert 'streamgmm_consumer_lag{partition="0",topic="events"} 12.0' in text
    assert 'streamgmm_component_weight{component="2"} 0.1' in text
    assert "streamgmm_log_likelihood_count 1990.0" in text
    assert "streamgmm_log_likelihood_sum" not in text


def test_openmetrics_scrape_has_no_log_likelihood_sum(served):
    server, *_ = served
    _, _, body = get(
        server.url + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    text = body.decode()
    assert "streamgmm_log_likelihood_count 1990.0" in text
    assert 'streamgmm_log_likelihood_bucket{le="+Inf"} 1990.0' in text
    assert "streamgmm_log_likelihood_sum" not in text
    assert "streamgmm_event_delay_seconds_sum" in text


def test_scraped_text_passes_promtool_check_metrics(served):
    server, *_ = served
    _, _, body = get(server.url + "/metrics")
    result = check_metrics(body)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.strip() == b"" and result.stderr.strip() == b"", result


def test_openmetrics_is_served_when_asked_for(served):
    server, *_ = served
    status, headers, body = get(
        server.url + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_gzip_when_the_scraper_accepts_it(served):
    server, *_ = served
    status, headers, body = get(server.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b"streamgmm_events_total" in gzip.decompress(body)


def test_unknown_path_is_404(served):
    server, *_ = served
    status, _, body = get(server.url + "/nope")
    assert status == 404 and b"/metrics" in body


def test_head_request_has_no_body(served):
    server, *_ = served
    request = urllib.request.Request(server.url + "/metrics", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert response.read() == b""


# ---------------------------------------------------------------------------
# /healthz and /readyz


def test_healthz_fails_when_the_loop_stops_ticking(served):
    server, _, health, clock = served
    status, _, body = get(server.url + "/healthz")
    assert status == 200 and json.loads(body)["alive"] is True
    clock.now += 31
    status, _, body = get(server.url + "/healthz")
    assert status == 503
    assert json.loads(body) == {"alive": False, "seconds_since_tick": 31.0, "liveness_s": 30.0}
    health.tick()
    assert get(server.url + "/healthz")[0] == 200


def test_readyz_names_the_failing_conditions(served):
    server, _, health, _ = served
    status, headers, body = get(server.url + "/readyz")
    assert status == 503 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["failing"] == ["connected", "assigned", "warmed_up"]
    health.set("connected", True)
    health.set("assigned", False, "waiting for a partition assignment")
    body = json.loads(get(server.url + "/readyz")[2])
    assert body["failing"] == ["assigned", "warmed_up"]
    assert body["details"] == {"assigned": "waiting for a partition assignment"}
    assert b"streamgmm_ready 0.0" in get(server.url + "/metrics")[2]
    for condition in READINESS_CONDITIONS:
        health.set(condition, True)
    status, _, body = get(server.url + "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    assert b"streamgmm_ready 1.0" in get(server.url + "/metrics")[2]


def test_unknown_readiness_condition_is_a_bug():
    with pytest.raises(KeyError):
        Health().set("conected", True)


# ---------------------------------------------------------------------------
# server lifecycle


def test_ephemeral_port_is_read_back_and_released_on_stop():
    server = MetricsServer(Metrics(), Health(), "127.0.0.1", 0).start()
    port = server.port
    assert port > 0 and server.url == f"http://127.0.0.1:{port}"
    assert get(server.url + "/metrics")[0] == 200
    server.stop()
    with pytest.raises(urllib.error.URLError):
        get(f"http://127.0.0.1:{port}/metrics")
    again = MetricsServer(Metrics(), Health(), "127.0.0.1", port).start()  # the port is free
    assert again.port == port
    again.stop()


def test_busy_port_is_a_clear_error():
    with (
        MetricsServer(Metrics(), Health(), "127.0.0.1", 0) as first,
        pytest.raises(MetricsServerError, match=r"metrics.port: cannot listen on 127.0.0.1:"),
    ):
        MetricsServer(Metrics(), Health(), "127.0.0.1", first.port).start()


def test_ipv6_loopback_when_available():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        server = MetricsServer(Metrics(), Health(), "::1", 0).start()
    except MetricsServerError as exc:
        pytest.skip(f"cannot bind ::1 here: {exc}")
    try:
        assert server.url.startswith("http://[::1]:")
        assert get(server.url + "/healthz")[0] == 200
    finally:
        server.stop()


def test_port_zero_in_config_disables_the_server():
    cfg = parse_config({"features": {"fields": ["x"]}, "metrics": {"port": 0}}, env={})
    assert start_metrics_server(cfg.metrics, Metrics(), Health()) is None


def test_default_config_serves_on_loopback():
    cfg = parse_config({"features": {"fields": ["x"]}}, env={})
    assert cfg.metrics.host == "127.0.0.1"


# ---------------------------------------------------------------------------
# helpers keep series honest


def test_revoked_partitions_disappear_from_lag():
    m = Metrics()
    m.set_lag({("events", 0): 5, ("events", 1): 7})
    m.set_lag({("events", 1): 3, ("events", 2): None})
    text = m.exposition().decode()
    assert 'partition="0"' not in text
    assert 'streamgmm_consumer_lag{partition="1",topic="events"} 3.0' in text
    assert 'partition="2"' not in text  # unknown lag: no series rather than a guess


def test_removed_components_disappear():
    m = Metrics()
    m.set_components([0.5, 0.25, 0.25])
    m.set_components([0.9, 0.1])
    text = m.exposition().decode()
    assert 'component="2"' not in text and "streamgmm_model_components 2.0" in text


def test_each_metrics_object_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.outliers_total.inc()
    assert b"streamgmm_outliers_total 0.0" in b.exposition()


def test_batch_histogram_agrees_with_prometheus_histogram():
    values = np.random.default_rng(0).normal(-10, 20, size=5000)
    values[::500] = np.nan
    registry = CollectorRegistry()
    ours = BatchHistogram("ours", "x", (-50.0, -10.0, 0.0, 5.0), registry)
    theirs = Histogram("theirs", "x", buckets=(-50.0, -10.0, 0.0, 5.0), registry=registry)
    ours.observe(values)
    for v in values[np.isfinite(values)]:
        theirs.observe(v)
    samples = {(s.name, s.labels.get("le")): s.value for f in registry.collect() for s in f.samples}
    for le in ("-50.0", "-10.0", "0.0", "5.0", "+Inf"):
        assert samples[("ours_bucket", le)] == samples[("theirs_bucket", le)], le
    assert samples[("ours_count", None)] == 4990
    # negative buckets: no _sum (it would fall, and rate() would read a counter reset)
    assert ("ours_sum", None) not in samples


def test_batch_histogram_of_non_negative_buckets_keeps_its_sum():
    values = np.array([0.5, 2.0, np.nan, 7.0])
    registry = CollectorRegistry()
    BatchHistogram("delay", "x", (1.0, 5.0), registry).observe(values)
    samples = {(s.name, s.labels.get("le")): s.value for f in registry.collect() for s in f.samples}
    assert samples[("delay_sum", None)] == pytest.approx(9.5)
    assert samples[("delay_count", None)] == 3


def test_batch_histogram_refuses_unsorted_buckets():
    with pytest.raises(ValueError):
        BatchHistogram("x", "x", (1.0, 0.5), None)


def test_reference_lists_every_metric():
    text = reference_markdown()
    for name in CONTRACT:
        assert f"`{name}`" in text
    assert "| `streamgmm_consumer_lag` | gauge | topic, partition |" in text


def test_docs_metrics_md_is_the_generated_reference():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
    assert path.read_text() == reference_markdown(), (
        "docs/metrics.md is stale: regenerate it with "
        "python -c 'from streamgmm import metrics; print(metrics.reference_markdown(), end=\"\")'"
        " > docs/metrics.md"
    )


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process_* needs /proc (Linux)")
def test_process_platform_and_gc_collectors_are_in_the_registry():
    text = Metrics().exposition().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    rss = families["process_resident_memory_bytes"].samples[0].value
    assert 1 << 20 < rss < 1 << 40
    assert families["process_cpu_seconds"].type == "counter"
    assert "python_info" in families and "python_gc_collections" in families
    for _, names in STANDARD_METRICS:  # what the reference says is exported
        for name in re.findall(r"`(\w+)`", names):
            assert name.removesuffix("_total") in families, name


def test_a_registry_passed_in_is_used_as_it_is():
    # the global registry has the standard collectors already: adding them twice would raise
    registry = CollectorRegistry()
    assert b"process_" not in Metrics(registry=registry).exposition()
    assert b"streamgmm_events_total" in Metrics().exposition()
