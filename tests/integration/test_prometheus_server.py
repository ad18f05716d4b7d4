"""A real Prometheus server scrapes the real daemon and loads the shipped alert rules.

promtool checks the files; this checks the deployment the operations guide
describes: the prometheus.yml excerpt of its first-deployment steps (a
``streamgmm`` scrape job, ``rule_files`` naming the copy of
config/prometheus/alerts.yml), with the running daemon as the target, passes
``promtool check config`` and runs. Prometheus (Debian package
``prometheus``, installed by ``make system-tools``) listens on a free
loopback port with its storage in the test's directory, scraping and
evaluating every second; the test then asks its HTTP API what it stored and
loaded:

- ``streamgmm_outliers_total`` holds the value the daemon's own /metrics shows;
- the target is up, the ``streamgmm`` rule group is loaded from the shipped
  file with every rule evaluated healthy;
- every query of the Grafana dashboard evaluates without error on the
  stored series (promtool can only check their syntax);
- when the daemon stops, StreamgmmDown goes pending for its instance.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.ops import dashboard as dash
from tests.support.ports import free_port
from tests.support.processes import DaemonProcess
from tests.support.tools import require
from tests.support.waits import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
GUIDE = ROOT / "docs" / "operations.md"


def documented_prometheus_config() -> dict:
    """The prometheus.yml excerpt of the guide's first-deployment steps."""
    guide = GUIDE.read_text()
    section = guide.split("## First deployment in 10 minutes", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "scrape_configs" in b]
    assert len(blocks) == 1, "the first-deployment steps should show one prometheus.yml excerpt"
    return yaml.safe_load(blocks[0])


def deployed_config(directory: Path, target: str) -> Path:
    """The guide's excerpt as a newcomer deploys it, only faster: 1 s scrapes and evaluations.

    The rule file is copied under the name the guide gives it, the target is
    the test's daemon.
    """
    config = documented_prometheus_config()
    (rule_file,) = config["rule_files"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "streamgmm", "the alert rules look for job streamgmm"
    rules_dir = directory / "rules"
    rules_dir.mkdir()
    copy = rules_dir / Path(rule_file).name
    shutil.copyfile(ALERTS, copy)
    config["rule_files"] = [str(copy)]
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    job["scrape_interval"] = "1s"
    (static,) = job["static_configs"]
    static["targets"] = [target]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class PrometheusServer:
    """``prometheus`` on 127.0.0.1:PORT with the given configuration; its log in a file."""

    def __init__(self, binary: str, directory: Path, config_path: Path) -> None:
        self.port = free_port()
        self.log_path = directory / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.port}{path}{query}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:  # 400/422 carry the error as JSON
            return json.load(exc)

    def wait_until(self, predicate, deadline_s: float, what: str):
        # not listening yet, or an answer without the data yet
        return wait_for(
            predicate, deadline_s, what, self, every_s=0.25, ignore=(OSError, ValueError, KeyError)
        )

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/-/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except urllib.error.HTTPError:  # 503 while the TSDB opens
            return False

    def query(self, expr: str) -> dict:
        return self.api("/api/v1/query", query=expr)

    def series(self, expr: str) -> list:
        """The instant vector ``expr`` evaluates to now (an error fails the test)."""
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@pytest.fixture
def prometheus_binary() -> str:
    return require("prometheus", "prometheus")


