"""Codec: every bad input has its reason; records carry exactly the contract's fields."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgmm import events
from streamgmm.events import REASONS, decode_batch
from streamgmm.records import (
    DEAD_LETTER_FIELDS,
    OUTLIER_FIELDS,
    SCORE_FIELDS,
    encode_dead_letter,
    encode_outlier,
    encode_score_record,
    encode_score_records,
)


def one(value, fields=("x",), key_field=None, max_bytes=1 << 20):
    batch = decode_batch([value], list(fields), key_field, max_bytes)
    return batch


def error_of(value, fields=("x",), max_bytes=1 << 20):
    batch = one(value, fields, max_bytes=max_bytes)
    assert batch.X.shape == (0, len(fields))
    (err,) = batch.errors
    assert err.index == 0
    assert err.reason in REASONS
    return err


# ---------------------------------------------------------------------------
# good events


def test_flat_fields_become_one_float_matrix_in_field_order():
    batch = decode_batch(
        [b'{"b": 2, "a": 1.5}', b'{"a": -3, "b": 4e2, "c": "ignored"}'], ["b", "a"], None, 1024
    )
    assert batch.X.dtype == np.float64
    assert batch.X.tolist() == [[2.0, 1.5], [400.0, -3.0]]
    assert batch.ok_index.tolist() == [0, 1]
    assert batch.errors == []
    assert batch.events[1] == {"a": -3, "b": 4e2, "c": "ignored"}


def test_dotted_paths_walk_nested_objects_and_arrays():
    value = b'{"host": {"cpu": {"user": 0.25}}, "disks": [{"busy": 3}, {"busy": 7}]}'
    batch = one(value, ["host.cpu.user", "disks.1.busy"])
    assert batch.X.tolist() == [[0.25, 7.0]]


def test_a_key_spelled_with_dots_is_found_too():
    batch = one(b'{"cpu.user": 0.5, "mem": {"used.pct": 12}}', ["cpu.user", "mem.used.pct"])
    assert batch.X.tolist() == [[0.5, 12.0]]


def test_utf8_bom_is_accepted():
    assert one(b'\xef\xbb\xbf{"x": 1}').X.tolist() == [[1.0]]


def test_big_integers_that_fit_a_float_are_accepted():
    assert one(b'{"x": 123456789012345678901234567890}').X.tolist() == [[1.2345678901234568e29]]


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (b'{"x": 1, "host": "web-1"}', "web-1"),
        (b'{"x": 1, "host": 42}', "42"),
        (b'{"x": 1, "host": true}', "true"),
        (b'{"x": 1, "host": {"b": 1, "a": [2]}}', '{"a":[2],"b":1}'),
        (b'{"x": 1, "host": null}', None),
        (b'{"x": 1}', None),
    ],
)
def test_key_field_is_text_or_none_and_never_an_error(payload, key):
    batch = one(payload, key_field="host")
    assert batch.keys == [key]
    assert batch.errors == []


def test_nested_key_field():
    assert one(b'{"x": 1, "meta": {"host": "h"}}', key_field="meta.host").keys == ["h"]


def test_mixed_batch_keeps_input_indices():
    values = [b'{"x": 1}', b"nope", None, b'{"x": 2}', b'{"x": "2"}', b'{"x": 3}']
    batch = decode_batch(values, ["x"], None, 1024)
    assert batch.X.ravel().tolist() == [1.0, 2.0, 3.0]
    assert batch.ok_index.tolist() == [0, 3, 5]
    assert [(e.index, e.reason) for e in batch.errors] == [
        (1, "not_json"),
        (2, "empty"),
        (4, "not_numeric"),
    ]
    assert len(batch.events) == len(batch.keys) == 3


def test_empty_batch():
    batch = decode_batch([], ["a", "b"], "k", 10)
    assert batch.X.shape == (0, 2) and batch.ok_index.shape == (0,) and batch.errors == []


# ---------------------------------------------------------------------------
# every class of bad input, with its reason label and a sentence


@pytest.mark.parametrize(
    ("value", "reason", "message"),
    [
        (None, "empty", "no value"),
        (b"", "empty", "no value"),
        (b"\xff\xfe{}", "not_utf8", "byte 0xff at position 0"),
        (b'{"x": "caf\xe9"}', "not_utf8", "not UTF-8 text"),
        (b'{"x": 1', "not_json", "not valid JSON"),
        (b"hello", "not_json", "line 1 column 1"),
        (b"[" * 100_000, "not_json", "JSON"),
        (b"[1, 2]", "not_object", "is a JSON array"),
        (b"42", "not_object", "is a JSON number"),
        (b'"x"', "not_object", "is a JSON string"),
        (b"null", "not_object", "is a JSON null"),
        (b'{"y": 1}', "missing_field", "field 'x' is missing"),
        (b'{"x": null}', "missing_field", "field 'x' is null"),
        (b'{"x": "3.5"}', "not_numeric", 'only JSON numbers are accepted: send 3.5, not "3.5"'),
        (b'{"x": "n/a"}', "not_numeric", 'is a string ("n/a"), but only JSON numbers are accepted'),
        (b'{"x": true}', "not_numeric", "is a boolean (true), expected a JSON number"),
        (b'{"x": [1]}', "not_numeric", "is an array"),
        (b'{"x": {"v": 1}}', "not_numeric", "is an object"),
        (b'{"x": NaN}', "not_finite", "is NaN"),
        (b'{"x": Infinity}', "not_finite", "is Infinity"),
        (b'{"x": -Infinity}', "not_finite", "is -Infinity"),
        (b'{"x": 1e400}', "not_finite", "Infinity (or beyond the 64-bit float range)"),
        (b'{"x": 1' + b"0" * 400 + b"}", "not_finite", "too large for a 64-bit float"),
    ],
)
def test_each_bad_input_has_its_reason_and_a_sentence(value, reason, message):
    err = error_of(value)
    assert err.reason == reason
    assert message in err.error, err.error


def test_oversize_is_rejected_before_parsing():
    err = error_of(b'{"x": 1, "pad": "' + b"a" * 100 + b'"}', max_bytes=64)
    assert err.reason == "oversize"
    assert "over the limit of 64 bytes" in err.error


def test_nested_path_problems_say_where_they_stop():
    err = error_of(b'{"a": {"c": 1}}', fields=["a.b"])
    assert err.error == "field 'a.b' is missing ('a' has no key 'b')"
    err = error_of(b'{"a": 5}', fields=["a.b"])
    assert err.error == "field 'a.b' is missing ('a' is a number, not an object)"
    err = error_of(b'{"a": [1]}', fields=["a.3"])
    assert "('a' has 1 items, no item 3)" in err.error


def test_every_problem_of_an_event_is_listed_and_the_first_names_the_reason():
    err = error_of(b'{"b": "1", "c": false}', fields=["a", "b", "c"])
    assert err.reason == "missing_field"
    assert err.error.count(";") == 2
    for name in ("'a'", "'b'", "'c'"):
        assert name in err.error


def test_reason_labels_are_the_documented_set():
    """The table of events.py's docstring (the reference) lists REASONS, in order."""
    table = events.__doc__.split("==============  ", 3)[2]  # the rows of the table
    documented = re.findall(r"^(\w+) +\S", table, flags=re.M)
    assert tuple(documented) == REASONS
    assert len(REASONS) == 8 and "not_finite" in REASONS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=64)), max_size=8))
