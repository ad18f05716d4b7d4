"""`streamgmm demo` (what `make demo` runs) shows outliers within 30 s and stops cleanly."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def test_demo_shows_injected_outliers_within_30_seconds():
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamgmm.cli", "demo", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    seen: list[str] = []
    try:
        while time.monotonic() - started < 30:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                line = process.stdout.readline()
                seen.append(line)
                if line.startswith("OUTLIER [injected]"):
                    break
        else:
            pytest.fail("no injected outlier within 30 s:\n" + "".join(seen))
        assert "odd:" in seen[-1] and "(expected " in seen[-1]
        first_outlier_s = time.monotonic() - started
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(seen) + rest
    assert "anomalies injected" in rest
    print(f"first injected outlier after {first_outlier_s:.1f} s")
