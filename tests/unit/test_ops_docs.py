"""docs/operations.md says what the shipped files do: names, numbers and paths agree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ops import dashboard as dash
from tests.ops import sandbox
from tests.support.sandboxes import systemd_analyze

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "operations.md").read_text()
UNIT = ROOT / "systemd" / "streamgmm.service"
REFERENCE_CONFIG = ROOT / "config" / "streamgmm.yaml"


def test_every_alert_has_its_runbook_entry():
    rules = yaml.safe_load((ROOT / "config" / "prometheus" / "alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        severity = rule["labels"]["severity"]
        assert f"**{rule['alert']}** ({severity})" in DOC, rule["alert"]


def test_repository_paths_named_in_the_guide_exist():
    paths = set(re.findall(r"`((?:config|systemd|tests|docs)/[\w./-]+)`", DOC))
    paths |= {"config/grafana/streamgmm.json", "systemd/streamgmm.service"}
    missing = [p for p in paths if not (ROOT / p).exists() and p != "config/streamgmm.yaml"]
    assert not missing


def test_metric_names_in_the_guide_are_exported():
    names = set(re.findall(r"\bstreamgmm_[a-z_]+[a-z]", DOC))
    assert not names - dash.DESIGN_METRICS - dash.EXTRA_METRICS


@pytest.mark.parametrize(
    "key, quoted",
    [
        ("WatchdogSec", "`WatchdogSec=30`"),
        ("RestartSec", "`RestartSec=5s`"),
        ("TimeoutStopSec", "`TimeoutStopSec=60s`"),
        ("TimeoutStartSec", "times out after 90 s"),
    ],
)
def test_unit_settings_quoted_in_the_guide(key, quoted):
    value = sandbox.unit_values(UNIT, key)[-1]
    assert value.rstrip("s") in quoted and quoted in DOC


def test_start_limit_in_the_guide():
    unit = dict(sandbox.read_unit(UNIT, "Unit"))
    assert (unit["StartLimitBurst"], unit["StartLimitIntervalSec"]) == ("5", "10min")
    assert "five failed starts within 10 minutes" in DOC


def test_exposure_score_in_the_guide_is_the_measured_one(tmp_path):
    tool = systemd_analyze()
    out = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    measured = re.search(r"Overall exposure level for streamgmm\.service: ([\d.]+)", out).group(1)
    assert f"`systemd-analyze security streamgmm` rates it {measured}" in DOC


def test_container_variables_in_the_guide_are_the_image_ones():
    container = (ROOT / "config" / "container.yaml").read_text()
    documented = set(re.findall(r"`((?:KAFKA|STREAMGMM)_[A-Z_]+)`", DOC))
    used = set(re.findall(r"\$\{((?:KAFKA|STREAMGMM)_[A-Z_]+)", container))
    assert used - {"STREAMGMM_METRICS_HOST", "STREAMGMM_METRICS_PORT"} <= documented
    assert "STREAMGMM_METRICS_HOST=0.0.0.0" in DOC
    assert "10001:10001" in DOC and "USER 10001:10001" in (ROOT / "Dockerfile").read_text()


def test_config_keys_in_the_guide_exist_in_the_reference_config():
    if not REFERENCE_CONFIG.exists():
        pytest.skip("config/streamgmm.yaml (the annotated reference) is not in this tree yet")
    reference = yaml.safe_load(REFERENCE_CONFIG.read_text())
    sections = "source|features|model|threshold|sink|checkpoint|metrics|log"
    keys = set(re.findall(rf"`((?:{sections})\.[a-z_.]+[a-z_])`", DOC))
    assert keys
    for key in sorted(keys):
        node = reference
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} is not a configuration key"
            node = node[part]


def test_sections_the_shipped_files_point_to_exist():
    headings = [line.lstrip("#").strip().lower() for line in DOC.splitlines() if line[:1] == "#"]
    shipped = [
        ROOT / "config" / "prometheus" / "alerts.yml",
        ROOT / "config" / "container.yaml",
        ROOT / "config" / "grafana" / "streamgmm.json",
        ROOT / "systemd" / "streamgmm.service",
        ROOT / "Dockerfile",
    ]
    pointers = []
    for path in shipped:
        text = " ".join(path.read_text().split())  # folded YAML and comments rejoined
        pointers += re.findall(r'"([^"]+)" in docs/operations\.md', text)
        pointers += re.findall(r'docs/operations\.md, "([^"]+)"', text)
    assert pointers
    for name in pointers:
        assert any(name.lower() in heading for heading in headings), f'no section "{name}"'


def test_command_table_matches_the_cli():
    from streamgmm.cli import build_parser

    commands = {
        name: parser
        for action in build_parser()._subparsers._group_actions
        for name, parser in action.choices.items()
    }
    rows = [line for line in DOC.splitlines() if line.startswith("| `streamgmm ")]
    documented = {re.match(r"\| `streamgmm ([\w-]+)", row).group(1): row for row in rows}
    assert set(documented) == set(commands)
    for name, row in documented.items():
        options = {o for a in commands[name]._actions for o in a.option_strings}
        mentioned = set(re.findall(r"`[^`]*?((?<![\w-])--?[a-z][\w-]*)", row))
        assert mentioned <= options, (name, mentioned - options)


def test_alert_count_in_the_first_deployment_steps():
    rules = yaml.safe_load((ROOT / "config" / "prometheus" / "alerts.yml").read_text())
    words = {6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}
    assert f"the {words[len(rules['groups'][0]['rules'])]} Streamgmm alerts" in DOC
