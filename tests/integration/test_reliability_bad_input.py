"""Bad input campaign through the live daemon on the real broker.

After a warm-up on normal events, the daemon receives a stream of nothing
but bad events: the corpus of tests/bad_inputs.py plus seeded random
mutations of valid events (kept when the codec rejects them). Each must
become a dead letter with its reason, the daemon must keep running, and the
model must not move: the checkpointed detector state before and after is
identical, and events_total{status="invalid"} counts them. Then odd but
valid events, among them outliers carrying lone surrogates and 511 levels
of nesting, must be scored and published without stopping the daemon.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections import Counter

import numpy as np
import pytest

from streamgmm.events import MAX_DEPTH, decode_batch
from tests.support.events import anomaly, normal_events
from tests.support.faults import (
    ends_of,
    model_statistics,
    produce_events,
    read_json,
    wait_checkpoint_at,
)
from tests.support.processes import DaemonProcess, write_config

from ..bad_inputs import MALFORMED, ODD_BUT_VALID, event, nested
from ..figures import record

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

FIELDS = ["a", "b", "c"]
MAX_MESSAGE_BYTES = 250_000  # the daemon's limit here; the 100k-level events fit under it


def mutations(rng: random.Random, n: int) -> list[bytes]:
    """Valid events damaged at random: truncated, a byte flipped, junk inserted, retyped."""
    out = []
    while len(out) < n:
        raw = event(host=f"h{rng.randrange(9)}", id=rng.randrange(10**6))
        how = rng.choice(["truncate", "flip", "insert", "retype", "drop"])
        if how == "truncate":
            raw = raw[: rng.randrange(len(raw))]
        elif how == "flip":
            i = rng.randrange(len(raw))
            raw = raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1 :]
        elif how == "insert":
            i = rng.randrange(len(raw))
            raw = raw[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))) + raw[i:]
        elif how == "retype":
            value = rng.choice([b'"1.0"', b"true", b"[1]", b"{}", b"null", b"NaN", b"1e999"])
            field = rng.choice(FIELDS).encode()
            raw = re.sub(rb'"%s": [^,}]+' % field, b'"%s": %s' % (field, value), raw, count=1)
        else:
            raw = raw.replace(b'"b": 2.0, ', b"", 1)
        if decode_batch([raw], FIELDS, "host", MAX_MESSAGE_BYTES).errors:
            out.append(raw)  # only the ones the codec rejects: this batch is all bad
    return out


def test_bad_events_become_dead_letters_and_never_move_the_model(tmp_path, broker, unique):
    topics = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    broker.create_topics([topics["events"]], partitions=2)
    broker.create_topics([topics["outliers"], topics["dead"]], partitions=1)
    config, port = write_config(
        tmp_path,
        broker.bootstrap,
        topics,
        unique("g"),
        source__kafka__max_message_bytes=MAX_MESSAGE_BYTES,
        checkpoint__interval_s=0.5,
    )
    checkpoint = tmp_path / "state" / "model.npz"
    daemon = DaemonProcess(config, port, tmp_path / "daemon.log")
    rng = np.random.default_rng(21)
    ends = ends_of(produce_events(broker.bootstrap, topics["events"], normal_events(rng, 1000)))
    before = wait_checkpoint_at(daemon, checkpoint, topics["events"], ends, 30)

    # 1. nothing but bad events
    corpus = [(raw, reason) for name, raw, reason in MALFORMED if reason != "oversize"]
    corpus.append((event(pad="x" * (MAX_MESSAGE_BYTES + 1)), "oversize"))
    generated = mutations(random.Random(5), 300)
    expected = {}
    for raw in generated:
        (error,) = decode_batch([raw], FIELDS, "host", MAX_MESSAGE_BYTES).errors
        expected.setdefault(error.reason, 0)
        expected[error.reason] += 1
    for _, reason in corpus:
        expected[reason] = expected.get(reason, 0) + 1
    values = [raw for raw, _ in corpus] + generated
    coords = produce_events(broker.bootstrap, topics["events"], values)
    ends = ends_of(coords, ends)
    after = wait_checkpoint_at(daemon, checkpoint, topics["events"], ends, 30)
    assert daemon.process.poll() is None
    stats_before, stats_after = model_statistics(before), model_statistics(after)
    assert stats_before.keys() == stats_after.keys()
    changed = [k for k in stats_before if not np.array_equal(stats_before[k], stats_after[k])]
    assert not changed, f"bad events changed the model: {changed}"

    dead = read_json(broker, topics["dead"], 20, expected=len(values))
    assert len(dead) == len(values), f"{len(dead)} dead letters for {len(values)} bad events"
    assert Counter(d["reason"] for d in dead) == Counter(expected)
    sent = dict(zip(coords, values, strict=True))
    for d in dead:
        raw = sent[(d["partition"], d["offset"])]
        assert d["error"] and d["topic"] == topics["events"]
        assert d["payload_bytes"] == (0 if raw is None else len(raw))
        if raw and not d["payload_truncated"]:
            kept = d["payload"].encode() if d["payload_encoding"] == "utf-8" else (
                base64.b64decode(d["payload"]))  # fmt: skip
            assert kept == raw
    assert daemon.metric("streamgmm_events_total", 'status="invalid"') == len(values)
    for reason, count in expected.items():
        assert daemon.metric("streamgmm_dead_letters_total", f'reason="{reason}"') == count

    # 2. odd but valid events are learnt, and outliers that carry the oddities are published
    odd = [raw for _, raw, _ in ODD_BUT_VALID]
    poison = [
        json.dumps(anomaly(900_001))[:-1].encode() + b', "host": "\\ud800", "z": "\\udfff"}',
        json.dumps(anomaly(900_002))[:-1].encode() + b', "z": ' + nested(MAX_DEPTH - 2) + b"}",
        json.dumps(anomaly(900_003))[:-1].encode() + b', "host": ' + nested(MAX_DEPTH - 2) + b"}",
    ]
    ends = ends_of(produce_events(broker.bootstrap, topics["events"], odd + poison), ends)
    final = wait_checkpoint_at(daemon, checkpoint, topics["events"], ends, 30)
    assert final["detector"]["n_seen"] == before["detector"]["n_seen"] + len(odd) + len(poison)
    outliers = read_json(broker, topics["outliers"], 10)
    ids = {o["event"].get("id") for o in outliers}
    assert {900_001, 900_002, 900_003} <= ids, "outliers with odd content must be published"
    surrogate = next(o for o in outliers if o["event"].get("id") == 900_001)
    assert surrogate["key"] == "\ud800" and surrogate["event"]["z"] == "\udfff"
    assert daemon.get("/readyz")[0] == 200
    assert daemon.terminate() == 0, daemon.log_tail()
    record(
        "bad_input",
        inputs_corpus=len(corpus),
        inputs_generated=len(generated),
        dead_letters=len(dead),
        reasons=dict(sorted(expected.items())),
        model_changed_by_bad_events=bool(changed),
        odd_but_valid_events=len(odd) + len(poison),
        daemon_stopped=False,
    )
