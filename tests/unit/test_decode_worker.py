"""Decoding in a child process: the same answers as in the loop, and nothing lost when it fails."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from streamgmm.decode_worker import MIN_BATCH, Decoder
from streamgmm.events import decode_batch

FIELDS = ["cpu", "mem.used"]
KEY = "host"
MAX_BYTES = 4096


def batch(seed: int, n: int = 2 * MIN_BATCH) -> list:
    """Mostly good events, with one of every kind of bad one mixed in."""
    rng = np.random.default_rng(seed)
    values: list = [
        json.dumps({"host": f"h{i}", "cpu": float(x), "mem": {"used": float(y)}, "i": i}).encode()
        for i, (x, y) in enumerate(rng.normal(size=(n, 2)))
    ]
    bad = [None, b"", b"\xff", b"{", b"[1]", b'{"cpu": 1}', b'{"cpu": "1", "mem": {"used": 1}}',
           b'{"cpu": NaN, "mem": {"used": 1}}', b'{"cpu": 1e999, "mem": {"used": 1}}',
           b"x" * (MAX_BYTES + 1),
           b'\xef\xbb\xbf{"cpu": 2, "mem": {"used": 3}, "host": "bom"}']  # fmt: skip
    for j, value in enumerate(bad):
        values[(j * 97 + seed) % n] = value
    return values


def assert_same(got, want) -> None:
    np.testing.assert_array_equal(got.X, want.X)
    np.testing.assert_array_equal(got.ok_index, want.ok_index)
    assert got.keys == want.keys
    assert got.errors == want.errors
    assert len(got.events) == len(want.events)
    assert list(got.events) == list(want.events)


@pytest.fixture
def child_decoder():
    failures: list[str] = []
    decoder = Decoder(FIELDS, KEY, MAX_BYTES, workers=1, on_failure=failures.append)
    decoder.failures = failures
    yield decoder
    decoder.close()


def test_the_child_decodes_as_the_loop_does(child_decoder):
    values = [batch(seed) for seed in range(3)]
    pending = [child_decoder.submit(v) for v in values]  # three in flight at once
    assert all(p.elsewhere for p in pending)
    for p, v in zip(pending, values, strict=True):
        assert_same(p.result(), decode_batch(v, FIELDS, KEY, MAX_BYTES))
        assert not p.elsewhere
    assert child_decoder.failures == []


def test_results_taken_out_of_order_are_still_each_batch_s_own(child_decoder):
    values = [batch(seed) for seed in range(2)]
    first, second = (child_decoder.submit(v) for v in values)
    assert_same(second.result(), decode_batch(values[1], FIELDS, KEY, MAX_BYTES))
    assert_same(first.result(), decode_batch(values[0], FIELDS, KEY, MAX_BYTES))


def test_small_batches_and_workers_0_stay_in_the_loop():
    small = batch(0, MIN_BATCH - 1)
    for decoder in (Decoder(FIELDS, KEY, MAX_BYTES, workers=1),
                    Decoder(FIELDS, KEY, MAX_BYTES, workers=0)):  # fmt: skip
        values = small if decoder.workers else batch(0)
        pending = decoder.submit(values)
        assert not pending.elsewhere
        assert decoder.pid is None, "no process for work the loop does itself"
        assert_same(pending.result(), decode_batch(values, FIELDS, KEY, MAX_BYTES))


def test_a_killed_child_loses_no_batch_and_is_replaced(child_decoder):
    values = [batch(seed) for seed in range(2)]
    pending = [child_decoder.submit(v) for v in values]
    pid = child_decoder.pid
    os.kill(pid, signal.SIGKILL)
    for p, v in zip(pending, values, strict=True):
        assert_same(p.result(), decode_batch(v, FIELDS, KEY, MAX_BYTES))
    assert len(child_decoder.failures) == 1
    assert "ended (exit code" in child_decoder.failures[0]

    again = child_decoder.submit(values[0])
    assert again.elsewhere and child_decoder.pid not in (None, pid)
    assert_same(again.result(), decode_batch(values[0], FIELDS, KEY, MAX_BYTES))
    assert len(child_decoder.failures) == 1


def test_a_child_that_stops_answering_is_replaced(child_decoder):
    child_decoder.timeout_s = 0.5
    child_decoder.submit(batch(0)).result()  # started and answering
    pid = child_decoder.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        values = batch(1)
        pending = child_decoder.submit(values)
        assert_same(pending.result(), decode_batch(values, FIELDS, KEY, MAX_BYTES))
    finally:
        gone(pid) or os.kill(pid, signal.SIGCONT)
    assert len(child_decoder.failures) == 1
    assert "did not answer within" in child_decoder.failures[0]
    assert gone(pid), "the stuck process is killed and reaped, not left behind"


def test_close_stops_the_child(child_decoder):
    child = child_decoder.submit(batch(0))
    process = child_decoder._child.process
    child_decoder.close()
    assert process.returncode == 0, "at the end of its input, the child ends cleanly"
    assert not child.elsewhere, "a batch not yet taken is finished before the child stops"


def test_the_child_ignores_the_signals_meant_for_the_daemon(child_decoder):
    """systemd's SIGTERM (and a terminal's Ctrl-C or hang-up) reach the whole group: the
    child must still answer the batch the daemon finishes before stopping."""
    child_decoder.submit(batch(0)).result()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        os.kill(child_decoder.pid, signum)
    values = batch(1)
    assert_same(child_decoder.submit(values).result(), decode_batch(values, FIELDS, KEY, MAX_BYTES))
    assert child_decoder.failures == []


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_clean_batch_and_keys_json_cannot_encode_come_back_intact(child_decoder):
    values = batch(5)
    values = [v for v in values if v and v.startswith(b'{"host"')]  # no tombstone: bytes only
    values[3] = b'{"host": "\\ud800 lone", "cpu": 1, "mem": {"used": 2}}'  # a lone surrogate
    values[4] = b'{"host": "\\u00e9\\u4e2d", "cpu": 1, "mem": {"used": 2}}'
    assert len(values) >= MIN_BATCH
    got = child_decoder.submit(values).result()
    assert_same(got, decode_batch(values, FIELDS, KEY, MAX_BYTES))
    assert got.keys[3] == "\ud800 lone" and got.keys[4] == "é中"


def test_values_that_are_not_bytes_are_decoded_in_the_loop(child_decoder):
    values = [v.decode() if isinstance(v, bytes) and v.isascii() else v for v in batch(6)]
    pending = child_decoder.submit(values)
    assert not pending.elsewhere
    assert_same(pending.result(), decode_batch(values, FIELDS, KEY, MAX_BYTES))
    assert child_decoder.failures == []


def test_answers_larger_than_the_pipe_are_read_while_the_next_request_is_written():
    """Two batches of 760 events of 200 nested fields, one after the other: 5 MiB of
    request each, 1.2 MiB of answer, more than a pipe holds. The child blocks writing its
    first answer while the loop writes the second request: unless the loop reads answers
    as it writes, each waits for the other until the 30 s timeout."""
    fields = [f"g{g}.f{f}" for g in range(20) for f in range(10)]
    rng = np.random.default_rng(8)
    batches = [
        [json.dumps({"host": f"h{i}", **{f"g{g}": {f"f{f}": float(row[10 * g + f])
                                                  for f in range(10)} for g in range(20)},
                     "padding": "x" * 3000}).encode()
         for i, row in enumerate(rng.normal(size=(760, 200)))]
        for _ in range(2)
    ]  # fmt: skip
    assert sum(map(len, batches[0])) > 5 << 20
    failures: list[str] = []
    decoder = Decoder(fields, KEY, 1 << 16, workers=1, on_failure=failures.append)
    try:
        started = time.monotonic()
        pending = [decoder.submit(values) for values in batches]
        results = [p.result() for p in pending]
        elapsed = time.monotonic() - started
    finally:
        decoder.close()
    assert failures == [], failures
    assert all(p.values is v for p, v in zip(pending, batches, strict=True))
    for got, values in zip(results, batches, strict=True):
        assert got.X.nbytes > 1 << 20  # an answer larger than the pipe
        assert_same(got, decode_batch(values, fields, KEY, 1 << 16))
    assert elapsed < 10, f"{elapsed:.1f} s: the loop and the child waited for each other"
