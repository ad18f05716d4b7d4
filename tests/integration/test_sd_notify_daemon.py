"""The real ``streamgmm run`` process speaks systemd's notify protocol.

The test plays systemd's part: it binds the unix datagram socket that
``$NOTIFY_SOCKET`` names, sets ``$WATCHDOG_USEC`` as ``WatchdogSec=`` would,
starts the real daemon and records every datagram with its arrival time.
Two daemons run side by side: one on the test broker with events to score
(which is then frozen for a few seconds, a broker that stalls mid-run), one
pointed at a closed port (the broker unreachable). Both must send
``READY=1``, keep ``WATCHDOG=1`` coming at least every half of
``WATCHDOG_USEC`` (systemd's advice; it kills the service after a whole
``WATCHDOG_USEC`` of silence), say what they do in ``STATUS=``, and send
``STOPPING=1`` on SIGTERM before exiting 0.
"""

from __future__ import annotations

import itertools
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.events import anomaly, encode, normal_events
from tests.support.ports import free_port
from tests.support.processes import DaemonProcess, write_config

pytestmark = pytest.mark.integration

WATCHDOG_USEC = 2_000_000
MAX_PING_GAP_S = WATCHDOG_USEC / 2e6  # systemd: "every half of WATCHDOG_USEC"
OBSERVE_S = 6.0
STALL_S = 3.0


class NotifyManager:
    """The service manager's end of ``$NOTIFY_SOCKET``: every datagram, timestamped."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes: a short directory, not tmp_path
        self._dir = tempfile.mkdtemp(prefix="sgmm-", dir="/tmp")
        self.path = os.path.join(self._dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for line in data.decode().splitlines():
                self.messages.append((now, line))

    def times(self, message: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == message]

    def statuses(self) -> list[str]:
        messages = [m for _, m in list(self.messages)]
        return [m.removeprefix("STATUS=") for m in messages if m.startswith("STATUS=")]

    def wait_for(self, message: str, deadline_s: float, daemon: DaemonProcess) -> float:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            found = self.times(message)
            if found:
                return found[0]
            if daemon.process.poll() is not None and not self.times(message):
                time.sleep(0.2)  # a datagram sent just before exit may still be in flight
                if not self.times(message):
                    break
            time.sleep(0.05)
        raise AssertionError(
            f"no {message} within {deadline_s} s; received {self.summary()}\n" + daemon.log_tail()
        )

    def summary(self) -> list[str]:
        return sorted({m for _, m in list(self.messages)})

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        Path(self.path).unlink(missing_ok=True)
        os.rmdir(self._dir)


def max_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch between ``start`` and ``end`` with no ping in it."""
    points = [start, *[t for t in times if start <= t <= end], end]
    return max(b - a for a, b in itertools.pairwise(points))


@pytest.fixture
def managers():
    made: list[NotifyManager] = []
    yield lambda: made.append(NotifyManager()) or made[-1]
    for manager in made:
        manager.close()


def test_daemon_honours_the_notify_protocol_with_and_without_a_broker(
    tmp_path, broker, unique, produce, managers
):
    topics = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    broker.create_topics([topics["events"], topics["outliers"], topics["dead"]], partitions=1)
    events = normal_events(np.random.default_rng(7), 1200)
    events[900:900] = [anomaly(50_000 + i) for i in range(3)]
    produce(topics["events"], encode(events))

    live_dir, dead_dir = tmp_path / "live", tmp_path / "unreachable"
    live_dir.mkdir()
    dead_dir.mkdir()
    live_config, live_port = write_config(live_dir, broker.bootstrap, topics, unique("g"))
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    dead_config, dead_port = write_config(dead_dir, closed, topics, unique("g"))
    live_manager, dead_manager = managers(), managers()

    def start(config, port, directory, manager):
        env = {"NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        return DaemonProcess(config, port, directory / "daemon.log", env=env)

    live = start(live_config, live_port, live_dir, live_manager)
    dead = start(dead_config, dead_port, dead_dir, dead_manager)
    try:
        live_ready = live_manager.wait_for("READY=1", 30, live)
        dead_ready = dead_manager.wait_for("READY=1", 30, dead)
        live.wait_until(lambda: live.scored() >= len(events), what="every event scored")
        live.wait_until(lambda: live.metric("streamgmm_outliers_total") >= 3, what="outliers")
        # the unreachable one is alive and says so, but not ready
        dead.wait_until(lambda: dead.get("/healthz")[0] == 200, what="/healthz of the unreachable")
        assert dead.get("/readyz")[0] == 503
        time.sleep(max(0.0, OBSERVE_S - (time.monotonic() - dead_ready)))
        # a broker that stalls mid-run (SIGSTOP: connections open, no answers) while
        # the live daemon checkpoints and commits every second
        commits_failed = live.metric("streamgmm_broker_errors_total", 'operation="commit"')
        with broker.paused():
            time.sleep(STALL_S)
        live.wait_until(
            lambda: (
                live.metric("streamgmm_broker_errors_total", 'operation="commit"') > commits_failed
            ),
            deadline_s=5,
            what="a commit that timed out during the stall",
        )

        for name, daemon, manager, ready in (
            ("live", live, live_manager, live_ready),
            ("unreachable", dead, dead_manager, dead_ready),
        ):
            daemon.process.send_signal(15)  # SIGTERM
            code = daemon.wait(30)
            exited = time.monotonic()
            assert code == 0, f"{name}: exit {code}\n" + daemon.log_tail()
            stopping = manager.wait_for("STOPPING=1", 2, daemon)
            assert ready < stopping < exited
            assert manager.times("READY=1") == [ready], f"{name}: READY=1 sent more than once"

            pings = manager.times("WATCHDOG=1")
            assert len(pings) >= (stopping - ready) / MAX_PING_GAP_S - 1, (name, len(pings))
            gap = max_gap(pings, ready, stopping)

            assert gap <= MAX_PING_GAP_S, (
                f"{name}: {gap:.2f} s without WATCHDOG=1 (WATCHDOG_USEC/2 = {MAX_PING_GAP_S} s)\n"
                + daemon.log_tail()
            )

        live_status = live_manager.statuses()
        assert any("warming up" in s for s in live_status) or any(
            "events/s" in s for s in live_status
        ), live_status
        assert any("events/s" in s and "outliers" in s for s in live_status), live_status
        dead_status = dead_manager.statuses()
        assert any("broker unreachable" in s for s in dead_status), dead_status
    finally:
        for daemon in (live, dead):
            if daemon.process.poll() is None:
                daemon.kill()
