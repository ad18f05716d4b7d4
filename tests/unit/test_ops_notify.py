"""streamgmm.notify against a real unix datagram socket, as systemd would bind it."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest

from streamgmm.notify import Notifier


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manager(tmp_path):
    """A bound datagram socket standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on ``sock``, decoded."""
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(65536).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return messages


def test_lifecycle_messages_arrive_as_single_datagrams(manager):
    sock, path = manager
    notifier = Notifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.watchdog()
    assert notifier.status("1834 events/s, 2 outliers in the last minute")
    assert notifier.stopping()
    assert received(sock) == [
        "READY=1",
        "WATCHDOG=1",
        "STATUS=1834 events/s, 2 outliers in the last minute",
        "STOPPING=1",
    ]
    notifier.close()


def test_abstract_socket_address_with_at_sign(manager):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"streamgmm-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    try:
        with Notifier(environ={"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.ready()
            assert notifier.status("warming up")
        assert received(sock) == ["READY=1", "STATUS=warming up"]
    finally:
        sock.close()


def test_watchdog_pings_every_quarter_so_no_gap_exceeds_half_the_timeout(manager):
    sock, path = manager
    clock = FakeClock()
    notifier = Notifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}, clock=clock)
    assert notifier.watchdog_interval() == 15.0
    sent = []
    for _ in range(100):  # one loop tick every 0.5 s for 50 s
        sent.append(notifier.watchdog())
        clock.now += 0.5
    assert [i for i, s in enumerate(sent) if s] == [0, 15, 30, 45, 60, 75, 90]  # every 7.5 s
    assert received(sock) == ["WATCHDOG=1"] * 7


def test_watchdog_gaps_stay_under_half_the_timeout_with_a_slow_loop(manager):
    sock, path = manager
    clock = FakeClock()
    notifier = Notifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, clock=clock)
    pings = []
    for _ in range(60):  # ticks every 0.5 s (a quarter of WATCHDOG_USEC), as the daemon's loop
        if notifier.watchdog():
            pings.append(clock.now)
            assert received(sock) == ["WATCHDOG=1"]
        clock.now += 0.5
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) <= notifier.watchdog_interval() == 1.0


def test_watchdog_off_without_watchdog_usec(manager):
    sock, path = manager
    notifier = Notifier(environ={"NOTIFY_SOCKET": path})
    assert notifier.watchdog_interval() is None
    assert not notifier.watchdog()
    assert notifier.ready()
    assert received(sock) == ["READY=1"]


@pytest.mark.parametrize("value", ["0", "-5", "soon", ""])
def test_unusable_watchdog_usec_disables_the_watchdog(manager, value):
    _, path = manager
    assert (
        Notifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": value}).watchdog_interval()
        is None
    )


def test_watchdog_meant_for_another_pid_is_ignored(manager):
    sock, path = manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    notifier = Notifier(environ=env)
    assert notifier.watchdog_interval() is None
    assert not notifier.watchdog()
    env["WATCHDOG_PID"] = str(os.getpid())
    assert Notifier(environ=env).watchdog_interval() == 0.5
    assert received(sock) == []


def test_every_method_is_a_no_op_without_notify_socket():
    notifier = Notifier(environ={"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert not any(
        [notifier.ready(), notifier.watchdog(), notifier.stopping(), notifier.status("x")]
    )
    notifier.close()


def test_reads_os_environ_by_default(manager, monkeypatch):
    sock, path = manager
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "8000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier()
    assert notifier.watchdog_interval() == 4.0
    assert notifier.ready()
    assert received(sock) == ["READY=1"]


def test_status_is_kept_on_one_line(manager):
    sock, path = manager
    Notifier(environ={"NOTIFY_SOCKET": path}).status("scored 10\nflagged 2\r\nlag 0")
    assert received(sock) == ["STATUS=scored 10 flagged 2 lag 0"]


def test_raw_assignments_share_one_datagram(manager):
    sock, path = manager
    notifier = Notifier(environ={"NOTIFY_SOCKET": path})
    assert notifier.notify("EXTEND_TIMEOUT_USEC=20000000", "STATUS=loading checkpoint")
    assert received(sock) == ["EXTEND_TIMEOUT_USEC=20000000\nSTATUS=loading checkpoint"]
    with pytest.raises(ValueError):
        notifier.notify("READY")
    with pytest.raises(ValueError):
        notifier.notify("STATUS=a\nREADY=1")


def test_send_error_never_raises_and_is_logged_once(tmp_path, caplog):
    missing = str(tmp_path / "gone.sock")
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": missing, "WATCHDOG_USEC": "2000000"}
    notifier = Notifier(environ=env, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="streamgmm.notify"):
        assert not notifier.ready()
        assert not notifier.status("x")
        assert not notifier.watchdog()
        assert not notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "gone.sock" in warnings[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 3


def test_recovers_when_the_manager_socket_comes_back(tmp_path):
    path = str(tmp_path / "late.sock")
    clock = FakeClock()
    notifier = Notifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, clock=clock)
    assert not notifier.watchdog()  # nobody listening yet
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        # The failed ping is retried on the very next tick, not an interval later.
        assert notifier.watchdog()
        assert notifier.ready()
        assert received(sock) == ["WATCHDOG=1", "READY=1"]
    finally:
        sock.close()


def test_a_full_manager_queue_does_not_block_the_loop_for_long(tmp_path):
    path = str(tmp_path / "slow.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        notifier = Notifier(environ={"NOTIFY_SOCKET": path}, timeout=0.05)
        sent = 0
        while sent < 100_000:  # nobody reads: the receive queue fills up
            started = time.monotonic()
            if not notifier.status("x" * 1000):
                break
            sent += 1
        else:
            pytest.fail("the receive queue never filled up")
        assert sent > 0
        assert time.monotonic() - started < 1.0  # blocked for about the timeout, not forever
    finally:
        sock.close()


def test_sender_credentials_are_the_main_process(manager):
    """NotifyAccess=main: systemd accepts a message only when its SCM_CREDENTIALS pid is
    the service's main pid, so the datagram must come from the daemon process itself."""
    sock, path = manager
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    code = "import sys; from streamgmm.notify import Notifier; sys.exit(not Notifier().ready())"
    env = {**os.environ, "NOTIFY_SOCKET": path}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    assert child.wait(timeout=60) == 0
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    assert data == b"READY=1"
    creds = [
        d
        for level, kind, d in ancillary
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    ]
    pid, uid, gid = struct.unpack("iII", creds[0])
    assert pid == child.pid
    assert (uid, gid) == (os.getuid(), os.getgid())
