"""The bad input corpus: malformed events, and odd but valid ones, with their expected fate.

Shared by tests/unit/test_bad_input_codec.py (the codec) and
tests/integration/test_reliability_bad_input.py (the live daemon).
"""

from __future__ import annotations

import json

from streamgmm.events import MAX_DEPTH

MAX_BYTES = 1 << 20  # the default of source.kafka.max_message_bytes


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
    ("lone surrogates in text", b'{"a": 1, "b": 2, "c": 3, "host": "\\ud800", "z": "\\udfff"}',
     [1.0, 2.0, 3.0]),
    ("nesting at the limit", event()[:-1] + b', "z": ' + nested(MAX_DEPTH - 1) + b"}",
     [1.0, 2.0, 3.0]),
]  # fmt: skip
