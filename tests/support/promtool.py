"""Prometheus's ``promtool``: its path, or the test is skipped saying how to install it."""

from __future__ import annotations

import subprocess

from tests.support.tools import require


def promtool() -> str:
    """The path of ``promtool``; skips the calling test when it is not installed."""
    return require("promtool", "prometheus")


def check_metrics(text: str | bytes) -> subprocess.CompletedProcess:
    """``promtool check metrics`` over an exposition text (skips without promtool)."""
    data = text.encode() if isinstance(text, str) else text
    return subprocess.run(
        [promtool(), "check", "metrics"], input=data, capture_output=True, timeout=30
    )
