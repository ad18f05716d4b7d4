"""Defects a first user met in the daemon's loop, held fixed in-process (no broker).

The scripted source of test_daemon_rebalance.py stands in for Kafka's
consumer; the integration tests (tests/integration/test_daemon_defects.py)
show the same on the real process and broker.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from test_daemon_rebalance import TP, ScriptedSource, daemon_with  # tests/unit is on sys.path

from streamgmm.daemon import FUTURE_TOLERANCE_S
from streamgmm.sources import Record


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
