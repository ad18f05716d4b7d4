"""Broker faults under the real daemon: a frozen broker, a broker restarted empty, one restarted
with its data (noida-db).

Each test starts its OWN broker (never the session one: it is frozen, killed,
restarted). The daemon is the real process; everything is read back from the
broker. Recovery times are recorded as figures for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.brokers import start_broker
from tests.support.events import anomaly, normal_events
from tests.support.faults import (
    ends_of,
    produce_events,
    read_checkpoint,
    read_json,
    wait_checkpoint_at,
)
from tests.support.ports import free_port
from tests.support.processes import DaemonProcess, write_config
from tests.support.waits import wait_for

from ..figures import record

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

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
    broker = start_broker()
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


def warm_up(broker, daemon, topics, rng) -> list[tuple[int, int]]:
    """1,000 normal events, and wait until the model is fitted on them.

    Injected anomalies come only after: identical anomalies inside the warm-up
    window can be fitted a component of their own (see the report), and the
    order in which partitions are read decides which events that window holds.
    """
    coords = produce_events(broker.bootstrap, topics["events"], normal_events(rng, 1000))
    wait_for(lambda: b'"warmed_up": true' in daemon.get("/readyz")[1], 30, "the warm-up", daemon)
    return coords


# ---------------------------------------------------------------------------
# (a) frozen broker


def freeze_once(broker, daemon, topics, rng, cycle: int, pause_s: float) -> tuple[dict, list]:
    """Freeze the broker right after outliers were counted (still in the producer's
    linger window), for ``pause_s``; check and time the way back. The figures, and
    where the events sent landed."""
    rebuilds_before = daemon.metric("streamgmm_producer_rebuilds_total")
    outliers_before = daemon.metric("streamgmm_outliers_total")
    held = [1_000_000 * (cycle + 1) + i for i in range(5)]
    coords = produce_events(
        broker.bootstrap, topics["events"], stream(rng, 200, 100_000 * (cycle + 1), held)
    )
    wait_for(
        lambda: daemon.metric("streamgmm_outliers_total") >= outliers_before + len(held),
        20,
        "the injected outliers to be counted",
        daemon,
        every_s=0.02,
    )
    broker.pause()
    paused_at = time.monotonic()
    try:
        wait_for(lambda: not ready(daemon), pause_s, "/readyz to report not ready", daemon)
        not_ready_after = time.monotonic() - paused_at
        body = daemon.get("/readyz")[1].decode()
        assert '"connected": false' in body, body
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
        lambda: set(held) <= injected(broker, topics["outliers"]),
        30,
        "the outliers held during the freeze to be published",
        daemon,
    )
    published_after = time.monotonic() - resumed_at
    rebuilds = daemon.metric("streamgmm_producer_rebuilds_total") - rebuilds_before
    assert rebuilds > 0, "the producer that timed out must have been replaced"

    # and the pipeline flows again
    fresh = [1_000_000 * (cycle + 1) + 100 + i for i in range(5)]
    coords += produce_events(
        broker.bootstrap, topics["events"], stream(rng, 500, 100_000 * (cycle + 1) + 500, fresh)
    )
    wait_for(
        lambda: set(fresh) <= injected(broker, topics["outliers"]),
        30,
        "outliers of events sent after the recovery",
        daemon,
    )
    figures = {
        "pause_s": pause_s,
        "not_ready_after_s": round(not_ready_after, 2),
        "ready_after_resume_s": round(ready_after, 2),
        "held_outliers_published_after_resume_s": round(published_after, 2),
        "new_outliers_flowing_after_resume_s": round(time.monotonic() - resumed_at, 2),
        "producer_rebuilds": rebuilds,
    }
    return figures, coords


def freeze_campaign(tmp_path, broker, unique, pauses: list[float], variant: str) -> None:
    topics = make_topics(broker, unique)
    rng = np.random.default_rng(10)
    checkpoint = tmp_path / "state" / "model.npz"
    daemon = start_daemon(tmp_path, broker, topics, unique("g"), "daemon.log")
    coords = warm_up(broker, daemon, topics, rng)
    wait_for(lambda: ready(daemon), 30, "the daemon to be ready", daemon)
    cycles = []
    for cycle, pause_s in enumerate(pauses):
        figures, sent = freeze_once(broker, daemon, topics, rng, cycle, pause_s)
        cycles.append(figures)
        coords += sent
    ends = ends_of(coords)
    wait_checkpoint_at(daemon, checkpoint, topics["events"], ends)
    assert daemon.terminate() == 0, daemon.log_tail()
    state = read_checkpoint(checkpoint)
    total = sum(ends.values())
    assert state["detector"]["n_seen"] == total, "every event learnt exactly once"
    record(
        "broker_pause",
        variant=variant,
        fault="broker frozen (SIGSTOP) past session and delivery timeouts",
        session_timeout_s=GROUP_CLIENT["session_timeout_ms"] / 1000,
        delivery_timeout_s=SINK_CLIENT["delivery_timeout_ms"] / 1000,
        cycles=cycles,
        events=total,
        outliers_lost=0,
        events_learnt=int(state["detector"]["n_seen"]),
    )


def test_broker_frozen_past_session_and_delivery_timeouts_is_survived(tmp_path, own_broker, unique):
    # 9 s > the session timeout (3 s), and the delivery timeout (3 s) + stall grace (5 s)
    freeze_campaign(tmp_path, own_broker, unique, [9.0], "fast")


@pytest.mark.slow
def test_broker_frozen_again_and_again(tmp_path, own_broker, unique):
    freeze_campaign(tmp_path, own_broker, unique, [5.0, 6.0, 9.0, 15.0, 30.0, 5.0], "slow")


# ---------------------------------------------------------------------------
# (b) broker restarted: Tansu forgets everything


def restart_campaign(tmp_path, broker, unique, restarts: int, variant: str) -> None:
    """Tansu keeps topics, offsets and groups in memory: a restart brings back an
    empty cluster at the same address. The checkpoint's offsets then point past
    the end of the new, empty topic (or, once it grew, into the middle of it);
    the daemon must notice the topic is another one and read it from its start."""
    topics = make_topics(broker, unique)
    group = unique("g")
    checkpoint = tmp_path / "state" / "model.npz"
    rng = np.random.default_rng(11)
    daemon = start_daemon(tmp_path, broker, topics, group, "run1.log")
    coords = warm_up(broker, daemon, topics, rng)
    first = stream(rng, 3000, 1_000, [100_000 + i for i in range(5)])
    ends = ends_of(coords + produce_events(broker.bootstrap, topics["events"], first))
    wait_checkpoint_at(daemon, checkpoint, topics["events"], ends)
    learnt = len(coords) + len(first)

    # 1. the broker restarts empty while the daemon runs
    cycles = []
    for cycle in range(restarts):
        broker.stop()
        stopped_at = time.monotonic()
        wait_for(lambda: not ready(daemon), 15, "/readyz to report the broker gone", daemon)
        not_ready_after = time.monotonic() - stopped_at
        time.sleep(max(0.0, 4.0 - not_ready_after))  # longer than the session timeout
        assert daemon.process.poll() is None, daemon.log_tail()
        broker.start()  # same port
        restarted_at = time.monotonic()
        create(broker, topics)
        # more events than the old offsets: a stale position would land inside them
        ids = [200_000 * (cycle + 1) + i for i in range(5)]
        events = stream(rng, 4000, 10_000 * (cycle + 1), ids)
        ends = ends_of(produce_events(broker.bootstrap, topics["events"], events))
        wait_for(lambda: ready(daemon), 40, "/readyz after the restart", daemon)
        ready_after = time.monotonic() - restarted_at
        learnt += len(events)
        state = wait_checkpoint_at(daemon, checkpoint, topics["events"], ends, 60, learnt)
        caught_up_after = time.monotonic() - restarted_at
        assert state["detector"]["n_seen"] == learnt, (
            f"the model learnt {state['detector']['n_seen']} events, {learnt} were sent: "
            "events of the new topic were skipped or learnt twice"
        )
        wait_for(
            lambda i=ids: set(i) <= injected(broker, topics["outliers"]),
            20,
            "the outliers of the new topic",
            daemon,
        )
        cycles.append(
            {
                "not_ready_after_stop_s": round(not_ready_after, 2),
                "ready_after_restart_s": round(ready_after, 2),
                "caught_up_after_restart_s": round(caught_up_after, 2),
            }
        )
    assert daemon.terminate() == 0, daemon.log_tail()

    # 2. the broker restarts empty while the daemon is stopped
    broker.stop()
    broker.start()
    create(broker, topics)
    third = stream(rng, 5000, 900_000, [300_000 + i for i in range(5)])
    ends = ends_of(produce_events(broker.bootstrap, topics["events"], third))
    started_at = time.monotonic()
    daemon = start_daemon(tmp_path, broker, topics, group, "run2.log")
    learnt += len(third)
    state = wait_checkpoint_at(daemon, checkpoint, topics["events"], ends, 60, learnt)
    cold_caught_up_after = time.monotonic() - started_at
    assert state["detector"]["n_seen"] == learnt, (
        f"the model learnt {state['detector']['n_seen']} events, {learnt} were sent: "
        "the checkpoint's offsets of the old topic were used in the new one"
    )
    wait_for(
        lambda: {300_000 + i for i in range(5)} <= injected(broker, topics["outliers"]),
        20,
        "the outliers after a cold start on the new topic",
        daemon,
    )
    log = daemon.log_path.read_text()
    assert "created again" in log, "the daemon must say loudly that the topic changed"
    assert daemon.terminate() == 0, daemon.log_tail()
    record(
        "broker_restart_empty",
        variant=variant,
        fault="broker killed and restarted empty at the same address (Tansu, memory storage)",
        restarts_while_running=cycles,
        cold_start_caught_up_s=round(cold_caught_up_after, 2),
        events=learnt,
        events_learnt=int(state["detector"]["n_seen"]),
        events_skipped=learnt - int(state["detector"]["n_seen"]),
    )


def test_broker_restarted_empty_is_survived_and_no_event_is_skipped(tmp_path, own_broker, unique):
    restart_campaign(tmp_path, own_broker, unique, 1, "fast")


@pytest.mark.slow
def test_broker_restarted_empty_again_and_again(tmp_path, own_broker, unique):
    restart_campaign(tmp_path, own_broker, unique, 4, "slow")


# ---------------------------------------------------------------------------
# (b') broker restarted with its data: noida-db


class NoidaBroker:
    """noida-db's Kafka service (PyPI ``noida-db``): a Kafka-compatible broker that keeps
    topics, offsets and groups on disk across restarts. Started in the foreground with
    ``noida-db start --data-dir D --only kafka --kafka-port P``; stopped with SIGTERM."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        from importlib.resources import files

        self.binary = str(files("noida_db").joinpath("noida-db"))
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._admin = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> NoidaBroker:
        os.chmod(self.binary, 0o755)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "start", "--data-dir", str(self.data_dir), "--only", "kafka",
                 "--kafka-port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_for(self._answers, 20, f"noida-db to serve Kafka on {self.bootstrap}")
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"noida-db exited ({self.process.returncode}): {self.log_path.read_text()[-2000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
            self.admin().list_topics()
            return True
        except Exception:
            self._close_admin()
            return False

    def admin(self):
        from kafka.admin import KafkaAdminClient

        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=5000
            )
        return self._admin

    def _close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self._close_admin()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def create_topics(self, names, partitions: int = 1) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        for name in names:
            with contextlib.suppress(TopicAlreadyExistsError):
                self.admin().create_topics([NewTopic(name, partitions, 1)])
        wait_for(lambda: len(self.partition_counts(names)) == len(names), 10, f"topics {names}")

    def partition_counts(self, names) -> dict[str, int]:
        return {
            t["name"]: len(t["partitions"])
            for t in self.admin().describe_topics(list(names))
            if not t.get("error_code")
        }


