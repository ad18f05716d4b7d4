"""kafka-python's internals, read in streamgmm.kafka_internals: where they are missing (another
kafka-python, no consumer yet) each read answers its safe default instead of raising. The reads
themselves are exercised against a real broker in tests/integration/test_kafka_source.py."""

from __future__ import annotations

from streamgmm import kafka_internals as ki


def test_missing_internals_give_the_safe_defaults():
    for consumer in (None, object()):
        assert ki.heartbeat_reset_at(consumer) is None
        assert ki.committed_offsets_fetcher(consumer) is None
        assert ki.topic_id(consumer, "events") is None
        assert ki.broker_connected(consumer) is False
        assert ki.group_alive(consumer, joined_at=None) is True  # assume alive
        assert ki.metadata_refreshed_ms(consumer) is None
        ki.request_metadata_update(consumer)  # no error
