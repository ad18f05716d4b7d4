"""config/grafana/streamgmm.json: importable, every query valid PromQL over the daemon's metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ops import dashboard as dash
from tests.support.promtool import promtool

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "tests" / "ops"


DASHBOARD = json.loads(dash.DASHBOARD.read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
EXPRESSIONS = dash.dashboard_expressions()
DS_REF = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


# ---------------------------------------------------------------------------
# importable


def test_dashboard_identity_and_schema():
    assert DASHBOARD["uid"] == "streamgmm"
    assert DASHBOARD["title"] == "streamgmm"
    assert 38 <= DASHBOARD["schemaVersion"] <= 41
    assert DASHBOARD["id"] is None, "an exported dashboard carries no database id"


def test_datasource_is_a_variable_every_panel_uses():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    datasource = variables["DS_PROMETHEUS"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for panel in PANELS:
        assert panel["datasource"] == DS_REF, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS_REF, panel["title"]


def test_instance_variable_filters_every_query():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["datasource"] == DS_REF
    assert instance["includeAll"] and instance["multi"] and instance["allValue"] == ".*"
    for title, expr in EXPRESSIONS:
        if title.startswith("variable "):
            continue
        selectors = re.findall(r"\b(?:streamgmm|process|python)_\w+(\{[^}]*\})?", expr)
        assert selectors and all('instance=~"$instance"' in s for s in selectors), (title, expr)


def test_rates_follow_the_scrape_interval():
    for title, expr in EXPRESSIONS:
        for window in re.findall(r"\b(?:rate|increase|irate)\([^\[]*\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", (title, expr)


def test_panels_are_unique_described_and_laid_out_without_overlap():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    for panel in PANELS:
        assert panel.get("description"), f"{panel['title']} has no description"
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


# ---------------------------------------------------------------------------
# the queries


def test_every_expression_is_valid_promql(tmp_path):
    tool = promtool()
    rules = [
        {"record": f"streamgmm_dashboard:query_{i}", "expr": dash.substitute_variables(expr)}
        for i, (_, expr) in enumerate(EXPRESSIONS)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    titles = "\n".join(f"query_{i}: {t}: {e}" for i, (t, e) in enumerate(EXPRESSIONS))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{titles}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_check_rejects_a_broken_expression(tmp_path):
    """The check above is not vacuous: promtool does parse the expressions."""
    tool = promtool()
    path = tmp_path / "broken.yml"
    broken = {"record": "x:y", "expr": "sum by (le) (rate(streamgmm_events_total[5m])"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [broken]}]}))
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode != 0


def test_every_metric_is_one_the_daemon_exports():
    names = dash.dashboard_metric_names()
    unknown = names - dash.DESIGN_METRICS - dash.EXTRA_METRICS - dash.PROCESS_METRICS
    assert not unknown, f"not in DESIGN.md's metric list: {sorted(unknown)}"
    assert names & dash.DESIGN_METRICS == {
        n for n in dash.DESIGN_METRICS if not n.endswith(("_sum", "_count"))
    }, "every metric of the contract has a panel"


@pytest.mark.parametrize(
    "what, pattern",
    [
        ("event rate by status", r"sum by \(status\) \(rate\(streamgmm_events_total"),
        ("outlier rate", r"rate\(streamgmm_outliers_total"),
        ("outlier fraction", r'outliers_total.*\n?/\n?.*events_total\{status="scored"'),
        ("log-lik quantiles", r"histogram_quantile\(0\.\d+, sum by \(le\) \(rate\(\w+_log_lik"),
        ("threshold on the log-likelihood scale", r"^-streamgmm_threshold\{"),
        ("lag per partition", r"sum by \(topic, partition\) \(streamgmm_consumer_lag"),
        ("batch p50", r"histogram_quantile\(0\.5, .*streamgmm_batch_duration_seconds_bucket"),
        ("batch p99", r"histogram_quantile\(0\.99, .*streamgmm_batch_duration_seconds_bucket"),
        ("event delay p99", r"histogram_quantile\(0\.99, .*streamgmm_event_delay_seconds_bucket"),
        ("outlier ack p99", r"histogram_quantile\(0\.99, .*streamgmm_outlier_delay_seconds_bucket"),
        ("component weights", r"^streamgmm_component_weight\{"),
        ("model components", r"^streamgmm_model_components\{"),
        ("re-seeds", r"streamgmm_component_reseeds_total"),
        ("dead letters by reason", r"sum by \(reason\) \(rate\(streamgmm_dead_letters_total"),
        ("checkpoint age", r"time\(\) - streamgmm_checkpoint_timestamp_seconds"),
        ("checkpoint failures", r"streamgmm_checkpoint_failures_total"),
        ("producer rebuilds", r"streamgmm_producer_rebuilds_total"),
        ("readiness", r"streamgmm_ready\{"),
        ("broker errors", r"sum by \(operation\) \(rate\(streamgmm_broker_errors_total"),
        ("memory of streamgmm processes only",
         r"^process_resident_memory_bytes\{.*\} and on \(instance\) streamgmm_build_info\{"),
        ("CPU", r"rate\(process_cpu_seconds_total\{"),
        ("entities held vs the cap", r"streamgmm_entities\{"),
        ("the entity cap", r"streamgmm_entities_max\{"),
        ("evictions by reason", r"sum by \(reason\) \(rate\(streamgmm_entities_evicted_total"),
        ("restore seconds", r"streamgmm_state_restore_seconds\{"),
        ("state records written", r"rate\(streamgmm_state_records_written_total"),
    ],
)  # fmt: skip
def test_dashboard_shows(what, pattern):
    assert any(re.search(pattern, expr, re.S) for _, expr in EXPRESSIONS), what


# ---------------------------------------------------------------------------
# the helpers the integration tests reuse


@pytest.mark.parametrize(
    "expr, names",
    [
        ('rate(streamgmm_events_total{status="scored"}[5m])', {"streamgmm_events_total"}),
        ("sum by (le, i) (rate(a_bucket[1m])) / on (i) group_left b", {"a_bucket", "b"}),
        ("time() - streamgmm_threshold > 0", {"streamgmm_threshold"}),
        ('x offset 10m and bool y unless {__name__="z"}', {"x", "y", "z"}),
        ('count by (version) (streamgmm_build_info{version=~"0.1.*"})', {"streamgmm_build_info"}),
        ("histogram_quantile(0.99, sum without (pod) (rate(h_bucket[5m:1m]))) > 1e3", {"h_bucket"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("-inf < vector(1) or NaN", set()),
    ],
)  # fmt: skip
def test_metric_name_extraction(expr, names):
    assert dash.promql_metric_names(expr) == names


def test_unknown_grafana_variable_is_an_error():
    with pytest.raises(KeyError):
        dash.substitute_variables("rate(x[$__nonsense])")
    assert dash.substitute_variables("${instance} [[job]] $__range") == ".* .* 1h"
