"""Bad input campaign, decoding side: a corpus of malformed events, and generated ones.

What the daemon does with an event is decided here: it is decoded into a
feature row, or it becomes a dead letter with a reason label (the metric)
and a sentence (for a person). Every event that decodes must also be
writable into its outlier and score records, and every one that does not
into its dead letter: a record that cannot be written would stop the
daemon, and on restart it would read the same event again (a poison pill).
The whole-batch steps and the event-by-event ones must agree.

tests/integration/test_reliability_bad_input.py sends the same corpus
through the live daemon.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgmm import events as events_module
from streamgmm.events import MAX_DEPTH, REASONS, decode_batch, parse_event
from streamgmm.records import encode_dead_letter, encode_outlier, encode_score_records

_spec = importlib.util.spec_from_file_location(
    "bad_inputs", Path(__file__).resolve().parents[1] / "bad_inputs.py"
)
bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad_inputs)
MALFORMED, ODD_BUT_VALID = bad_inputs.MALFORMED, bad_inputs.ODD_BUT_VALID
MAX_BYTES, event, nested = bad_inputs.MAX_BYTES, bad_inputs.event, bad_inputs.nested

FIELDS = ["a", "b", "c"]


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
        "surprise": dict.fromkeys(FIELDS, 40.0),
        "expected": dict.fromkeys(FIELDS, 1.0),
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
ODD_TEXT = st.lists(  # JSON string content: any character, escaped lone surrogates, quotes
    st.characters(codec="utf-8") | st.sampled_from(["\\ud800", "\\udfff", '\\"']),
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


CLEAN_EVENT = st.fixed_dictionaries(
    {name: st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))
     for name in FIELDS},
    optional={
        "host": st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.none(),
                          st.lists(st.integers(), max_size=2)),
        "z": st.text(max_size=3),
    },
).map(lambda event: json.dumps(event).encode())  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(CLEAN_EVENT, CLEAN_EVENT, CLEAN_EVENT, events()), min_size=1, max_size=8),
    st.sampled_from(["host", None, "host.name"]),
)
def test_the_whole_batch_path_decodes_exactly_as_the_per_event_path(values, key_field):
    fast = decode_batch(values, FIELDS, key_field, 1 << 16)

    def refuse(*args):
        raise ValueError("event by event")

    with patch.object(events_module, "_read_clean", refuse):
        each = decode_batch(values, FIELDS, key_field, 1 << 16)
    assert_same_decoding(fast, each)
    # each event alone, and each usable event parsed again as the loop parses the events
    # of a batch the decoding process decoded: the same answers
    alone = [decode_batch([value], FIELDS, key_field, 1 << 16) for value in values]
    assert [i for i, one in enumerate(alone) if len(one.X)] == fast.ok_index.tolist()
    assert [(i, *e[1:]) for i, one in enumerate(alone) for e in one.errors] == fast.errors
    assert [parse_event(values[i], 1 << 16) for i in fast.ok_index] == list(fast.events)


def assert_same_decoding(got, want) -> None:
    assert got.X.tobytes() == want.X.tobytes() and got.X.shape == want.X.shape
    assert got.ok_index.tolist() == want.ok_index.tolist()
    assert got.keys == want.keys and list(got.events) == list(want.events)
    assert got.errors == want.errors


def test_a_clean_batch_takes_the_whole_batch_path():
    values = [json.dumps({"a": i, "b": 2.5, "c": -3, "host": f"h{i}"}).encode() for i in range(3)]
    pick = events_module._field_getter([(name,) for name in FIELDS])
    rows, _ = events_module._read_clean(values, pick, 1 << 16)
    assert [list(row) for row in rows] == [[i, 2.5, -3] for i in range(3)]
    with pytest.raises(ValueError):  # orjson's JSONDecodeError: then event by event
        events_module._read_clean([*values, b"{"], pick, 1 << 16)
    assert decode_batch(values, FIELDS, "host").keys == ["h0", "h1", "h2"]


def test_nested_fields_decode_the_same_whole_or_event_by_event():
    values = [json.dumps({"m": {"a": i, "b": [0.5, i]}, "c.d": 2, "host": {"name": f"h{i}"}})
              .encode() for i in range(4)]  # fmt: skip
    values.append(b'{"m": {"a": "1"}}')
    fields = ["m.a", "m.b.1", "c.d"]  # an array index and a key spelled with dots
    whole = decode_batch(values[:4], fields, "host.name")
    assert whole.X.tolist() == [[i, i, 2] for i in range(4)]
    assert whole.keys == ["h0", "h1", "h2", "h3"]
    mixed = decode_batch(values, fields, "host.name")
    assert mixed.X.tolist() == whole.X.tolist() and mixed.keys == whole.keys
    assert [e.reason for e in mixed.errors] == ["not_numeric"]


@pytest.mark.parametrize(
    "fields", [["m.a", "m.c"], ["m.c", "m.a", "z"], ["z", "m.a"], ["m.a", "m.b.0", "m.a"]]
)
def test_nested_fields_read_on_the_whole_batch_equal_the_explaining_path(fields):
    values = [json.dumps({"m": {"a": i, "c": 0.5 * i, "b": [i]}, "z": -i}).encode()
              for i in range(5)]  # fmt: skip
    whole = decode_batch(values, fields)

    def refuse(*args):
        raise ValueError("event by event")

    with (
        patch.object(events_module, "_read_clean", refuse),
        patch.object(events_module, "_event_reader", lambda *args: lambda raw: None),
    ):
        explained = decode_batch(values, fields)  # every event through the explaining path
    assert_same_decoding(whole, explained)
    assert len(whole.X) == 5
