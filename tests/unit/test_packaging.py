"""pyproject.toml: metadata pip and PyPI accept without warnings, and the typing marker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_and_the_backend_reads_it():
    project = PROJECT["project"]
    assert project["license"] == "Apache-2.0"  # a table is deprecated (setuptools >= 77)
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # superseded
    assert PROJECT["build-system"]["requires"][0] == "setuptools>=77"


def test_the_package_is_marked_typed():
    assert (ROOT / "streamgmm" / "py.typed").is_file()
    assert "py.typed" in PROJECT["tool"]["setuptools"]["package-data"]["streamgmm"]
    assert "Typing :: Typed" in PROJECT["project"]["classifiers"]