def test_decode_never_raises_on_arbitrary_bytes(values):
    batch = decode_batch(values, ["a", "b.c"], "k", 48)
    assert batch.X.shape[0] + len(batch.errors) == len(values)
    assert np.isfinite(batch.X).all()
    assert all(e.reason in REASONS and e.error for e in batch.errors)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c", "k"]), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, max_size=6))
def test_decode_never_raises_on_arbitrary_json(docs):
    values = [json.dumps(d).encode() for d in docs]
    batch = decode_batch(values, ["a", "b.c"], "k", 1 << 16)
    assert batch.X.shape[0] + len(batch.errors) == len(values)
    assert np.isfinite(batch.X).all()
    for row, i in zip(batch.X, batch.ok_index, strict=True):
        doc = docs[i]
        assert row[0] == doc["a"] and row[1] == doc["b"]["c"]


# ---------------------------------------------------------------------------
# records out: exactly the contract's fields

DESIGN = Path(__file__).resolve().parents[2].parent / "shared" / "DESIGN.md"


def outlier(**over):
    args = dict(
        topic="events",
        partition=2,
        offset=41,
        timestamp_ms=1_700_000_000_000,
        key="web-1",
        event={"cpu": 0.9, "mem": 3},
        log_likelihood=-31.5,
        score=31.5,
        threshold=20.0,
        component=np.int64(1),
        responsibilities=np.array([0.1, 0.9]),
        mahalanobis=6.2,
        contributions={"cpu": 5.9, "mem": np.float64(-0.3)},
        surprise={"cpu": 17.25, "mem": np.float64(1.5)},
        expected={"cpu": 0.4, "mem": 3.1},
        model_events_seen=12_000,
        detected_at=1_700_000_000.1234,
    )
    args.update(over)
    return json.loads(encode_outlier(**args))


