"""Read the PromQL out of config/grafana/streamgmm.json, and the metric names out of PromQL.

Grafana has no offline validator, so the tests check the dashboard's queries
with the tools that exist: each expression, with Grafana's variables
replaced by plain values, goes into a rules file for ``promtool check
rules``, and each metric name it reads must be one the daemon exports.

- :func:`dashboard_expressions` lists ``(panel title, expr)`` pairs, with
  :func:`substitute_variables` turning them into plain PromQL;
- :func:`promql_metric_names` extracts the metric names of an expression;
- :func:`dashboard_metric_names` is the set the dashboard needs from a
  scrape: an integration test compares it with a live ``/metrics``.

``DESIGN_METRICS`` is the metric contract of DESIGN.md, exposition names
(counters with ``_total``, histograms with ``_bucket``/``_sum``/``_count``);
``EXTRA_METRICS`` the ones streamgmm.metrics exports on top.

Examples
--------
>>> sorted(promql_metric_names(
...     'histogram_quantile(0.99, sum by (le) (rate(streamgmm_batch_duration_seconds_bucket'
...     '{instance=~"$instance"}[$__rate_interval]))) > on (instance) streamgmm_threshold'))
['streamgmm_batch_duration_seconds_bucket', 'streamgmm_threshold']
>>> substitute_variables('rate(x{instance=~"$instance"}[$__rate_interval])')
'rate(x{instance=~".*"}[5m])'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "streamgmm.json"

_COUNTERS = [
    "events",
    "outliers",
    "dead_letters",
    "component_reseeds",
    "checkpoint_failures",
    "producer_rebuilds",
]
_HISTOGRAMS = [
    "log_likelihood",
    "batch_duration_seconds",
    "event_delay_seconds",
]
_GAUGES = [
    "threshold",
    "consumer_lag",
    "model_components",
    "component_weight",
    "checkpoint_timestamp_seconds",
    "build_info",
]
DESIGN_METRICS = frozenset(
    [f"streamgmm_{name}_total" for name in _COUNTERS]
    + [
        f"streamgmm_{name}{suffix}"
        for name in _HISTOGRAMS
        for suffix in ("_bucket", "_sum", "_count")
        # log-likelihoods are mostly negative: that histogram has no _sum (OpenMetrics)
        if (name, suffix) != ("log_likelihood", "_sum")
    ]
    + [f"streamgmm_{name}" for name in _GAUGES]
)
# Exported by streamgmm.metrics beyond DESIGN.md's list (readiness as a gauge, broker
# errors by operation, outlier acknowledgement delay, decoder restarts); the dashboard
# and alerts use them, DESIGN.md should list them.
EXTRA_METRICS = frozenset(
    {
        "streamgmm_ready",
        "streamgmm_broker_errors_total",
        "streamgmm_checkpoint_rejected",
        "streamgmm_decoder_failures_total",
        "streamgmm_future_timestamps_total",
        "streamgmm_entities",
        "streamgmm_entities_max",
        "streamgmm_entities_evicted_total",
        "streamgmm_entities_split_total",
        "streamgmm_state_restore_seconds",
        "streamgmm_state_restore_bytes",
        "streamgmm_state_records_written_total",
        "streamgmm_state_bytes_written_total",
        *(f"streamgmm_outlier_delay_seconds{s}" for s in ("", "_bucket", "_sum", "_count")),
    }
)
# prometheus-client's process collector in the daemon's registry (Linux), read by the
# dashboard's memory and CPU panels
PROCESS_METRICS = frozenset({"process_resident_memory_bytes", "process_cpu_seconds_total"})

# Grafana's variables, replaced by values that keep the expression's meaning
# for a syntax check: ranges by durations, label variables by match-anything.
GRAFANA_VARIABLES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "instance": ".*",
    "job": ".*",
}

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "atan2", "inf", "nan", "start", "end",
}  # fmt: skip


def substitute_variables(expr: str) -> str:
    """Replace ``$var``, ``${var}`` and ``[[var]]`` by the values in ``GRAFANA_VARIABLES``."""

    def value(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        name = name.split(":")[0]  # ${var:format}
        if name not in GRAFANA_VARIABLES:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+(?::\w+)?)\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, keywords or label names)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))  # {__name__="..."}
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        token, call = match.group(1), match.group(2)
        if call or token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names


def _panels(node: dict) -> Iterator[dict]:
    for panel in node.get("panels", []):
        yield panel
        yield from _panels(panel)  # panels inside (collapsed) rows


def dashboard_expressions(path: str | Path = DASHBOARD) -> list[tuple[str, str]]:
    """``(panel title, PromQL expression)`` for every query target, variables untouched."""
    dashboard = json.loads(Path(path).read_text())
    found = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((panel.get("title", "?"), target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            found += [(f"variable {variable['name']}", e) for e in _variable_exprs(query)]
    return found


def _variable_exprs(query: str) -> list[str]:
    """The PromQL inside a query variable: label_values(SELECTOR, label), query_result(EXPR)."""
    match = re.fullmatch(r"\s*(label_values|query_result)\((.*)\)\s*", query, re.S)
    if not match:
        return []
    function, inner = match.groups()
    if function == "query_result":
        return [inner]
    selector, comma, _ = inner.rpartition(",")
    return [selector] if comma else []  # label_values(label) has no selector


def dashboard_metric_names(path: str | Path = DASHBOARD) -> set[str]:
    """Every metric name the dashboard queries, as it appears in ``/metrics``."""
    names: set[str] = set()
    for _, expr in dashboard_expressions(path):
        names |= promql_metric_names(substitute_variables(expr))
    return names
