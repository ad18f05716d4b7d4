"""Defects a first user met in the daemon's loop, held fixed in-process (no broker).

The scripted source of tests/support/scripted.py stands in for Kafka's
consumer; the integration tests (tests/integration/test_daemon_defects.py)
show the same on the real process and broker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import numpy as np
import pytest

from streamgmm.daemon import FUTURE_TOLERANCE_S
from streamgmm.detector import Detector
from streamgmm.records import MODEL_ERROR
from streamgmm.sources import Record
from tests.support.scripted import TP, ScriptedSource, daemon_with


def stamped(start: int, stop: int, timestamp_ms: int) -> list[Record]:
    rng = np.random.default_rng(start)
    return [
        Record(TP.topic, TP.partition, offset, timestamp_ms, None,
               json.dumps(dict(zip("abc", rng.normal(size=3).tolist(), strict=True))).encode())
        for offset in range(start, stop)
    ]  # fmt: skip


def histogram_count(histogram) -> float:
    return next(s.value for s in histogram._family().samples if s.name.endswith("_count"))


# ---------------------------------------------------------------------------
# events timestamped in the future


def test_future_timestamps_are_counted_apart_not_as_zero_delay(caplog):
    now_ms = int(time.time() * 1000)
    ahead_ms = now_ms + 3_600_000  # a producer whose clock is an hour ahead
    slight_ms = now_ms + int(FUTURE_TOLERANCE_S * 500)  # within the tolerance: a delay of 0

    def batches(source):
        source.assign({TP})
        return stamped(0, 100, now_ms - 2000) + stamped(100, 130, ahead_ms) + stamped(
            130, 140, slight_ms)  # fmt: skip

    def more_in_the_future(source):
        return stamped(140, 160, ahead_ms)

    source = ScriptedSource([batches, more_in_the_future])
    daemon = daemon_with(source)
    with caplog.at_level(logging.WARNING, logger="streamgmm.daemon"):
        assert daemon.run() == 0
    assert daemon.metrics.future_timestamps_total._value.get() == 50
    assert histogram_count(daemon.metrics.event_delay_seconds) == 110  # 100 past, 10 slight
    warnings = [r.getMessage() for r in caplog.records if "ahead of this host's clock" in
                r.getMessage()]  # fmt: skip
    assert len(warnings) == 1, "logged once, counted always"
    assert "NTP" in warnings[0] and "streamgmm_future_timestamps_total" in warnings[0]
    assert daemon.detector.n_seen == 160  # scored and learnt as usual


def test_an_outlier_from_the_future_is_not_an_instant_acknowledgement():
    daemon = daemon_with(ScriptedSource([]))

    class Acknowledged:
        def succeeded(self):
            return True

    future_ms = int((time.time() + 60) * 1000)
    daemon._observe_ack(future_ms, Acknowledged())
    daemon._observe_ack(int(time.time() * 1000) - 20, Acknowledged())
    samples = {s.name: s.value for f in daemon.metrics.outlier_delay_seconds.collect()
               for s in f.samples}  # fmt: skip
    assert samples["streamgmm_outlier_delay_seconds_count"] == 1


# ---------------------------------------------------------------------------
# an exception from the model on one batch


class RaisesOnSecondBatch(Detector):
    """The detector, except that its second batch raises (a bug, a value it refuses)."""

    def process(self, X):
        self.batches = getattr(self, "batches", 0) + 1
        if self.batches == 2:
            raise RuntimeError("a bug on this batch")
        return super().process(X)


def dead_letters(daemon) -> list[dict]:
    return [json.loads(line) for line in daemon.written["dead_letter"].getvalue().splitlines()]


def test_a_batch_the_model_raises_on_becomes_dead_letters_and_the_loop_goes_on(caplog):
    def step(source):
        if not source.assigned:
            source.assign({TP})
        start = 100 * (2 - len(source.steps))
        return stamped(start, start + 100, None)

    source = ScriptedSource([step] * 3)
    daemon = daemon_with(source)
    daemon.detector.__class__ = RaisesOnSecondBatch
    with caplog.at_level(logging.ERROR, logger="streamgmm.daemon"):
        assert daemon.run() == 0
    dead = dead_letters(daemon)
    assert [d["offset"] for d in dead] == list(range(100, 200))
    assert {d["reason"] for d in dead} == {MODEL_ERROR}
    assert "RuntimeError: a bug on this batch" in dead[0]["error"]
    assert json.loads(dead[0]["payload"]) == json.loads(stamped(100, 101, None)[0].value)
    assert daemon.metrics.dead_letters_total.labels(reason=MODEL_ERROR)._value.get() == 100
    assert daemon.detector.n_seen == 200  # the batches before and after were learnt
    assert source.commits[-1] == {TP: 300}, "the offsets advance past the batch"
    [logged] = [r for r in caplog.records if "the model raised" in r.getMessage()]
    assert "offset 100" in logged.getMessage() and "report it" in logged.getMessage()


def test_a_value_beyond_1e100_is_no_poison_pill():
    """``{"a": 1e101}`` decodes (it is a finite float); whatever the model makes of it, a
    dead letter (model_error) or an outlier, the daemon goes on and commits past it."""
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(400, 3))
    values = [json.dumps(dict(zip("abc", r.tolist(), strict=True))).encode() for r in rows]
    values[300] = b'{"a": 1e101, "b": 0.0, "c": 0.0}'
    batches = [values[:200], values[200:400]]

    def step(source):
        if not source.assigned:
            source.assign({TP})
        start = 200 * (1 - len(source.steps))
        return [Record(TP.topic, TP.partition, start + i, None, None, v)
                for i, v in enumerate(batches[start // 200])]  # fmt: skip

    source = ScriptedSource([step] * 2)
    daemon = daemon_with(source)
    assert daemon.run() == 0
    outliers = [json.loads(x) for x in daemon.written["outliers"].getvalue().splitlines()]
    dead = {d["offset"]: d["reason"] for d in dead_letters(daemon)}
    flagged = {o["offset"] for o in outliers}
    assert dead.get(300) == MODEL_ERROR or 300 in flagged
    assert source.commits[-1] == {TP: 400}


# ---------------------------------------------------------------------------
# SIGHUP and SIGUSR1


def test_sighup_shuts_down_cleanly_and_sigusr1_logs_a_status_line(restore_signal_handlers, caplog):
    def first(source):
        source.assign({TP})
        os.kill(os.getpid(), signal.SIGUSR1)
        return stamped(0, 100, None)

    def hang_up(source):
        os.kill(os.getpid(), signal.SIGHUP)
        return stamped(100, 150, None)

    source = ScriptedSource([first, hang_up, lambda source: stamped(150, 200, None)])
    daemon = daemon_with(source)
    daemon.install_signal_handlers()
    with caplog.at_level(logging.INFO, logger="streamgmm.daemon"):
        assert daemon.run() == 0
    assert source.steps, "SIGHUP stopped the loop before the third poll"
    assert source.commits[-1] == {TP: 150}, "the batch in hand finished, then committed"
    [status] = [r for r in caplog.records if r.getMessage() == "status (SIGUSR1)"]
    assert status.fields["events_seen"] == 100 and status.fields["offsets"] == {"events:0": 100}
    assert any("received SIGHUP" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM])
def test_signals_in_the_warm_up(restore_signal_handlers, signum):
    """Still warming up (20 of 50 events): SIGHUP and SIGTERM stop cleanly, the
    batch in hand learnt and committed first; SIGUSR1 changes nothing."""

    def first(source):
        source.assign({TP})
        os.kill(os.getpid(), signum)
        return stamped(0, 20, None)

    source = ScriptedSource([first, lambda source: stamped(20, 40, None)])
    daemon = daemon_with(source)
    daemon.install_signal_handlers()
    assert daemon.run() == 0
    assert not daemon.detector.is_warmed_up
    stopped = signum != signal.SIGUSR1
    assert source.commits[-1] == {TP: 20 if stopped else 40}
    assert daemon.detector.n_seen == (20 if stopped else 40)
