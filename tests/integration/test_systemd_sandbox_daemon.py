"""The real daemon runs under the systemd unit's system-call filters.

tests/ops/sandbox.py rebuilds, with libseccomp, what systemd/streamgmm.service
imposes with ``SystemCallFilter=``, ``SystemCallErrorNumber=``,
``SystemCallArchitectures=``, ``MemoryDenyWriteExecute=``,
``RestrictAddressFamilies=`` and ``NoNewPrivileges=``, then execs the
command. Here the command is ``python -m streamgmm.cli run -c FILE``
against the test broker, with a notify socket as under ``Type=notify``: it
must report ready, score events, publish the injected anomalies, and exit 0
on SIGTERM, with no error in its log (refused calls fail with EPERM, which a
library may swallow and log rather than die of). The kernel's
/proc/PID/status shows that the filters are really in force.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.ops import sandbox
from tests.support.processes import DaemonProcess
from tests.support.sandboxes import require_seccomp, run_workload, systemd_analyze

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "streamgmm.service"


class SandboxedDaemon(DaemonProcess):
    """``streamgmm run`` exec'd by the sandbox launcher, with a service-like environment."""

    def __init__(self, config_path: Path, port: int, log_path: Path, env: dict) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        argv = [sys.executable, "-m", "streamgmm.cli", "run", "-c", str(config_path)]
        self.process = subprocess.Popen(
            sandbox.sandboxed(argv, unit=UNIT),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8", **env},
            cwd=tempfile.gettempdir(),
        )


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_daemon_scores_and_stops_cleanly_under_the_units_seccomp_filters(
    tmp_path, events_and_config, read_all
):
    require_seccomp()
    prepared = events_and_config(seed=9, n=1200, anomalies_at=(700, 800, 900, 1000))
    notify_dir = tempfile.mkdtemp(prefix="sgmm-", dir="/tmp")  # AF_UNIX paths: 108 bytes
    notify_path = os.path.join(notify_dir, "notify")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(notify_path)
    manager.settimeout(0.2)
    daemon = SandboxedDaemon(
        prepared.config,
        prepared.port,
        tmp_path / "daemon.log",
        {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "30000000"},
    )
    try:
        first, deadline = None, time.monotonic() + 30
        while first is None and daemon.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                first = manager.recv(4096).decode()
        if daemon.process.poll() == sandbox.EX_NO_SECCOMP:
            pytest.skip(daemon.log_tail())
        assert first == "READY=1", daemon.log_tail()

        status = proc_status(daemon.process.pid)
        assert status["Seccomp"].strip() == "2", "no seccomp filter in force"
        # the MemoryDenyWriteExecute, RestrictAddressFamilies and SystemCallFilter filters
        assert int(status.get("Seccomp_filters", "3")) >= 3
        assert status["NoNewPrivs"].strip() == "1"

        daemon.wait_until(lambda: daemon.scored() >= prepared.produced, what="every event scored")
        records = read_all(prepared.topics["outliers"], deadline_s=5)
        outliers = [json.loads(r.value) for r in records]
        found = sorted(r["event"]["id"] for r in outliers if r["event"].get("injected"))
        assert found == [a["id"] for a in prepared.injected], daemon.log_tail()
        code = daemon.terminate()
    finally:
        manager.close()
        os.unlink(notify_path)
        os.rmdir(notify_dir)
        if daemon.process.poll() is None:
            daemon.kill()
    assert code == 0, daemon.log_tail()
    assert (tmp_path / "state" / "model.npz").exists(), "no checkpoint written at shutdown"
    errors = [r for r in daemon.log_records() if r.get("level") in ("error", "critical")]
    assert not errors, errors
    # the backlog came in batches of 500: the decoding process ran under the filters too
    assert any("decoding large batches" in r["message"] for r in daemon.log_records())
    text = daemon.log_path.read_text(errors="replace")
    assert "Operation not permitted" not in text and "Bad system call" not in text, text[-3000:]


def test_runtime_stack_works_under_the_units_seccomp_filters(broker):
    """numpy/scipy/OpenBLAS, river, kafka-python, prometheus-client, sd_notify and
    checkpoints, run under SystemCallFilter=, MemoryDenyWriteExecute= and
    RestrictAddressFamilies= exactly as the unit sets them, against the test broker."""
    systemd_analyze()
    result = run_workload(UNIT, broker.bootstrap)
    report = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0 and "ALL OK" in result.stdout, report
    assert "ok kafka produce/consume" in result.stdout
