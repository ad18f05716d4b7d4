"""The real ``streamgmm run`` process on the real broker: outliers, dead letters, restarts."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from streamgmm.records import DEAD_LETTER_FIELDS, OUTLIER_FIELDS
from tests.support.events import anomaly, encode, normal_events
from tests.support.processes import DaemonProcess, write_config
from tests.support.promtool import check_metrics, promtool
from tests.support.waits import wait_for

pytestmark = pytest.mark.integration

MALFORMED = [
    (b"\xff\xfe not utf-8", "not_utf8"),
    (b"{not json", "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"a": 1.0, "b": 2.0}', "missing_field"),
    (b'{"a": "1.0", "b": 2.0, "c": 3.0}', "not_numeric"),
    (b'{"a": NaN, "b": 2.0, "c": 3.0}', "not_finite"),
]


@pytest.fixture
def topics(broker, unique):
    names = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    broker.create_topics([names["events"]], partitions=2)
    broker.create_topics([names["outliers"], names["dead"]], partitions=1)
    return names


def outlier_records(read_all, topic, expected=None, deadline_s=5.0):
    return [json.loads(r.value) for r in read_all(topic, expected, deadline_s)]


def injected_ids(records):
    return sorted(r["event"]["id"] for r in records if r["event"].get("injected"))


def produce_stream(produce, topic, events):
    values = encode(events)
    keys = [e["host"].encode() for e in events]
    produce(topic, values, keys=keys)


def start(tmp_path, broker, topics, group, name="daemon.log", **overrides):
    path, port = write_config(tmp_path, broker.bootstrap, topics, group, **overrides)
    return DaemonProcess(path, port, tmp_path / name)


def test_daemon_publishes_anomalies_and_dead_letters(
    tmp_path, broker, topics, unique, produce, read_all
):
    rng = np.random.default_rng(0)
    warmup = normal_events(rng, 600)
    events = normal_events(rng, 1400, start_id=600)
    anomalies = [anomaly(10_000 + i) for i in range(15)]
    for i, a in enumerate(anomalies):
        events.insert(90 * i, a)
    produce_stream(produce, topics["events"], warmup)
    daemon = start(tmp_path, broker, topics, unique("g"))
    # the two partitions are read in no fixed order: warm up before any anomaly exists
    daemon.wait_until(lambda: daemon.scored() >= len(warmup), what="warm-up")
    produce_stream(produce, topics["events"], events)
    produce(topics["events"], [value for value, _ in MALFORMED])
    events = warmup + events
    total = len(events) + len(MALFORMED)
    daemon.wait_until(lambda: daemon.scored() >= total, what="every event counted")
    daemon.wait_until(lambda: daemon.get("/readyz")[0] == 200, what="ready")
    assert daemon.get("/healthz")[0] == 200

    # sends are asynchronous: read as many as the daemon counted
    flagged = int(daemon.metric("streamgmm_outliers_total"))
    outliers = outlier_records(read_all, topics["outliers"], flagged, deadline_s=20)
    assert len(outliers) == flagged
    assert injected_ids(outliers) == [a["id"] for a in anomalies]
    # every acknowledged outlier's delay is observed (all were read back: all acknowledged)
    daemon.wait_until(
        lambda: daemon.metric("streamgmm_outlier_delay_seconds_count") == flagged,
        what="every outlier's acknowledgement delay observed",
    )
    assert daemon.metric("streamgmm_outlier_delay_seconds_sum") > 0
    assert daemon.metric("streamgmm_checkpoint_rejected", 'reason="corrupt"') == 0
    record = next(r for r in outliers if r["event"].get("injected"))
    assert list(record) == list(OUTLIER_FIELDS)
    assert record["key"] == "bad" and record["score"] > record["threshold"]
    assert set(record["contributions"]) == {"a", "b", "c"}
    assert set(record["surprise"]) == set(record["expected"]) == {"a", "b", "c"}
    assert abs(sum(record["responsibilities"]) - 1) < 1e-6
    natural = len(outliers) - len(anomalies)
    assert natural <= 0.01 * len(events)  # a 0.999 quantile flags few normal events

    dead = [json.loads(r.value) for r in read_all(topics["dead"], len(MALFORMED))]
    assert sorted(d["reason"] for d in dead) == sorted(reason for _, reason in MALFORMED)
    assert all(list(d)[: len(DEAD_LETTER_FIELDS)] == list(DEAD_LETTER_FIELDS) for d in dead)
    assert all(d["error"] for d in dead)
    for reason in {r for _, r in MALFORMED}:
        assert daemon.metric("streamgmm_dead_letters_total", f'reason="{reason}"') == 1

    assert daemon.terminate() == 0
    assert (tmp_path / "state" / "model.npz").exists()


def test_graceful_restart_resumes_without_republishing(
    tmp_path, broker, topics, unique, produce, read_all
):
    rng = np.random.default_rng(1)
    group = unique("g")
    first = normal_events(rng, 1500) + [anomaly(20_000 + i) for i in range(5)]
    produce_stream(produce, topics["events"], first)
    daemon = start(tmp_path, broker, topics, group, "first.log")
    daemon.wait_until(lambda: daemon.scored() >= len(first), what="first part scored")
    assert daemon.terminate() == 0
    before = outlier_records(read_all, topics["outliers"])
    seen_before = before[-1]["model_events_seen"]

    second = normal_events(rng, 800, start_id=5000) + [anomaly(30_000 + i) for i in range(5)]
    produce_stream(produce, topics["events"], second)
    daemon = start(tmp_path, broker, topics, group, "second.log")
    daemon.wait_until(lambda: daemon.scored() >= len(second), what="second part scored")
    assert daemon.metric("streamgmm_events_total", 'status="warmup"') == 0  # resumed model
    assert daemon.terminate() == 0

    after = outlier_records(read_all, topics["outliers"])
    coordinates = [(r["partition"], r["offset"]) for r in after]
    assert len(coordinates) == len(set(coordinates)), "an outlier was published twice"
    assert injected_ids(after) == sorted(
        [20_000 + i for i in range(5)] + [30_000 + i for i in range(5)]
    )
    assert min(r["model_events_seen"] for r in after[len(before) :]) > seen_before


def test_sigkill_loses_no_injected_anomaly(tmp_path, broker, topics, unique, produce, read_all):
    rng = np.random.default_rng(2)
    group = unique("g")
    ids = []
    daemon = start(tmp_path, broker, topics, group, "run0.log")
    for round_ in range(3):
        chunk = normal_events(rng, 900, start_id=100_000 * (round_ + 1))
        chunk += [anomaly(1_000_000 + 10 * round_ + i) for i in range(4)]
        ids += [e["id"] for e in chunk if e.get("injected")]
        produce_stream(produce, topics["events"], chunk)
        time.sleep(1.5)  # the daemon gets part way, a checkpoint or two happen
        assert daemon.kill() == -9
        daemon = start(tmp_path, broker, topics, group, f"run{round_ + 1}.log")
    daemon.wait_until(lambda: daemon.get("/readyz")[0] == 200, deadline_s=40, what="ready")
    found: set = set()

    def all_found() -> bool:
        found.update(injected_ids(outlier_records(read_all, topics["outliers"], deadline_s=2)))
        return found >= set(ids)

    wait_for(all_found, 40, f"the injected anomalies {sorted(ids)} among the outliers", daemon, 1)
    assert daemon.terminate() == 0


def test_live_scrape_passes_promtool(tmp_path, broker, topics, unique, produce):
    promtool()  # skips here, before the daemon starts, when it is not installed
    produce_stream(produce, topics["events"], normal_events(np.random.default_rng(3), 600))
    daemon = start(tmp_path, broker, topics, unique("g"))
    daemon.wait_until(lambda: daemon.scored() >= 600, what="events scored")
    text = daemon.metrics_text()
    check = check_metrics(text)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    for name in (
        "streamgmm_consumer_lag",
        "streamgmm_component_weight",
        "streamgmm_checkpoint_timestamp_seconds",
        "streamgmm_build_info",
    ):
        assert name in text
    assert daemon.terminate() == 0


def test_a_killed_decoding_process_loses_nothing(
    tmp_path, broker, topics, unique, produce, read_all
):
    """Large batches are decoded by a child process; killed, its batch is decoded in the
    loop (counted in streamgmm_decoder_failures_total) and a new child takes over."""
    rng = np.random.default_rng(4)
    first = normal_events(rng, 2000)
    produce_stream(produce, topics["events"], first)
    daemon = start(tmp_path, broker, topics, unique("g"), features__decode_process=True)
    daemon.wait_until(lambda: daemon.scored() >= len(first), what="the backlog read")
    started = [r for r in daemon.log_records() if "decoding large batches" in r["message"]]
    assert started, "a backlog of 2,000 events is read in batches of 500: decoded beside"
    child = int(started[-1]["message"].split()[-1])

    # the loop is held still while a second backlog arrives and the child is killed
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        second = normal_events(rng, 3000, start_id=10_000)
        anomalies = [anomaly(20_000 + i) for i in range(10)]
        for i, a in enumerate(anomalies):
            second.insert(250 * i + 100, a)
        produce_stream(produce, topics["events"], second)
        produce(topics["events"], [value for value, _ in MALFORMED])
        os.kill(child, signal.SIGKILL)
    finally:
        daemon.process.send_signal(signal.SIGCONT)

    total = len(first) + len(second) + len(MALFORMED)
    daemon.wait_until(lambda: daemon.scored() >= total, what="every event counted")
    assert daemon.metric("streamgmm_decoder_failures_total") == 1
    flagged = int(daemon.metric("streamgmm_outliers_total"))
    outliers = outlier_records(read_all, topics["outliers"], flagged, deadline_s=20)
    assert injected_ids(outliers) == [a["id"] for a in anomalies]
    dead = [json.loads(r.value) for r in read_all(topics["dead"], len(MALFORMED))]
    assert sorted(d["reason"] for d in dead) == sorted(reason for _, reason in MALFORMED)
    messages = [r["message"] for r in daemon.log_records()]
    assert any("the decoding process ended" in m for m in messages)
    assert sum("decoding large batches" in m for m in messages) == 2, "a new child took over"
    assert daemon.terminate() == 0