def test_outlier_record_has_exactly_the_design_fields_in_order():
    rec = outlier()
    assert tuple(rec) == OUTLIER_FIELDS
    # in the order of docs/records.md's table, one row per field (the first names three)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "records.md").read_text()
    section = docs.split("## Outlier record", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`[^|]+`) \|", section, flags=re.M)
    documented = [name.strip(" `") for row in rows for name in row.split(",")]
    assert tuple(documented) == OUTLIER_FIELDS
    assert rec["event"] == {"cpu": 0.9, "mem": 3}
    assert rec["component"] == 1 and rec["responsibilities"] == [0.1, 0.9]
    assert rec["contributions"] == {"cpu": 5.9, "mem": -0.3}
    assert rec["surprise"] == {"cpu": 17.25, "mem": 1.5}
    assert rec["expected"] == {"cpu": 0.4, "mem": 3.1}
    assert rec["detected_at"] == "2023-11-14T22:13:20.123Z"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", outlier(detected_at=None)["detected_at"]
    )


@pytest.mark.skipif(not DESIGN.exists(), reason="shared/DESIGN.md not beside the repository")
def test_record_fields_are_those_named_in_design_md():
    text = DESIGN.read_text()
    section = text[text.index("### Records") :]
    outlier_text = section[section.index("Outlier") : section.index("Dead letter")]
    dead_text = section[section.index("Dead letter") : section.index("###", 10)]
    named = set(re.findall(r"([a-z_]+)[`,]", outlier_text.replace("`", ",")))
    # added by section 6 ("Field surprise": outlier records gain `surprise` and `expected`)
    added = {"surprise", "expected"}
    assert all(f"`{name}`" in text for name in added)
    assert set(OUTLIER_FIELDS) <= named | {"key"} | added
    for name in ("topic", "partition", "offset", "timestamp_ms", "error", "payload"):
        assert name in dead_text and name in DEAD_LETTER_FIELDS


def test_non_finite_floats_are_written_as_null_never_as_nan():
    raw = encode_outlier(
        topic="t",
        partition=0,
        offset=0,
        timestamp_ms=None,
        key=None,
        event={"x": float("nan"), "deep": [float("inf")]},
        log_likelihood=float("-inf"),
        score=float("inf"),
        threshold=float("nan"),
        component=0,
        responsibilities=[float("nan"), 1.0],
        mahalanobis=float("inf"),
        contributions={"x": float("nan")},
        surprise={"x": float("inf")},
        expected={"x": float("nan")},
        model_events_seen=0,
        detected_at=0,
    )
    text = raw.decode()
    assert "NaN" not in text and "Infinity" not in text
    rec = json.loads(text)
    assert rec["event"] == {"x": None, "deep": [None]}
    assert rec["log_likelihood"] is None and rec["responsibilities"] == [None, 1.0]
    assert rec["contributions"] == rec["surprise"] == rec["expected"] == {"x": None}


def test_outlier_embeds_an_event_that_stdlib_parsed_with_a_huge_integer():
    rec = outlier(event={"x": 10**30, "n": 10**400})
    assert rec["event"]["x"] == 10**30


def dead_letter(reason: str, payload: bytes | None, **over) -> dict:
    args = {"topic": "t", "partition": 0, "offset": 0, "timestamp_ms": None, "error": "e"}
    return json.loads(encode_dead_letter(**{**args, **over}, reason=reason, payload=payload))


def test_dead_letter_keeps_utf8_payload_as_text():
    rec = dead_letter(
        "missing_field",
        '{"x": null, "name": "café"}'.encode(),
        topic="events",
        partition=1,
        offset=7,
        timestamp_ms=5,
        error="field 'x' is null",
    )
    assert tuple(rec) == DEAD_LETTER_FIELDS
    assert rec["payload"] == '{"x": null, "name": "café"}'
    assert rec["payload_encoding"] == "utf-8"
    assert rec["reason"] == "missing_field" and rec["error"] == "field 'x' is null"
    assert rec["payload_bytes"] == len('{"x": null, "name": "café"}'.encode())
    assert rec["payload_truncated"] is False


def test_dead_letter_base64_for_binary_and_null_for_tombstones():
    binary = bytes(range(256))
    rec = dead_letter("not_utf8", binary)
    assert rec["payload_encoding"] == "base64"
    assert base64.b64decode(rec["payload"]) == binary
    rec = dead_letter("empty", None)
    assert rec["payload"] is None and rec["payload_encoding"] is None


def test_dead_letter_truncates_huge_payloads_on_a_character_boundary():
    payload = ("é" * 100).encode()  # 200 bytes, 2 per character
    rec = dead_letter("oversize", payload, max_payload_bytes=11)
    assert rec["payload"] == "é" * 5
    assert rec["payload_truncated"] is True and rec["payload_bytes"] == 200


