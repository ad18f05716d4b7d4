"""Shared by every test directory.

- No daemon process outlives the test that started it.
- The ``reliability`` marker (declared in pyproject.toml with the others): the
  fault-injection tests whose figures feed docs/reliability.md. They run in
  ``make test`` (not slow) and again, with the slow ones, in ``make soak``
  (``-m "slow or reliability"``).
"""

from __future__ import annotations

import signal

import pytest

from tests.support.processes import kill_leftovers


@pytest.fixture(autouse=True)
def _no_leftover_daemons():
    yield
    kill_leftovers()


@pytest.fixture
def restore_signal_handlers():
    """The test may install the daemon's signal handlers: the runner's come back after it."""
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    saved = {s: signal.getsignal(s) for s in signals}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
