"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from streamgmm import codec

CODEC_BACKENDS = ["stdlib"] + (["orjson"] if codec._orjson is not None else [])


@pytest.fixture(params=CODEC_BACKENDS)
def codec_backend(request, monkeypatch):
    """Run the test with each fast-path JSON parser: results must not depend on it.

    Modules that want it for every test: ``pytestmark = pytest.mark.usefixtures(...)``.
    """
    if request.param == "stdlib":
        monkeypatch.setattr(codec, "_fast_loads", codec._stdlib_loads)
    return request.param
