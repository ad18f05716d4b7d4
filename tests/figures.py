"""Measured figures of the reliability and soak runs, the source of docs/reliability.md.

A test calls ``record("broker_pause", fault=..., recovery_s=...)`` with what it
injected and what it measured. The figure is always printed (``pytest -s``
shows it); when the environment variable ``STREAMGMM_FIGURES`` names a
directory (``make soak`` sets it to ``docs/reliability/figures``), it is also
written there as one JSON line of ``<name>.json``. A line replaces the
lines of earlier runs with the same name and variant (``variant`` or
``check`` field), so a full run regenerates every file and a partial run
updates only what it measured. ``scripts/reliability_report.py`` renders the
Markdown report from those files.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

ENV = "STREAMGMM_FIGURES"
_written: set[tuple] = set()  # (name, variant) written by this test session


def _variant(line: dict) -> str:
    return str(line.get("variant") or line.get("check") or "")


def _context() -> dict:
    return {
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def record(name: str, **figures) -> dict:
    """Print one figure and, when STREAMGMM_FIGURES is set, append it to <dir>/<name>.json."""
    line = {"figure": name, **figures, **_context()}
    text = json.dumps(line, sort_keys=False, default=float)
    print(f"FIGURE {text}")
    directory = os.environ.get(ENV)
    if directory:
        path = Path(directory) / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        key = (name, _variant(line))
        kept = []
        if key not in _written and path.exists():  # drop this variant's earlier runs
            kept = [
                old
                for old in path.read_text(encoding="utf-8").splitlines()
                if old.strip() and _variant(json.loads(old)) != key[1]
            ]
        elif path.exists():
            kept = [old for old in path.read_text(encoding="utf-8").splitlines() if old.strip()]
        _written.add(key)
        path.write_text("".join(f"{old}\n" for old in [*kept, text]), encoding="utf-8")
    return line
