"""The few reads of kafka-python's private internals that :class:`streamgmm.sources.KafkaSource`
needs, in one place.

kafka-python has no public call for what these answer (is this member still
in its group, the cluster's id of a topic, when the metadata was last
refreshed). Each function says why it is needed and answers a safe default
when the internals are not where they were (another kafka-python), so an
upgrade degrades a check, never the loop. All were checked against
kafka-python 3.0.12; on an upgrade, run tests/integration/test_kafka_source.py
and tests/integration/test_reliability_state.py.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = [
    "broker_connected",
    "committed_offsets_fetcher",
    "generation_lost",
    "generation_reset",
    "group_alive",
    "heartbeat_reset_at",
    "metadata_refreshed_ms",
    "request_metadata_update",
    "topic_id",
]

#: The kafka-python version these reads were checked against.
CHECKED_AGAINST = "3.0.12"


def _heartbeat(consumer: Any) -> Any:
    return getattr(getattr(consumer, "_coordinator", None), "heartbeat", None)


def heartbeat_reset_at(consumer: Any) -> float | None:
    """When the group heartbeat clock was last reset (``_coordinator.heartbeat.last_reset``).

    Read right after a join completes: a reset that is our own join confirms
    membership (see :func:`group_alive`). None when unknown. Checked against
    kafka-python 3.0.12.
    """
    return getattr(_heartbeat(consumer), "last_reset", None)


def committed_offsets_fetcher(consumer: Any) -> Any:
    """The coordinator's ``fetch_committed_offsets_async`` (``_coordinator``), or None.

    Inside the async rebalance listener the public ``committed()`` would block
    the IO thread that must answer it; this coroutine fetches the offsets of
    the partitions being assigned before the daemon's hook runs. Checked
    against kafka-python 3.0.12.
    """
    return getattr(getattr(consumer, "_coordinator", None), "fetch_committed_offsets_async", None)


def topic_id(consumer: Any, topic: str) -> str | None:
    """The cluster's id of ``topic`` from the consumer's metadata (``_client.cluster``).

    No network, safe in a rebalance callback; a topic created anew has a new
    id, which is how the daemon knows its old offsets mean nothing. None when
    unknown (no consumer yet, no such topic, brokers before Kafka 2.8, or the
    all-zero UUID). Checked against kafka-python 3.0.12.
    """
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    try:
        value = cluster.topic_id(topic)
    except Exception:  # no consumer yet, or a kafka-python without topic ids
        return None
    if value is None or not getattr(value, "int", 1):  # the all-zero UUID: no id
        return None
    return str(value)


def broker_connected(consumer: Any) -> bool:
    """A connection to a known broker is up (``_client.cluster.brokers()``, ``_client.connected``).

    The public ``bootstrap_connected()`` says only whether the bootstrap
    connection is up, which closes once metadata is read; this asks about the
    brokers the cluster metadata lists. Falls back to ``bootstrap_connected()``
    when the internals are elsewhere. Checked against kafka-python 3.0.12.
    """
    client = getattr(consumer, "_client", None)
    try:
        brokers = client.cluster.brokers()
        ids = [getattr(b, "node_id", getattr(b, "nodeId", None)) for b in brokers]
        return any(client.connected(i) for i in ids if i is not None)
    except Exception:  # another kafka-python layout: fall back to the public probe
        try:
            return bool(consumer.bootstrap_connected())
        except Exception:
            return False


def group_alive(consumer: Any, joined_at: float | None) -> bool:
    """False when the member cannot be sure it is still in its group (``_coordinator``).

    A frozen broker keeps its TCP connections open, so "a connection is up"
    stays true while nothing is answered. What does stop is the group:
    kafka-python's heartbeat thread forgets the coordinator when a request to
    it times out, and no heartbeat is answered within the session timeout.
    Once the coordinator is found again, membership is only sure when a
    heartbeat is answered since the heartbeat clock's last reset, or that
    reset was our own join (``joined_at``, from :func:`heartbeat_reset_at`).
    True (assume alive) when the internals are elsewhere. Checked against
    kafka-python 3.0.12.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    heartbeat = getattr(coordinator, "heartbeat", None)
    try:
        if coordinator.coordinator_id is None or heartbeat.session_timeout_expired():
            return False
        return heartbeat.last_receive >= heartbeat.last_reset or (heartbeat.last_reset == joined_at)
    except Exception:  # another kafka-python layout
        return True


def metadata_refreshed_ms(consumer: Any) -> float | None:
    """When the cluster metadata was last refreshed, in ms of ``time.monotonic() * 1000``
    (``_client.cluster._last_successful_refresh_ms``); None when unknown.

    After an outage, fetching waits until the metadata (and so the topic ids)
    is newer than the outage: a broker restarted without its data must be
    seen as a new topic before its records are read. Checked against
    kafka-python 3.0.12.
    """
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    return getattr(cluster, "_last_successful_refresh_ms", None)


def request_metadata_update(consumer: Any) -> None:
    """Ask for a metadata refresh soon (``_client.cluster.request_update()``); no wait.

    Used with :func:`metadata_refreshed_ms`: the refresh that makes the topic
    ids current. Errors are ignored (the next poll asks again). Checked
    against kafka-python 3.0.12.
    """
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    with contextlib.suppress(Exception):
        cluster.request_update()


#: kafka-python's errors for a commit refused because the member's generation ended.
GENERATION_ERRORS = frozenset(
    {
        "CommitFailedError",
        "IllegalGenerationError",
        "RebalanceInProgressError",
        "UnknownMemberIdError",
        "FencedInstanceIdError",
    }
)


def generation_lost(exc: BaseException | None) -> bool:
    """Whether a failed commit says this member's group generation is over.

    Looks along the exception's causes for kafka-python's ``CommitFailedError``,
    ``IllegalGenerationError``, ``RebalanceInProgressError``,
    ``UnknownMemberIdError`` or ``FencedInstanceIdError`` (by name: their modules
    moved between kafka-python versions). A member that lost its generation
    must write no more state for the partitions it held. Checked against
    kafka-python 3.0.12.

    >>> class CommitFailedError(Exception): ...
    >>> try:
    ...     try:
    ...         raise CommitFailedError("kicked out")
    ...     except CommitFailedError as inner:
    ...         raise RuntimeError("commit failed") from inner
    ... except RuntimeError as outer:
    ...     generation_lost(outer), generation_lost(ValueError())
    (True, False)
    """
    seen = 0
    while exc is not None and seen < 8:
        if type(exc).__name__ in GENERATION_ERRORS:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def generation_reset(consumer: Any) -> bool:
    """True when kafka-python has reset this member's generation (``_coordinator._generation``).

    The coordinator resets it (generation id -1) when the group answers that the
    member is unknown or its generation is over (it was evicted): from then on the
    partitions it held are another member's. False when unknown (another
    kafka-python). Checked against kafka-python 3.0.12.
    """
    generation = getattr(getattr(consumer, "_coordinator", None), "_generation", None)
    generation_id = getattr(generation, "generation_id", None)
    return generation_id is not None and generation_id < 0
