"""Debian tools some tests drive: their path, or the test is skipped saying how to get them."""

from __future__ import annotations

import shutil

import pytest


def require(tool: str, package: str) -> str:
    """The path of ``tool``; skips the calling test, naming the Debian ``package``, without it."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(
            f"{tool} is missing and could not be installed "
            f"(`make system-tools` installs Debian's {package} package when run as root)"
        )
    return path
