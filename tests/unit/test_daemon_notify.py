"""The daemon's side of sd_notify, without a broker: a file source, a bound notify socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading

import pytest

from streamgmm.config import parse_config
from streamgmm.daemon import Daemon
from streamgmm.sinks import FileSink
from streamgmm.sources import FileSource


@pytest.fixture
def notify_socket(monkeypatch):
    directory = tempfile.mkdtemp(prefix="sgmm-", dir="/tmp")  # AF_UNIX paths: 108 bytes
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    yield sock
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            return messages


def file_daemon(tmp_path) -> Daemon:
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"a": i % 7, "b": i % 5}) + "\n" for i in range(50)))
    config = parse_config(
        {
            "source": {"kind": "file", "file": {"path": str(events)}},
            "features": {"fields": ["a", "b"]},
            "model": {"warmup": 20},
            "sink": {"kind": "file"},
            "checkpoint": {"path": None},
        },
        env={},
    )
    return Daemon.from_config(
        config,
        source=FileSource(str(events)),
        sink=FileSink(os.devnull, os.devnull),
        serve_metrics=False,
    )


def test_sigterm_handler_only_asks_the_loop_to_stop(
    tmp_path, notify_socket, restore_signal_handlers
):
    # A Python signal handler runs in the main thread between two bytecodes,
    # possibly inside Notifier._send with its (non-reentrant) lock held: a
    # handler that sends STOPPING=1 itself can deadlock the daemon for good.
    daemon = file_daemon(tmp_path)
    daemon.install_signal_handlers()
    handler = signal.getsignal(signal.SIGTERM)
    with daemon.notifier._lock:  # a WATCHDOG=1 being sent when SIGTERM arrives
        thread = threading.Thread(target=handler, args=(signal.SIGTERM, None), daemon=True)
        thread.start()
        thread.join(2)
        assert not thread.is_alive(), "the SIGTERM handler waits for the notify socket's lock"
    assert daemon._stop.is_set()
    assert daemon.run() == 0
    messages = received(notify_socket)
    assert messages[0] == "READY=1"
    assert messages.count("STOPPING=1") == 1, messages
    assert messages.index("STOPPING=1") > 0


def test_the_loop_wakes_up_within_a_quarter_of_the_watchdog_interval(tmp_path, notify_socket):
    daemon = file_daemon(tmp_path)
    assert daemon.notifier.watchdog_interval() == 1.0  # WATCHDOG_USEC / 2
    assert daemon._tick_s <= 0.25 and daemon._block_s == 0.25
    daemon.source.close()
    daemon.sink.close()
