"""Measured figures of the reliability and soak runs, the source of docs/reliability.md.

A test calls ``record("broker_pause", fault=..., recovery_s=...)`` with what it
injected and what it measured. The figure is always printed (``pytest -s``
shows it); when the environment variable ``STREAMGMM_FIGURES`` names a
directory (``make soak`` sets it to ``docs/reliability/figures``), it is also
written there as one JSON line of ``<name>.json``. The first figure a test
session writes under a name replaces that file, the next ones are appended,
so one run regenerates the file whole. ``scripts/reliability_report.py``
renders the Markdown report from those files.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

ENV = "STREAMGMM_FIGURES"
_started: set[str] = set()


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
        mode = "a" if name in _started else "w"
        _started.add(name)
        with open(path, mode, encoding="utf-8") as handle:
            handle.write(text + "\n")
    return line
