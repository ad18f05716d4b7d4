"""Shared by every test directory: no daemon process outlives the test that started it."""

from __future__ import annotations

import pytest

from tests.integration.daemon_process import kill_leftovers


@pytest.fixture(autouse=True)
def _no_leftover_daemons():
    yield
    kill_leftovers()
