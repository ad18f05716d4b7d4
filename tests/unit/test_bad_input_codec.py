"""Bad input campaign, codec side: a corpus of malformed events, and generated ones.

What the daemon does with an event is decided here: it is decoded into a
feature row, or it becomes a dead letter with a reason label (the metric)
and a sentence (for a person). Every event that decodes must also be
writable into its outlier and score records, and every one that does not
into its dead letter: a record that cannot be written would stop the
daemon, and on restart it would read the same event again (a poison pill).
Both parsers of the fast path (orjson, the standard library) must agree.

tests/integration/test_reliability_bad_input.py sends the same corpus
through the live daemon.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgmm import codec
from streamgmm.codec import (
    MAX_DEPTH,
    REASONS,
    decode_batch,
    encode_dead_letter,
    encode_outlier,
    encode_score_records,
)

FIELDS = ["a", "b", "c"]
BACKENDS = ["stdlib"] + (["orjson"] if codec._orjson is not None else [])
MAX_BYTES = 1 << 20  # the default of source.kafka.max_message_bytes


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request, monkeypatch):
    """Every test runs with each fast-path parser: the outcome must not depend on it."""
    if request.param == "stdlib":
        monkeypatch.setattr(codec, "_fast_loads", codec._stdlib_loads)
    return request.param


def nested(depth: int, leaf: bytes = b"1", opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + leaf + closer * depth


def event(**extra) -> bytes:
    return json.dumps({"a": 1.0, "b": 2.0, "c": 3.0, **extra}).encode()


#: (name, raw value, reason): every one must become a dead letter with that reason
MALFORMED = [
    ("tombstone", None, "empty"),
    ("empty", b"", "empty"),
    ("over max_message_bytes", event(pad="x" * MAX_BYTES), "oversize"),
    ("latin-1 bytes", b'{"a": 1, "b": 2, "c": "caf\xe9"}', "not_utf8"),
    ("binary", bytes(range(256)), "not_utf8"),
    ("UTF-16 JSON", '{"a": 1, "b": 2, "c": 3}'.encode("utf-16"), "not_utf8"),
    ("truncated JSON", b'{"a": 1, "b": 2, "c": 3', "not_json"),
    ("plain text", b"cpu=1 mem=2", "not_json"),
    ("single quotes", b"{'a': 1, 'b': 2, 'c': 3}", "not_json"),
    ("trailing garbage", event() + b" {}", "not_json"),
    ("NUL after the object", event() + b"\x00", "not_json"),
    ("comment", b'{"a": 1, /* x */ "b": 2, "c": 3}', "not_json"),
    ("hex number", b'{"a": 0x10, "b": 2, "c": 3}', "not_json"),
    ("100k levels of [", b"[" * 100_000, "not_json"),
    ("100k nested arrays, closed", nested(100_000), "not_json"),
    ("deep array in a side field", event()[:-1] + b', "z": ' + nested(MAX_DEPTH + 1) + b"}",
     "not_json"),
    ("deep object in a side field",
     event()[:-1] + b', "z": ' + nested(MAX_DEPTH + 1, b"1", b'{"y":', b"}") + b"}", "not_json"),
    ("deep array as the key", event()[:-1] + b', "host": ' + nested(1010) + b"}", "not_json"),
    ("integer of 5000 digits", b'{"a": ' + b"9" * 5000 + b', "b": 2, "c": 3}', "not_json"),
    ("an array", b"[1.0, 2.0, 3.0]", "not_object"),
    ("a number", b"1.5", "not_object"),
    ("a string", b'"a=1"', "not_object"),
    ("JSON null", b"null", "not_object"),
    ("missing field", b'{"a": 1, "b": 2}', "missing_field"),
    ("null field", b'{"a": 1, "b": 2, "c": null}', "missing_field"),
    ("fields under another name", b'{"A": 1, "B": 2, "C": 3}', "missing_field"),
    ("numeric string", b'{"a": "1.5", "b": 2, "c": 3}', "not_numeric"),
    ("boolean", b'{"a": true, "b": 2, "c": 3}', "not_numeric"),
    ("list where a number is expected", b'{"a": [1, 2], "b": 2, "c": 3}', "not_numeric"),
    ("object where a number is expected", b'{"a": {"v": 1}, "b": 2, "c": 3}', "not_numeric"),
    ("NaN literal", b'{"a": NaN, "b": 2, "c": 3}', "not_finite"),
    ("Infinity literal", b'{"a": Infinity, "b": 2, "c": 3}', "not_finite"),
    ("-Infinity literal", b'{"a": -Infinity, "b": 2, "c": 3}', "not_finite"),
    ("1e400", b'{"a": 1e400, "b": 2, "c": 3}', "not_finite"),
    ("-1e400", b'{"a": -1e400, "b": 2, "c": 3}', "not_finite"),
    ("integer beyond float64", b'{"a": 1' + b"0" * 400 + b', "b": 2, "c": 3}', "not_finite"),
]  # fmt: skip

#: (name, raw value, expected row): odd but valid events, accepted as documented
ODD_BUT_VALID = [
    ("extra fields", event(host="h1", note="anything", nested={"x": [1, {"y": None}]}),
     [1.0, 2.0, 3.0]),
    ("UTF-8 byte order mark", b"\xef\xbb\xbf" + event(), [1.0, 2.0, 3.0]),
    # duplicate keys: the last one wins, with both parsers (as in JavaScript and Python)
    ("duplicate keys", b'{"a": 1e9, "a": 1.0, "b": 2, "c": 3}', [1.0, 2.0, 3.0]),
    ("duplicate keys, first not a number", b'{"a": "x", "a": 1.0, "b": 2, "c": 3}',
     [1.0, 2.0, 3.0]),
    ("negative zero and underflow", b'{"a": -0.0, "b": 1e-400, "c": 3}', [0.0, 0.0, 3.0]),
    ("integers", b'{"a": 1, "b": -2, "c": 9007199254740993}', [1.0, -2.0, 9007199254740992.0]),
    ("whitespace around", b' \n\t' + event() + b"\r\n ", [1.0, 2.0, 3.0]),
    ("NaN in a side field", b'{"a": 1, "b": 2, "c": 3, "z": NaN}', [1.0, 2.0, 3.0]),
    ("nesting at the limit", event()[:-1] + b', "z": ' + nested(MAX_DEPTH - 1) + b"}",
     [1.0, 2.0, 3.0]),
]  # fmt: skip


def write_records(raw_values, batch) -> list[bytes]:
    """Every record the daemon would write for this batch; they must never raise."""
    out = []
    for e in batch.errors:
        where = {"topic": "events", "partition": 0, "offset": e.index, "timestamp_ms": None}
        out.append(
            encode_dead_letter(**where, error=e.error, reason=e.reason, payload=raw_values[e.index])
        )
    n = len(batch.X)
    flagged = {
        "log_likelihood": -1e3,
        "score": 1e3,
        "threshold": 10.0,
        "component": 0,
        "responsibilities": [1.0],
        "mahalanobis": 50.0,
        "contributions": dict.fromkeys(FIELDS, 9.0),
        "model_events_seen": 10,
    }
    for row in range(n):
        where = {"topic": "events", "partition": 0, "offset": int(batch.ok_index[row])}
        out.append(
            encode_outlier(
                **where, timestamp_ms=1, key=batch.keys[row], event=batch.events[row], **flagged
            )
        )
    out += encode_score_records(
        topics=["events"] * n, partitions=[0] * n, offsets=batch.ok_index.tolist(),
        timestamps_ms=[None] * n, keys=batch.keys, log_likelihood=np.zeros(n),
        score=np.zeros(n), threshold=1.0, outlier=np.zeros(n, bool),
        component=np.zeros(n, int), responsibilities=np.ones((n, 1)), model_events_seen=n,
    )  # fmt: skip
    for record in out:  # valid UTF-8 JSON, without NaN tokens
        json.loads(record.decode("utf-8"), parse_constant=lambda c: pytest.fail(c))
    return out


# ---------------------------------------------------------------------------
# the corpus


@pytest.mark.parametrize(("name", "raw", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_each_malformed_event_is_a_dead_letter_with_its_reason(name, raw, reason):
    batch = decode_batch([raw], FIELDS, "host", MAX_BYTES)
    assert batch.X.shape == (0, 3)
    (error,) = batch.errors
    assert (error.index, error.reason) == (0, reason), error.error
    assert len(error.error) > 15 and error.error[0].islower(), "a sentence for a person"
    (dead,) = write_records([raw], batch)
    assert json.loads(dead)["reason"] == reason


@pytest.mark.parametrize(("name", "raw", "row"), ODD_BUT_VALID, ids=[o[0] for o in ODD_BUT_VALID])
def test_odd_but_valid_events_are_accepted_and_can_be_written_back(name, raw, row):
    batch = decode_batch([raw], FIELDS, "host", 1 << 20)
    assert not batch.errors, batch.errors
    assert batch.X.tolist() == [row]
    write_records([raw], batch)


def test_the_whole_corpus_in_one_batch_keeps_every_index():
    values = [raw for _, raw, _ in MALFORMED] + [raw for _, raw, _ in ODD_BUT_VALID]
    batch = decode_batch(values, FIELDS, "host", MAX_BYTES)
    reasons = {e.index: e.reason for e in batch.errors}
    for i, (name, _, reason) in enumerate(MALFORMED):
        assert reasons.get(i) == reason, name
    assert batch.ok_index.tolist()[-len(ODD_BUT_VALID) :] == list(
        range(len(MALFORMED), len(values))
    )
    write_records(values, batch)


@pytest.mark.parametrize("depth", [1, 10, 100, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 1000,
                                   1023, 1024, 1025, 5000])  # fmt: skip
@pytest.mark.parametrize("where", ["side", "key"])
def test_nesting_limit_does_not_depend_on_the_parser(depth, where):
    """orjson parses 1023 levels, the standard library about 1000, its encoder less:
    the codec accepts at most MAX_DEPTH levels (counting the event's own object), whichever
    parser runs, so an accepted event always fits in its outlier record."""
    field = "z" if where == "side" else "host"
    raw = event()[:-1] + f', "{field}": '.encode() + nested(depth - 1, b"0") + b"}"
    batch = decode_batch([raw], FIELDS, "host", 1 << 20)
    if depth <= MAX_DEPTH:
        assert not batch.errors, batch.errors
    else:
        assert [e.reason for e in batch.errors] == ["not_json"]
        assert f"at most {MAX_DEPTH}" in batch.errors[0].error
    write_records([raw], batch)


# ---------------------------------------------------------------------------
# generated inputs

JSON_NUMBER = st.one_of(  # as JSON text
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e-400", "1" + "0" * 320]),
)
ODD_TEXT = st.lists(  # JSON string content: any character, escaped quotes
    st.characters(codec="utf-8") | st.sampled_from(['\\"']),
    max_size=8,
).map("".join)


@st.composite
def events(draw) -> bytes:
    """JSON-ish events: the right fields or not, numbers or not, odd text, odd nesting."""
    parts = []
    for name in draw(st.permutations(["a", "b", "c", "host", "z"])):
        if (draw(st.booleans()) and name in FIELDS) or draw(st.integers(0, 4)) == 0:
            kind = draw(st.sampled_from(["number", "number", "text", "null", "list", "deep"]))
            if kind == "number":
                value = draw(JSON_NUMBER)
            elif kind == "text":
                value = '"' + draw(ODD_TEXT).replace('"', "") + '"'
            elif kind == "null":
                value = "null"
            elif kind == "list":
                value = json.dumps(draw(st.lists(st.floats(allow_nan=False), max_size=3)))
            else:
                depth = draw(st.integers(1, 1100))
                value = "[" * depth + "]" * depth
            parts.append(f'"{name}": {value}')
    text = "{" + ", ".join(parts) + "}"
    raw = text.encode("utf-8")
    mutation = draw(st.sampled_from(["none", "none", "truncate", "flip", "insert"]))
    if mutation == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif mutation == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1 :]
    elif mutation == "insert":
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + draw(st.binary(max_size=4)) + raw[i:]
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(events(), st.none(), st.binary(max_size=40)), min_size=1, max_size=8))
def test_generated_events_never_raise_and_bad_ones_say_why(values):
    batch = decode_batch(values, FIELDS, "host", 1 << 16)
    assert len(batch.X) + len(batch.errors) == len(values)
    assert sorted(batch.ok_index.tolist() + [e.index for e in batch.errors]) == list(
        range(len(values))
    )
    assert np.isfinite(batch.X).all()
    for e in batch.errors:
        assert e.reason in REASONS
        assert e.error and not e.error.startswith("the message cannot be decoded"), e.error
    for row, i in zip(batch.X, batch.ok_index, strict=True):
        parsed = json.loads(values[i].decode("utf-8-sig"))
        assert row.tolist() == [float(parsed[f]) for f in FIELDS]
        assert all(math.isfinite(v) for v in row)
    write_records(values, batch)
