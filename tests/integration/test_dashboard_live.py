"""What the Grafana dashboard and the alert rules read exists in a live scrape.

Grafana has no offline validator and a query over a misspelt metric or label
just draws an empty panel, so the dashboard's PromQL (tests/ops/dashboard.py)
and the alert expressions are compared with the /metrics of the real daemon
after it has done everything that creates series: warm-up finished
(component weights), outliers scored, a dead letter sent, a checkpoint
written, partitions assigned (consumer lag). Checked for every expression:

- each metric name it selects is in the scrape (histograms with their
  ``_bucket``, ``_sum`` and ``_count`` series);
- each label it groups by (``by (...)``) is a label of those series;
- each literal label matcher (``status="scored"``) matches a series.

``job`` and ``instance`` come from Prometheus' scrape, and ``up`` is made by
Prometheus itself: test_prometheus_server.py checks those on a real server.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.ops import dashboard as dash
from tests.support.processes import DaemonProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
PROMETHEUS_SERIES = {"up"}  # made by Prometheus, not exported


ALERTS = yaml.safe_load((ROOT / "config" / "prometheus" / "alerts.yml").read_text())["groups"][0][
    "rules"
]


def scrape_series(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets it is exported with."""
    series: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(dict(sample.labels))
    return series


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for label in group.split(",")
        if label.strip()
    }


def literal_matchers(expr: str) -> set[tuple[str, str]]:
    """``label="value"`` equality matchers (regexes and Grafana variables left out)."""
    return {
        (label, value)
        for selector in re.findall(r"\{([^}]*)\}", expr)
        for label, value in re.findall(r'(\w+)\s*=\s*"([^"$]*)"', selector)
    }


def problems(expr: str, series: dict[str, list[dict[str, str]]]) -> list[str]:
    names = dash.promql_metric_names(expr) - PROMETHEUS_SERIES
    found = []
    missing = sorted(names - set(series))
    if missing:
        return [f"metrics not exported: {missing}"]
    label_sets = [labels for name in names for labels in series[name]]
    known_labels = {label for labels in label_sets for label in labels} | SCRAPE_LABELS
    unknown = grouping_labels(expr) - known_labels
    if unknown:
        found.append(f"groups by labels no series has: {sorted(unknown)}")
    for label, value in sorted(literal_matchers(expr)):
        if label in SCRAPE_LABELS:
            continue
        if not any(labels.get(label) == value for labels in label_sets):
            found.append(f'{label}="{value}" matches no series of {sorted(names)}')
    return found


def test_dashboard_and_alerts_read_only_series_a_busy_daemon_exports(tmp_path, events_and_config):
    prepared = events_and_config(
        seed=5, n=1000, anomalies_at=(600, 680, 760, 840), extra=[b"{not json"]
    )
    daemon = DaemonProcess(prepared.config, prepared.port, tmp_path / "daemon.log")
    try:
        daemon.wait_until(lambda: daemon.scored() >= prepared.produced, what="every event counted")
        daemon.wait_until(
            lambda: daemon.metric("streamgmm_checkpoint_timestamp_seconds") > 0,
            what="a checkpoint written",
        )
        daemon.wait_until(
            lambda: "streamgmm_consumer_lag{" in daemon.metrics_text(),
            deadline_s=15,
            what="the consumer lag series (read every 5 s)",
        )
        daemon.wait_until(lambda: daemon.get("/readyz")[0] == 200, what="ready")
        text = daemon.metrics_text()
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log_tail()
    series = scrape_series(text)
    # one series per partition restored from a state topic (checkpoint.topic), which this
    # daemon (a file checkpoint) has not: their labels as a daemon with one exports them
    # (tests/integration/test_scale_out.py scrapes them there)
    for name in ("streamgmm_state_restore_seconds", "streamgmm_state_restore_bytes"):
        series.setdefault(name, [{"topic": prepared.topics["events"], "partition": "0"}])

    # the daemon really did what creates each kind of series
    def value(name: str, **labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.split()[-1])
        raise AssertionError(f"{name}{labels} not in the scrape")

    assert value("streamgmm_events_total", status="warmup") > 0
    assert value("streamgmm_events_total", status="scored") > 0
    assert value("streamgmm_outliers_total") >= len(prepared.injected)
    assert value("streamgmm_dead_letters_total", reason="not_json") == 1
    assert value("streamgmm_ready") == 1
    assert len(series["streamgmm_component_weight"]) == value("streamgmm_model_components") > 0
    lag_series = series["streamgmm_consumer_lag"]
    assert {"topic": prepared.topics["events"], "partition": "0"} in lag_series

    # every name the dashboard reads, histograms complete
    needed = dash.dashboard_metric_names()
    assert needed, "no metric names read from the dashboard"
    assert not needed - set(series), f"the dashboard reads {sorted(needed - set(series))}"
    histograms = {name.removesuffix("_bucket") for name in needed if name.endswith("_bucket")}
    assert histograms
    for base in histograms:
        assert {f"{base}_bucket", f"{base}_count"} <= set(series), base
        # _sum only where the contract has one (not on the log-likelihood's negative buckets)
        has_sum = f"{base}_sum" in dash.DESIGN_METRICS | dash.EXTRA_METRICS
        assert (f"{base}_sum" in series) == has_sum, base

    # every expression: names, grouping labels, literal label values
    typos = 'sum by (stauts) (rate(streamgmm_events_total{status="scord"}[5m]))'
    assert len(problems(typos, series)) == 2, "the checker would miss a misspelt label"
    assert problems("rate(streamgmm_outlier_total[5m])", series)
    report = {}
    for title, expr in dash.dashboard_expressions():
        report |= {f"panel {title!r}: {p}": expr for p in problems(expr, series)}
    for rule in ALERTS:
        report |= {
            f"alert {rule['alert']}: {p}": rule["expr"] for p in problems(rule["expr"], series)
        }
    assert not report, "\n".join(f"{k}\n    {v}" for k, v in report.items())
