"""Shared by every test directory.

- No daemon process outlives the test that started it.
- The ``reliability`` marker (declared in pyproject.toml with the others): the
  fault-injection tests whose figures feed docs/reliability.md. They run in
  ``make test`` (not slow) and again, with the slow ones, in ``make soak``
  (``-m "slow or reliability"``).
"""

from __future__ import annotations

import pytest

from tests.support.processes import kill_leftovers


@pytest.fixture(autouse=True)
def _no_leftover_daemons():
    yield
    kill_leftovers()