def test_prometheus_scrapes_the_daemon_and_loads_the_alert_rules(
    tmp_path, events_and_config, prometheus_binary
):
    prepared = events_and_config(seed=11, n=1500, anomalies_at=(700, 800, 900, 1000, 1100))
    port = prepared.port
    prometheus_yml = deployed_config(tmp_path, f"127.0.0.1:{port}")
    promtool = Path(prometheus_binary).with_name("promtool")
    check = subprocess.run(
        [str(promtool), "check", "config", str(prometheus_yml)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    shipped = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert f"SUCCESS: {len(shipped)} rules found" in check.stdout, check.stdout  # read them

    daemon = DaemonProcess(prepared.config, port, tmp_path / "daemon.log")
    prometheus = PrometheusServer(prometheus_binary, tmp_path, prometheus_yml)
    try:
        daemon.wait_until(lambda: daemon.scored() >= prepared.produced, what="every event scored")
        outliers = daemon.metric("streamgmm_outliers_total")
        assert outliers >= len(prepared.injected)

        prometheus.wait_until(prometheus.ready, deadline_s=30, what="prometheus ready")

        def stored() -> list:
            result = prometheus.series("streamgmm_outliers_total")
            return [r for r in result if float(r["value"][1]) == outliers]

        series = prometheus.wait_until(
            stored, deadline_s=30, what=f"streamgmm_outliers_total == {outliers} in prometheus"
        )
        assert daemon.metric("streamgmm_outliers_total") == outliers  # nothing moved meanwhile
        (sample,) = series
        assert sample["metric"] == {
            "__name__": "streamgmm_outliers_total",
            "job": "streamgmm",
            "instance": f"127.0.0.1:{port}",
        }

        targets = prometheus.api("/api/v1/targets")["data"]["activeTargets"]
        assert [(t["labels"]["job"], t["health"]) for t in targets] == [("streamgmm", "up")]

        def rules_evaluated() -> list:
            groups = prometheus.api("/api/v1/rules")["data"]["groups"]
            ours = [g for g in groups if g["name"] == "streamgmm"]
            if ours and all(r["health"] != "unknown" for r in ours[0]["rules"]):
                return ours
            return []

        (group,) = prometheus.wait_until(rules_evaluated, 15, "the alert rules evaluated")
        assert Path(group["file"]).name == "streamgmm-alerts.yml"
        assert [r["name"] for r in group["rules"]] == [r["alert"] for r in shipped]
        unhealthy = [(r["name"], r.get("lastError")) for r in group["rules"] if r["health"] != "ok"]
        assert not unhealthy

        # every dashboard query runs on the real server and finds series: rates need
        # two samples, the lag series comes with the daemon's first lag reading
        three_scrapes = "count_over_time(streamgmm_build_info[1m]) >= 3"
        prometheus.wait_until(lambda: prometheus.series(three_scrapes), 15, "three scrapes")
        lag = "streamgmm_consumer_lag"
        prometheus.wait_until(lambda: prometheus.series(lag), 15, "the consumer lag series")
        # series per partition restored from a state topic: none with this file checkpoint
        restored_only = {"streamgmm_state_restore_seconds", "streamgmm_state_restore_bytes"}
        failing, empty = {}, []
        for title, expr in dash.dashboard_expressions():
            answer = prometheus.query(dash.substitute_variables(expr))
            if answer["status"] != "success" or answer.get("warnings"):
                failing[f"{title}: {expr}"] = answer.get("error") or answer.get("warnings")
            elif not answer["data"]["result"] and not (
                dash.promql_metric_names(expr) <= restored_only
            ):
                empty.append(f"{title}: {expr}")
        assert not failing, failing
        assert not empty, empty

        # StreamgmmDown reads the live `up`: quiet while the daemon is scraped (the
        # absent() branch may be pending from the evaluations before the first
        # scrape, for a moment), pending for its instance once it stops
        def down_alerts() -> list:
            alerts = prometheus.api("/api/v1/alerts")["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "StreamgmmDown"]

        prometheus.wait_until(lambda: not down_alerts(), 10, "StreamgmmDown quiet while up")
        assert daemon.terminate() == 0
        (down,) = prometheus.wait_until(down_alerts, 15, "StreamgmmDown pending after the stop")
        assert down["state"] == "pending"  # for: 3m
        assert down["labels"]["instance"] == f"127.0.0.1:{port}"
        assert down["labels"]["severity"] == "critical"
    finally:
        prometheus.stop()
        if daemon.process.poll() is None:
            daemon.kill()
