"""The daemon's offsets across rebalances, with a scripted source (no broker).

The model reflects every event up to the daemon's in-memory positions; a
partition that comes back after a rebalance must resume there, not at an
older committed offset (which would teach the model the same events twice).
The integration tests show the same on real brokers
(tests/integration/test_reliability_broker.py).
"""

from __future__ import annotations

import json

import pytest

from tests.support.scripted import TP, ScriptedSource, daemon_with, records

#: decoded in the loop, or (600 events: a large batch) by the child while the next poll runs
BATCHES = pytest.mark.parametrize(
    "n, decode_process", [(300, False), (600, True)], ids=["in-loop", "in-flight"]
)


@BATCHES
def test_partitions_lost_and_given_back_resume_where_the_model_is(n, decode_process):
    """Evicted from the group (a frozen process, a broker restarted with its data) after
    reading up to n while the group's committed offset is 100: when the partition comes
    back, reading resumes at n, not at 100 (the model already learnt 100..n-1), also
    when the batch was still being decoded as the rebalance began."""

    def first(source):
        source.assign({TP})
        return records(0, n)

    def evicted_and_back(source):
        source.lose({TP})
        source.assign({TP})

    source = ScriptedSource([first, evicted_and_back], group_committed={TP: 100})
    daemon = daemon_with(source, decode_process)
    assert daemon.run() == 0
    assert source.seeks[0] == {TP: 100}  # first assignment: the group's offset
    assert source.seeks[1] == {TP: n}, "the lost partition must resume where the model is"
    assert daemon.detector.n_seen == n - n // 70


@BATCHES
def test_partitions_revoked_and_given_back_resume_where_the_model_is(n, decode_process):
    """A revocation commits first (the batch being decoded included); the partition then
    resumes at the committed position."""

    def first(source):
        source.assign({TP})
        return records(0, n)

    def revoked_and_back(source):
        source.on_revoke({TP})
        source.assigned = set()
        source.assign({TP})

    source = ScriptedSource([first, revoked_and_back])
    daemon = daemon_with(source, decode_process)
    assert daemon.run() == 0
    assert source.commits[0] == {TP: n}
    assert source.seeks[-1] == {TP: n}
    assert daemon.detector.n_seen == n - n // 70


def test_decoding_in_a_child_changes_no_record_and_no_metric():
    """The same batches through the daemon with and without the decoding process: the
    same outliers (events embedded), dead letters, model and counts."""

    def batches(source):
        if not source.assigned:
            source.assign({TP})
        start = 700 * (3 - len(source.steps))
        return records(start, start + 700)

    runs = []
    for decode_process in (False, True):
        source = ScriptedSource([batches] * 4)
        daemon = daemon_with(source, decode_process)
        assert daemon.run() == 0
        outliers = [json.loads(line) for line in daemon.written["outliers"].getvalue().splitlines()]
        for record in outliers:
            record.pop("detected_at")
        dead = daemon.written["dead_letter"].getvalue()
        counts = {s: daemon.metrics.events_total.labels(status=s)._value.get()
                  for s in ("scored", "warmup", "invalid")}  # fmt: skip
        runs.append((outliers, dead, daemon.detector.n_seen, counts,
                     daemon.detector.model.means_.tobytes()))  # fmt: skip
        assert daemon.metrics.decoder_failures_total._value.get() == 0
    assert runs[0][0], "the stream has outliers to compare"
    assert runs[0][1].count(b"\n") == 2800 // 70
    assert runs[1] == runs[0]
