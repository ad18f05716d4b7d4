"""streamgmm.state_topic without a broker: reading describe_configs answers, keys, options.

The broker paths (creating, refusing, writing, restoring) are in
tests/integration/test_state_topic.py.
"""

import logging
import struct

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from streamgmm.state_topic import (
    OFFSET_HEADER,
    StateStore,
    StateTopicError,
    _carried,
    _options,
    check_cleanup_policy,
    cleanup_policy,
)


def answer(value=None, topic="state"):
    """A kafka-python 3 describe_configs answer (config_filter="all")."""
    entries = {}
    if value is not None:
        entries["cleanup.policy"] = {"value": value, "read_only": False, "is_sensitive": False}
    return {"topic": {topic: entries}}


@pytest.mark.parametrize(
    ("reply", "policy"),
    [
        (answer("compact"), "compact"),
        (answer("compact,delete"), "compact,delete"),
        (answer("delete"), "delete"),
        (answer(None), None),  # Tansu, a topic created without configs
        (answer("compact", topic="other"), None),
        ({}, None),
        (None, None),
        ([], None),  # an older client's list of responses: unknown, not refused
    ],
)
def test_cleanup_policy_is_read_from_the_answer(reply, policy):
    assert cleanup_policy(reply, "state") == policy


@pytest.mark.parametrize("policy", ["delete", "compact,delete", "delete,compact"])
def test_any_policy_but_compact_is_refused_naming_the_fix(policy):
    with pytest.raises(StateTopicError) as info:
        check_cleanup_policy(policy, "state")
    message = str(info.value)
    assert f"cleanup.policy={policy}" in message
    assert "--add-config cleanup.policy=compact" in message and "checkpoint.topic" in message


def test_an_unreadable_policy_warns_and_goes_on(caplog):
    with caplog.at_level(logging.WARNING, logger="streamgmm.state_topic"):
        check_cleanup_policy(None, "state")
        check_cleanup_policy(" compact ", "state")
    assert len(caplog.records) == 1 and "cannot read the cleanup.policy" in caplog.text


def test_keys_put_the_head_before_every_entity_of_its_partition():
    store = StateStore("127.0.0.1:1", "s", "events")
    assert store.head_key(0) == b"events/0/"
    assert store.entity_key(0, "a/b") == b"events/0/a/b"
    assert store.entity_key(1, "x").startswith(store.head_key(1))
    assert not store.entity_key(10, "x").startswith(store.head_key(1))


def test_an_empty_entity_key_is_refused_before_anything_is_sent():
    store = StateStore("127.0.0.1:1", "s", "events")
    with pytest.raises(ValueError, match="empty key"):
        store.write(0, {"x": 1}, {"": {"n": 1}}, [], next_offset=1)


def test_the_carried_offset_header():
    assert _carried([(OFFSET_HEADER, struct.pack(">q", 123))]) == 123
    assert _carried([("other", b"x"), (OFFSET_HEADER, b"short")]) is None
    assert _carried(None) is None and _carried([]) is None


def test_each_client_takes_only_the_options_it_knows():
    client = {
        "security_protocol": "SSL",
        "session_timeout_ms": 3000,
        "linger_ms": 7,
        "api_version": [2, 6],
    }
    producer = _options(client, KafkaProducer, acks="all")
    assert producer["linger_ms"] == 7 and "session_timeout_ms" not in producer
    assert producer["api_version"] == (2, 6) and producer["acks"] == "all"
    consumer = _options(client, KafkaConsumer)
    assert consumer["session_timeout_ms"] == 3000 and "linger_ms" not in consumer
    admin = _options(client, KafkaAdminClient)
    assert admin["security_protocol"] == "SSL" and "linger_ms" not in admin


def test_a_write_without_a_broker_is_logged_and_the_flush_says_false(caplog):
    from tests.support.ports import free_port

    store = StateStore(
        f"127.0.0.1:{free_port()}",
        "s",
        "events",
        client={"max_block_ms": 300, "bootstrap_timeout_ms": 300},
    )
    try:
        with caplog.at_level(logging.ERROR, logger="streamgmm.state_topic"):
            assert store.write(0, {"x": 1}, {"a": {"n": 1}}, [], next_offset=1) == (0, 0)
            assert store.flush(1) is False
        assert "cannot produce the state of partition 0" in caplog.text
        assert store.flush(1) is True  # nothing written since
    finally:
        store.close()