@pytest.fixture
def noida(tmp_path):
    try:
        import noida_db  # noqa: F401
    except ImportError:
        pytest.skip(
            "noida-db is not installed (`.venv/bin/pip install noida-db`): the restart of a "
            "broker that keeps its data is not tested"
        )
    broker = NoidaBroker(tmp_path / "noida-data", tmp_path / "noida.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(signal.SIGKILL)


def test_broker_restarted_with_its_data_resumes_where_it_was(tmp_path, noida, unique):
    """noida-db keeps its data: after a restart the daemon goes on from its own position:
    no event skipped, none learnt twice, every outlier published.

    The broker is stopped with SIGTERM: noida-db acknowledges writes before they
    reach its disk, and a SIGKILL loses about the last second of acknowledged
    records (seen here: 10 of 310), which no client can make up for."""
    broker = noida
    topics = make_topics(broker, unique)
    checkpoint = tmp_path / "state" / "model.npz"
    rng = np.random.default_rng(12)
    daemon = start_daemon(
        tmp_path,
        broker,
        topics,
        unique("g"),
        "daemon.log",
        # noida-db refuses session timeouts under 6 s (InvalidSessionTimeoutError)
        source__kafka__client={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
    )
    coords = warm_up(broker, daemon, topics, rng)
    first = stream(rng, 3000, 1_000, [400_000 + i for i in range(5)])
    ends = ends_of(coords + produce_events(broker.bootstrap, topics["events"], first))
    wait_checkpoint_at(daemon, checkpoint, topics["events"], ends)

    broker.stop(signal.SIGTERM)
    stopped_at = time.monotonic()
    wait_for(lambda: not ready(daemon), 15, "/readyz to report the broker gone", daemon)
    not_ready_after = time.monotonic() - stopped_at
    time.sleep(max(0.0, 4.0 - not_ready_after))
    assert daemon.process.poll() is None, daemon.log_tail()
    broker.start()
    restarted_at = time.monotonic()
    second = stream(rng, 2000, 10_000, [500_000 + i for i in range(5)])
    ends = ends_of(produce_events(broker.bootstrap, topics["events"], second), ends)
    wait_for(lambda: ready(daemon), 40, "/readyz after the restart", daemon)
    ready_after = time.monotonic() - restarted_at
    learnt = len(coords) + len(first) + len(second)
    state = wait_checkpoint_at(daemon, checkpoint, topics["events"], ends, 60, learnt)
    caught_up_after = time.monotonic() - restarted_at
    assert state["detector"]["n_seen"] == learnt, (
        f"the model learnt {state['detector']['n_seen']} events, {learnt} were sent"
    )
    wanted = {400_000 + i for i in range(5)} | {500_000 + i for i in range(5)}
    wait_for(lambda: wanted <= injected(broker, topics["outliers"]), 20, "every outlier", daemon)
    assert daemon.terminate() == 0, daemon.log_tail()
    record(
        "broker_restart_kept_data",
        fault="broker stopped (SIGTERM) and restarted with its data (noida-db)",
        not_ready_after_stop_s=round(not_ready_after, 2),
        ready_after_restart_s=round(ready_after, 2),
        caught_up_after_restart_s=round(caught_up_after, 2),
        events=learnt,
        events_learnt=int(state["detector"]["n_seen"]),
    )


# ---------------------------------------------------------------------------
# (c) stopped while the broker is frozen


@pytest.mark.slow
def test_sigterm_while_the_broker_is_frozen_stops_within_the_units_timeout(
    tmp_path, own_broker, unique
):
    """systemd allows 60 s (TimeoutStopSec) before it kills the daemon. With the
    broker frozen and outliers unacknowledged, the stop must still be clean and in
    time: nothing can be delivered, the last good checkpoint stands."""
    broker = own_broker
    topics = make_topics(broker, unique)
    rng = np.random.default_rng(13)
    daemon = start_daemon(tmp_path, broker, topics, unique("g"), "daemon.log")
    warm_up(broker, daemon, topics, rng)
    produce_events(broker.bootstrap, topics["events"], stream(rng, 200, 5_000, [1, 2, 3]))
    wait_for(
        lambda: daemon.metric("streamgmm_outliers_total") >= 3, 20, "the outliers", daemon, 0.02
    )
    broker.pause()
    try:
        started = time.monotonic()
        code = daemon.terminate(timeout_s=120)
        stopped_after = time.monotonic() - started
    finally:
        broker.resume()
    assert code == 0, daemon.log_tail()
    assert stopped_after < 55, f"the stop took {stopped_after:.0f} s (systemd allows 60)"
    record(
        "broker_frozen_stop",
        fault="SIGTERM while the broker is frozen with outliers unacknowledged",
        stopped_after_s=round(stopped_after, 1),
        exit_code=code,
        stop_timeout_s=60,
    )
