"""State faults: the checkpoint's directory read-only or full, the checkpoint damaged or
written for another configuration. Mostly the real ``streamgmm run`` process.

Write faults are injected under a running daemon and cleared again; they must
be counted (streamgmm_checkpoint_failures_total), explained in the log, leave
the committed offsets where they were, and not stop the daemon. These tests
run as root here, where permission bits do not stop writes, so "read-only"
is made with the immutable attribute (``chattr +i``) when the file system
has it, and in every case by replacing the directory with a regular file;
"disk full" is a small tmpfs filled up (skipped where mounting is not
allowed).

Start-up faults (a damaged or foreign checkpoint) are tested in-process in
tests/unit/test_daemon_restore.py; here one run of the process checks the exit
code (2) of a refused start.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamgmm.config import load_config
from tests.support.checkpoints import truncate, write_checkpoint
from tests.support.events import normal_events
from tests.support.faults import (
    checkpoint_offsets,
    committed_offsets,
    ends_of,
    produce_events,
    read_checkpoint,
)
from tests.support.processes import DaemonProcess, write_config
from tests.support.waits import wait_for

from ..figures import record

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


# ---------------------------------------------------------------------------
# write faults under a running daemon


def _run(*command: str) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "512k"):
    """Mount a tmpfs on ``directory``; yields False where mounting is not allowed."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = (
        sys.platform.startswith("linux")
        and shutil.which("mount") is not None
        and _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory))
    )
    try:
        yield mounted
    finally:
        if mounted:
            for _ in range(20):
                if _run("umount", str(directory)):
                    break
                time.sleep(0.25)


class Immutable:
    """``chattr +i`` on the directory: nothing can be created or renamed in it, even by root."""

    name = "directory read-only (chattr +i)"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def available(self) -> bool:
        if shutil.which("chattr") is None or not _run("chattr", "+i", str(self.directory)):
            return False
        probe = self.directory / ".probe"
        try:
            probe.write_bytes(b"")
        except OSError:
            return True
        finally:
            _run("chattr", "-i", str(self.directory))
        probe.unlink()  # root wrote through the attribute: not a fault here
        return False

    def inject(self) -> None:
        assert _run("chattr", "+i", str(self.directory))

    def clear(self) -> None:
        assert _run("chattr", "-i", str(self.directory))


class NotADirectory:
    """The checkpoint's directory moved away and a regular file put in its place."""

    name = "directory replaced by a file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.away = directory.with_name(directory.name + ".away")

    def available(self) -> bool:
        return True

    def inject(self) -> None:
        self.directory.rename(self.away)
        self.directory.write_bytes(b"")

    def clear(self) -> None:
        self.directory.unlink()
        self.away.rename(self.directory)


class DiskFull:
    """The tmpfs holding the checkpoint filled up to the last byte."""

    name = "disk full (tmpfs)"

    def __init__(self, directory: Path, mounted: bool) -> None:
        self.directory = directory
        self.mounted = mounted
        self.filler = directory / "filler"

    def available(self) -> bool:
        return self.mounted

    def inject(self) -> None:
        with open(self.filler, "wb", buffering=0) as handle:
            for size in (65536, 4096, 1):  # down to the last byte
                with contextlib.suppress(OSError):
                    while True:
                        handle.write(b"\0" * size)
        probe = self.directory / ".probe"
        with pytest.raises(OSError) as failed, open(probe, "wb", buffering=0) as handle:
            handle.write(b"\0" * 4096)
        probe.unlink(missing_ok=True)
        assert failed.value.errno == errno.ENOSPC, failed.value

    def clear(self) -> None:
        self.filler.unlink()


