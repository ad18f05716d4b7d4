"""The systemd unit's sandbox, emulated by tests/ops/sandbox.py: run a workload under it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops import sandbox
from tests.support.tools import require

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = ROOT / "tests" / "ops" / "runtime_workload.py"


def systemd_analyze() -> str:
    """The path of ``systemd-analyze``; skips the calling test when it is not installed."""
    return require("systemd-analyze", "systemd")


def require_seccomp() -> None:
    """Skips the calling test, with the reason, where the unit's filters cannot be emulated."""
    reason = sandbox.available()
    if reason:
        pytest.skip(f"cannot emulate the unit's seccomp filters: {reason}")


def run_workload(unit: Path, *args: str) -> subprocess.CompletedProcess:
    """tests/ops/runtime_workload.py under ``unit``'s seccomp filters (skips without them).

    ``args``: a broker's bootstrap address to also produce and consume through Kafka.
    """
    require_seccomp()
    argv = sandbox.sandboxed([sys.executable, str(WORKLOAD), *args], unit=unit)
    env = {"STREAMGMM_SANDBOX_EXPECT": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    if result.returncode == sandbox.EX_NO_SECCOMP:
        pytest.skip(result.stderr.strip())
    return result
