"""config/prometheus/alerts.yml: valid, unit-tested with promtool, actionable."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ops import dashboard as dash
from tests.support.promtool import promtool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "ops" / "alerts_test.yml"
ALERTS = [
    r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
]
EXPECTED = [
    "StreamgmmDown",
    "StreamgmmNoEvents",
    "StreamgmmOutlierRateSpike",
    "StreamgmmConsumerLagGrowing",
    "StreamgmmCheckpointsFailing",
    "StreamgmmDeadLettersRising",
    "StreamgmmNotReady",
    "StreamgmmProducerRebuilds",
    "StreamgmmOutliersLate",
    "StreamgmmStateRestoreSlow",
    "StreamgmmEntitiesNearCap",
]


def test_promtool_check_rules_with_all_lints():
    result = subprocess.run(
        [promtool(), "check", "rules", "--lint=all", "--lint-fatal", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    # rule_files in the test file are relative to it: run from its directory
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_operator_alerts_exist():
    assert [a["alert"] for a in ALERTS] == EXPECTED


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a["alert"])
def test_alert_is_actionable(alert):
    assert alert["labels"]["severity"] in {"critical", "warning"}
    annotations = alert["annotations"]
    assert set(annotations) >= {"summary", "description"}
    assert "\n" not in annotations["summary"].strip()
    assert len(annotations["description"].split()) >= 40, "the description is the runbook"


@pytest.mark.parametrize("name", EXPECTED)
def test_each_alert_has_firing_and_quiet_cases(name):
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == name
    ]
    assert any(case["exp_alerts"] for case in cases), f"{name} never fires in the tests"
    assert any(not case["exp_alerts"] for case in cases), f"{name} is never shown to stay quiet"


def test_rules_read_only_metrics_the_daemon_exports():
    known = dash.DESIGN_METRICS | dash.EXTRA_METRICS | {"up"}
    for alert in ALERTS:
        unknown = dash.promql_metric_names(alert["expr"]) - known
        assert not unknown, f"{alert['alert']} reads unknown metrics {sorted(unknown)}"