def test_checkpoint_write_faults_are_counted_explained_and_cleared(tmp_path, broker, unique):
    topics = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    broker.create_topics([topics["events"]], partitions=2)
    broker.create_topics([topics["outliers"], topics["dead"]], partitions=1)
    group = unique("g")
    state = tmp_path / "state"  # a small tmpfs where allowed; the checkpoint in state/ckpt
    with small_tmpfs(state) as mounted:
        checkpoint = state / "ckpt" / "model.npz"
        checkpoint.parent.mkdir()
        config, port = write_config(
            tmp_path, broker.bootstrap, topics, group, checkpoint__path=str(checkpoint)
        )
        directory = checkpoint.parent
        faults = [Immutable(directory), NotADirectory(directory), DiskFull(state, mounted)]
        skipped = [f.name for f in faults if not f.available()]
        faults = [f for f in faults if f.name not in skipped]
        daemon = DaemonProcess(config, port, tmp_path / "daemon.log")
        rng = np.random.default_rng(31)
        ends = ends_of(produce_events(broker.bootstrap, topics["events"], normal_events(rng, 800)))
        wait_for(
            lambda: committed_offsets(broker.bootstrap, group, topics["events"], 2) == ends,
            30,
            "the first checkpoint and commit",
            daemon,
        )
        outcomes = []
        for fault in faults:
            failures = daemon.metric("streamgmm_checkpoint_failures_total")
            committed = committed_offsets(broker.bootstrap, group, topics["events"], 2)
            fault.inject()
            try:
                new = normal_events(rng, 300, start_id=10_000 * (len(outcomes) + 1))
                ends = ends_of(produce_events(broker.bootstrap, topics["events"], new), ends)
                wait_for(
                    lambda f=failures: daemon.metric("streamgmm_checkpoint_failures_total") > f,
                    15,
                    f"a checkpoint failure to be counted ({fault.name})",
                    daemon,
                )
                time.sleep(2.5)  # two more checkpoint intervals: still nothing committed
                failed = daemon.metric("streamgmm_checkpoint_failures_total") - failures
                assert committed_offsets(broker.bootstrap, group, topics["events"], 2) == (
                    committed
                ), f"offsets were committed without a checkpoint ({fault.name})"
                assert daemon.process.poll() is None, daemon.log_tail()
                assert daemon.get("/healthz")[0] == 200
            finally:
                fault.clear()
            cleared_at = time.monotonic()
            wait_for(
                lambda e=ends: (
                    checkpoint_offsets(read_checkpoint(checkpoint), topics["events"]) == e
                    and committed_offsets(broker.bootstrap, group, topics["events"], 2) == e
                ),
                20,
                f"checkpoints and commits to resume after clearing ({fault.name})",
                daemon,
            )
            outcomes.append(
                {
                    "fault": fault.name,
                    "checkpoint_failures": failed,
                    "committed_during_fault": False,
                    "resumed_after_clear_s": round(time.monotonic() - cleared_at, 2),
                }
            )
        errors = [r for r in daemon.log_records() if r.get("level") == "error"]
        assert daemon.terminate() == 0, daemon.log_tail()
    advice = "make its directory writable and give it space"
    messages = [e["message"] for e in errors if "cannot write the checkpoint" in e["message"]]
    assert messages and all(advice in m for m in messages), messages[:3]
    expected = {
        "directory read-only (chattr +i)": "Operation not permitted",
        "directory replaced by a file": "Not a directory",
        "disk full (tmpfs)": "No space left on device",
    }
    for outcome in outcomes:
        reason = expected[outcome["fault"]]
        assert any(reason in m for m in messages), f"no log line says {reason!r}"
    assert len(outcomes) >= 2
    record("state_write_faults", faults=outcomes, skipped=skipped, lost=0)


# ---------------------------------------------------------------------------
# a damaged checkpoint at start: the exit code


def config_file(tmp_path: Path, broker, unique, **overrides) -> tuple[Path, int]:
    topics = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    overrides.setdefault("model__n_components", 2)
    return write_config(tmp_path, broker.bootstrap, topics, unique("g"), **overrides)


def run_once(config_path: Path, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    """``streamgmm run`` expected to exit by itself (a refused start)."""
    return subprocess.run(
        [sys.executable, "-m", "streamgmm.cli", "run", "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_refused_checkpoint_exits_2_naming_the_key_and_leaves_the_file(tmp_path, broker, unique):
    """What a service manager sees of a refused start: exit code 2 (a configuration to
    fix, not a crash) and the key on standard error. Every way restore() refuses or gives
    way is tested in-process in tests/unit/test_daemon_restore.py."""
    config, _ = config_file(tmp_path, broker, unique)
    path = write_checkpoint(load_config(config))
    truncate(path)
    before = path.read_bytes()
    done = run_once(config)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "checkpoint.path" in output and str(path) in output, output
    assert "checkpoint.on_corrupt: fresh" in output, output  # the way out
    assert path.read_bytes() == before, "a refused checkpoint must be left as it was"