def test_dead_letter_for_every_decode_error_round_trips():
    values = [None, b"\xff", b"{", b"[]", b"{}", b'{"x":"1"}', b'{"x":1e999}', b"x" * 40]
    batch = decode_batch(values, ["x"], None, 32)
    assert {e.reason for e in batch.errors} == set(REASONS)
    for e in batch.errors:
        rec = dead_letter(e.reason, values[e.index], offset=e.index, error=e.error)
        assert rec["offset"] == e.index and rec["reason"] == e.reason


def test_score_record_fields_and_batch_form_agree():
    single = json.loads(
        encode_score_record(
            topic="t",
            partition=0,
            offset=3,
            timestamp_ms=9,
            key="k",
            log_likelihood=-2.5,
            score=2.5,
            threshold=10.0,
            outlier=False,
            component=np.int64(0),
            responsibilities=np.array([1.0, 0.0]),
            model_events_seen=7,
        )
    )
    assert tuple(single) == SCORE_FIELDS
    batch = encode_score_records(
        topics=["t", "t"],
        partitions=[0, 0],
        offsets=[3, 4],
        timestamps_ms=[9, None],
        keys=["k", None],
        log_likelihood=np.array([-2.5, -np.inf]),
        score=np.array([2.5, np.inf]),
        threshold=10.0,
        outlier=np.array([False, True]),
        component=np.array([0, 1]),
        responsibilities=np.array([[1.0, 0.0], [np.nan, 1.0]]),
        model_events_seen=7,
    )
    assert json.loads(batch[0]) == single
    second = json.loads(batch[1])
    assert second["log_likelihood"] is None and second["outlier"] is True
    assert second["responsibilities"] == [None, 1.0]
    assert all(math.isfinite(v) for v in json.loads(batch[0])["responsibilities"])


SCORE_ROWS = [
    dict(
        key="k",
        timestamp_ms=9,
        log_likelihood=-2.5,
        score=2.5,
        outlier=False,
        component=np.int64(0),
        responsibilities=np.array([1.0, 0.0]),
    ),
    dict(
        key=None,
        timestamp_ms=None,
        log_likelihood=-np.inf,
        score=np.inf,
        outlier=True,
        component=1,
        responsibilities=np.array([np.nan, 1.0]),
    ),
    dict(
        key="café",
        timestamp_ms=0,
        log_likelihood=np.nan,
        score=np.float32(3.25),
        outlier=np.True_,
        component=np.int32(1),
        responsibilities=[np.inf, -np.inf],
    ),
]


@pytest.mark.parametrize("threshold", [10.0, float("nan")])
def test_score_record_is_the_batch_forms_row_to_the_byte(threshold):
    batch = encode_score_records(
        topics=["t"] * len(SCORE_ROWS),
        partitions=[0, 1, 2],
        offsets=[3, 4, 5],
        timestamps_ms=[row["timestamp_ms"] for row in SCORE_ROWS],
        keys=[row["key"] for row in SCORE_ROWS],
        log_likelihood=np.array([row["log_likelihood"] for row in SCORE_ROWS]),
        score=np.array([row["score"] for row in SCORE_ROWS]),
        threshold=threshold,
        outlier=np.array([row["outlier"] for row in SCORE_ROWS]),
        component=np.array([row["component"] for row in SCORE_ROWS]),
        responsibilities=np.array([row["responsibilities"] for row in SCORE_ROWS]),
        model_events_seen=7,
    )
    for i, row in enumerate(SCORE_ROWS):
        single = encode_score_record(
            topic="t", partition=i, offset=3 + i, threshold=threshold, model_events_seen=7, **row
        )
        assert single == batch[i]
        assert b"NaN" not in single and b"Infinity" not in single


def test_every_record_field_is_documented_in_docs_records_md():
    text = (Path(__file__).resolve().parents[2] / "docs" / "records.md").read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    quoted = {name.strip() for span in re.findall(r"`([^`]+)`", prose) for name in span.split(",")}
    for section, fields in (
        ("## Outlier record", OUTLIER_FIELDS),
        ("## Dead letter", DEAD_LETTER_FIELDS),
        ("## Score record", SCORE_FIELDS),
    ):
        assert section in text
        assert set(fields) <= quoted, set(fields) - quoted


def test_integers_beyond_64_bits_are_numbers_and_beyond_float_are_dead_letters():
    # orjson refuses integers past 64 bits; the explaining parse reads them as floats
    batch = decode_batch(
        [
            b'{"a": 18446744073709551616, "b": -9223372036854775809, "c": 1}',
            b'{"a": ' + b"9" * 400 + b', "b": 1, "c": 1}',  # no float holds it
        ],
        ["a", "b", "c"],
    )
    np.testing.assert_array_equal(batch.X, [[2.0**64, -(2.0**63), 1.0]])
    assert [(error.index, error.reason) for error in batch.errors] == [(1, "not_finite")]
