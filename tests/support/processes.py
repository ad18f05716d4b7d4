"""The real ``streamgmm run`` process and its config file; talk to it, stop it.

Used by the daemon integration tests: the process is started as a user
would start it (a YAML file, ``python -m streamgmm.cli run -c FILE``), its
/metrics and /readyz are read over HTTP, and it is stopped with real
signals (SIGTERM, SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from .events import FIELDS
from .ports import free_port
from .waits import wait_for


def write_config(
    tmp_path: Path, bootstrap: str, topics: dict[str, str], group: str, **overrides
) -> tuple[Path, int]:
    port = free_port()
    config = {
        "source": {"kind": "kafka", "kafka": {
            "bootstrap_servers": [bootstrap], "topic": topics["events"], "group_id": group,
            "max_poll_records": 500,
            "client": {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500},
        }},
        "features": {"fields": FIELDS, "key": "host"},
        "model": {"warmup": 300, "random_state": 0},
        "sink": {"kind": "kafka", "kafka": {
            "topic": topics["outliers"], "dead_letter_topic": topics["dead"],
            "client": {"linger_ms": 5},
        }},
        "checkpoint": {"path": str(tmp_path / "state" / "model.npz"), "interval_s": 1},
        "metrics": {"host": "127.0.0.1", "port": port},
        "log": {"level": "INFO", "format": "json"},
    }  # fmt: skip
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (tmp_path / "state").mkdir(exist_ok=True)
    path = tmp_path / "streamgmm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGKILL the daemon if the test process dies, so no daemon outlives a run."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_STARTED: list[DaemonProcess] = []


def kill_leftovers() -> list[int]:
    """SIGKILL every daemon a test started and left running (a failed test); their pids.

    A leftover daemon keeps retrying its broker's address: once another test's
    broker gets that port, it joins groups and writes checkpoints there.
    """
    killed = []
    for daemon in _STARTED:
        if daemon.process.poll() is None:
            daemon.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.process.wait(10)
            killed.append(daemon.process.pid)
        daemon._log.close()
    _STARTED.clear()
    return killed


atexit.register(kill_leftovers)


class DaemonProcess:
    """One ``streamgmm run`` process; its log goes to ``log_path``.

    Killed at the end of the test that started it if it still runs
    (tests/conftest.py), and with the test process if that dies.
    """

    def __init__(
        self,
        config_path: Path,
        port: int,
        log_path: Path,
        env: dict | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        launcher = launcher or [sys.executable, "-m", "streamgmm.cli"]
        self.process = subprocess.Popen(
            [*launcher, "run", "-c", str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        _STARTED.append(self)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metrics_text(self) -> str:
        return self.get("/metrics")[1].decode()

    def metric(self, name: str, labels: str = "") -> float:
        prefix = f"{name}{{{labels}}} " if labels else f"{name} "
        for line in self.metrics_text().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return 0.0

    def wait_until(self, predicate, deadline_s: float = 30.0, what: str = "") -> None:
        wait_for(predicate, deadline_s, what or "a condition", self, every_s=0.2)

    def scored(self) -> float:
        return sum(
            self.metric("streamgmm_events_total", f'status="{s}"')
            for s in ("scored", "warmup", "invalid")
        )

    def terminate(self, timeout_s: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> int:
        self.process.kill()
        return self.wait(10)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def log_records(self) -> list[dict]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records
