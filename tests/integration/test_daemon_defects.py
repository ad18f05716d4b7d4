"""Defects a first user met in the real ``streamgmm run`` on the real broker, held fixed.

- ``checkpoint.path`` in a directory that does not exist: created (0700), checkpoints
  written and offsets committed (it used to log a write error every interval, for ever);
- a poison pill, ``{"a": 1e101, ...}``: the model raised, the daemon exited 1 and every
  restart met the event again (a crash loop); now its batch is dead letters with reason
  ``model_error`` (or the event an outlier, once the model scores such values) and the
  daemon goes on;
- SIGHUP and SIGUSR1 ended the process at once, without the shutdown checkpoint (events
  read again, outliers published twice); now SIGHUP shuts down as SIGTERM does and
  SIGUSR1 logs a status line, and the decoding child ignores both;
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from tests.support.events import anomaly, encode, normal_events
from tests.support.faults import committed_offsets, read_checkpoint
from tests.support.processes import DaemonProcess, write_config
from tests.support.waits import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(broker, unique):
    names = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    broker.create_topics(list(names.values()), partitions=1)
    return names


def start(tmp_path, broker, topics, group, name="daemon.log", **overrides) -> DaemonProcess:
    path, port = write_config(tmp_path, broker.bootstrap, topics, group, **overrides)
    return DaemonProcess(path, port, tmp_path / name)


def test_a_checkpoint_directory_that_does_not_exist_is_created(
    tmp_path, broker, topics, unique, produce
):
    checkpoint = tmp_path / "not" / "yet" / "model.npz"
    produce(topics["events"], encode(normal_events(np.random.default_rng(11), 700)))
    group = unique("g")
    daemon = start(tmp_path, broker, topics, group, checkpoint__path=str(checkpoint))
    daemon.wait_until(lambda: daemon.scored() >= 700, what="every event counted")
    wait_for(
        lambda: committed_offsets(broker.bootstrap, group, topics["events"], 1) == {0: 700},
        20, "the offsets committed after a checkpoint", daemon,
    )  # fmt: skip
    assert daemon.terminate() == 0
    state = read_checkpoint(checkpoint)
    assert state is not None and state["offsets"][topics["events"]] == {"0": 700}
    assert (tmp_path / "not").stat().st_mode & 0o777 == 0o700
    assert not [r for r in daemon.log_records() if "cannot write the checkpoint" in r["message"]]


def test_a_poison_pill_is_a_dead_letter_or_an_outlier_never_a_crash_loop(
    tmp_path, broker, topics, unique, produce, read_all
):
    rng = np.random.default_rng(12)
    events = normal_events(rng, 1200)
    events[900] = {"id": 900, "host": "poison", "a": 1e101, "b": 0.0, "c": 0.0}
    produce(topics["events"], encode(events))
    group = unique("g")
    daemon = start(tmp_path, broker, topics, group, "first.log")
    daemon.wait_until(lambda: daemon.scored() >= len(events), what="every event counted")
    model_errors = daemon.metric("streamgmm_dead_letters_total", 'reason="model_error"')
    dead = [json.loads(r.value) for r in read_all(topics["dead"], int(model_errors))]
    poison_dead = [d for d in dead if d["offset"] == 900]
    outliers = [json.loads(r.value) for r in read_all(topics["outliers"], deadline_s=5)]
    poison_flagged = [o for o in outliers if o["offset"] == 900]
    assert poison_dead or poison_flagged, "the event is neither a dead letter nor an outlier"
    if poison_dead:
        assert poison_dead[0]["reason"] == "model_error" and "1e+100" in poison_dead[0]["error"]
        assert any("the model raised" in r["message"] for r in daemon.log_records())
    wait_for(
        lambda: committed_offsets(broker.bootstrap, group, topics["events"], 1) == {0: 1200},
        20, "the offsets committed past the event", daemon,
    )  # fmt: skip
    assert daemon.terminate() == 0

    # a restart does not meet it again: nothing to read, it runs and stops cleanly
    again = start(tmp_path, broker, topics, group, "second.log")
    again.wait_until(lambda: again.get("/healthz")[0] == 200, what="the restart running")
    produce(topics["events"], encode(normal_events(rng, 50, start_id=5000)))
    again.wait_until(lambda: again.scored() >= 50, what="new events read after the restart")
    assert again.scored() == 50
    assert again.terminate() == 0


def test_sighup_stops_cleanly_after_a_checkpoint_and_sigusr1_logs_a_status(
    tmp_path, broker, topics, unique, produce, read_all
):
    rng = np.random.default_rng(13)
    events = normal_events(rng, 1500) + [anomaly(50_000 + i) for i in range(5)]
    produce(topics["events"], encode(events))
    group = unique("g")
    daemon = start(
        tmp_path, broker, topics, group, "first.log",
        features__decode_process=True, checkpoint__interval_s=3600,  # only the shutdown one
    )  # fmt: skip
    daemon.wait_until(lambda: daemon.scored() >= len(events), what="every event counted")
    started = [r for r in daemon.log_records() if "decoding large batches" in r["message"]]
    child = int(started[-1]["message"].split()[-1])
    for signum in (signal.SIGHUP, signal.SIGUSR1):  # as a hang-up reaching the whole group
        os.kill(child, signum)
    daemon.process.send_signal(signal.SIGUSR1)
    daemon.wait_until(
        lambda: any(r["message"] == "status (SIGUSR1)" for r in daemon.log_records()),
        what="the status line",
    )
    [status] = [r for r in daemon.log_records() if r["message"] == "status (SIGUSR1)"]
    assert status["events_seen"] == len(events) and status["warmed_up"] is True
    os.kill(child, 0)  # still there: the signals did not end it
    daemon.process.send_signal(signal.SIGHUP)
    assert daemon.wait(30) == 0, daemon.log_tail()
    assert any("received SIGHUP" in r["message"] for r in daemon.log_records())
    state = read_checkpoint(tmp_path / "state" / "model.npz")
    assert state is not None and state["offsets"][topics["events"]] == {"0": len(events)}
    assert committed_offsets(broker.bootstrap, group, topics["events"], 1) == {0: len(events)}
    first = [json.loads(r.value) for r in read_all(topics["outliers"], deadline_s=5)]

    # the next start reads nothing again: no outlier is published twice
    again = start(tmp_path, broker, topics, group, "second.log")
    again.wait_until(lambda: again.get("/healthz")[0] == 200, what="the restart running")
    produce(topics["events"], encode([anomaly(60_000)]))
    again.wait_until(lambda: again.scored() >= 1, what="the new event read")
    assert again.terminate() == 0
    after = [json.loads(r.value) for r in read_all(topics["outliers"], len(first) + 1, 10)]
    assert len(after) == len(first) + 1 and after[-1]["event"]["id"] == 60_000
