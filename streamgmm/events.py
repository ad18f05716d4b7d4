"""Bytes in, a feature matrix out: the events of one batch decoded at once.

Decoding turns a whole poll of raw message values into one float matrix
(``decode_batch``), so the model sees a batch, never single events. Every
value that cannot be used becomes an error with two descriptions: ``error``,
a sentence for a person ("field 'cpu' is a string ("3.5"); ...") and
``reason``, a short label for the ``dead_letters_total{reason}`` metric:

==============  ==========================================================
reason          when
==============  ==========================================================
empty           no value at all (a tombstone) or zero bytes
oversize        more bytes than ``max_bytes``; not parsed
not_utf8        not valid UTF-8 text
not_json        not valid JSON, or nested more than ``MAX_DEPTH`` (512) levels
not_object      valid JSON, but not an object (an array, a number, ...)
missing_field   a field is absent or null
not_numeric     a field is a string, a boolean, an object or an array
not_finite      a field is NaN, Infinity, or too large for a 64-bit float
==============  ==========================================================

(The dead letters of a batch the model raised on carry one more reason,
``model_error``: see :mod:`streamgmm.records`.)

Fields are dotted paths into the event: ``host.cpu`` reads
``{"host": {"cpu": 0.5}}``. A part that is a number indexes an array
(``disks.0.busy``). When walking the path fails, a key spelled with the
dots (``{"host.cpu": 0.5}``) is accepted too.

Only JSON numbers are features. Numeric strings such as ``"3.5"`` are
rejected, not converted: a producer sending strings is usually sending
something else too (units, ``"n/a"``), and silently parsing some of them
would hide that. Booleans are not numbers either.

One path: every value goes through the same steps (orjson parses it, one
getter reads its fields, they must be JSON numbers), the whole batch at once
or, when a step fails on the batch, event by event; an event they cannot
read is parsed by :func:`parse_event` and read field by field, which says
what is wrong or finds the row through the fallbacks above. The decoding
process (:mod:`streamgmm.decode_worker`) runs this same function, and the
loop parses the events it embeds with :func:`parse_event`.

Examples
--------
>>> batch = decode_batch(
...     [b'{"host": "a", "cpu": 0.5, "mem": {"used": 2}}', b'{"cpu": "3.5", "mem": {"used": 1}}',
...      b"\\xff", None],
...     fields=["cpu", "mem.used"], key_field="host", max_bytes=1024)
>>> batch.X.tolist(), batch.ok_index.tolist(), batch.keys
([[0.5, 2.0]], [0], ['a'])
>>> for e in batch.errors:
...     print(e.index, e.reason)
1 not_numeric
2 not_utf8
3 empty
>>> batch.errors[0].error
'field \\'cpu\\' is a string ("3.5"), but only JSON numbers are accepted: send 3.5, not "3.5"'
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress
from operator import itemgetter, not_
from typing import Any, NamedTuple

import numpy as np
import orjson

__all__ = [
    "MAX_DEPTH",
    "REASONS",
    "DecodeError",
    "Decoded",
    "decode_batch",
    "parse_event",
]

#: Machine labels of unusable events (the ``reason`` of dead letters and metrics).
REASONS = (
    "empty",
    "oversize",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "not_numeric",
    "not_finite",
)

#: Deepest nesting of objects and arrays accepted in an event (its own object counts).
#: orjson parses 1,023 levels, the standard library about 1,000 and writes fewer: below
#: both, acceptance never depends on the parser, and an accepted event always fits
#: into its outlier record (a record that cannot be written would stop the daemon).
MAX_DEPTH = 512


# ---------------------------------------------------------------------------
# decoding


class DecodeError(NamedTuple):
    """One unusable event: its index in the batch, the reason label, the explanation."""

    index: int
    reason: str
    error: str


@dataclass(frozen=True)
class Decoded:
    """The usable part of a batch, and why the rest was not usable.

    Attributes
    ----------
    X : ndarray of shape (n_ok, n_fields), float64
        Feature rows of the events that decoded, in input order.
    ok_index : ndarray of shape (n_ok,), intp
        Index in the input of each row of ``X``.
    keys : list of (str or None), length n_ok
        The key field of each row (``None`` when absent or not configured).
    events : sequence of dict, length n_ok
        The parsed payload of each row, to embed in outlier records (parsed
        on demand when the batch was decoded in another process).
    errors : list of DecodeError
        The events that did not decode, in input order.
    """

    X: np.ndarray
    ok_index: np.ndarray
    keys: list[str | None] = field(default_factory=list)
    events: Sequence[dict] = field(default_factory=list)
    errors: list[DecodeError] = field(default_factory=list)


class _Bad(Exception):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason, self.error = reason, error


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "ao" else f"a {kind}"


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _walk(obj: Any, parts: tuple[str, ...], name: str) -> Any:
    """Resolve a dotted path with array indexes and literal-dot fallback, or raise _Bad."""
    node = obj
    for i, part in enumerate(parts):
        if isinstance(node, dict):
            if part in node:
                node = node[part]
                continue
            rest = ".".join(parts[i:])
            if rest in node:  # a key spelled with dots
                return node[rest]
            where = f"'{'.'.join(parts[:i])}' has no key '{part}'" if i else ""
            raise _Bad(
                "missing_field", f"field '{name}' is missing" + (f" ({where})" if where else "")
            )
        if isinstance(node, list) and part.isdigit():
            if int(part) < len(node):
                node = node[int(part)]
                continue
            raise _Bad(
                "missing_field",
                f"field '{name}' is missing ('{'.'.join(parts[:i])}' has "
                f"{len(node)} items, no item {part})",
            )
        raise _Bad(
            "missing_field",
            f"field '{name}' is missing ('{'.'.join(parts[:i])}' is {_a(_json_type(node))}, "
            "not an object)",
        )
    return node


def _as_number(value: Any, name: str) -> float:
    kind = _json_type(value)
    if value is None:
        raise _Bad("missing_field", f"field '{name}' is null")
    if kind == "string":
        hint = ""
        try:
            number = float(value)
            if math.isfinite(number):
                hint = f": send {value.strip()}, not {_short(value)}"
        except ValueError:
            pass
        raise _Bad(
            "not_numeric",
            f"field '{name}' is a string ({_short(value)}), but only JSON numbers are "
            f"accepted{hint}",
        )
    if kind != "number":
        raise _Bad(
            "not_numeric",
            f"field '{name}' is {_a(kind)} ({_short(value)}), expected a JSON number",
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _Bad("not_finite", _not_finite(name, value))
    return number


def _explain(obj: Any, paths: Sequence[tuple[str, ...]], fields: Sequence[str]) -> list[float]:
    """The slow path: resolve every field with fallbacks; raise _Bad naming all problems."""
    if not isinstance(obj, dict):
        kind = _json_type(obj)
        raise _Bad(
            "not_object",
            f"the event is a JSON {kind} ({_short(obj)}), expected an object with the "
            f"fields {', '.join(fields)}",
        )
    row, problems = [], []
    for parts, name in zip(paths, fields, strict=True):
        try:
            row.append(_as_number(_walk(obj, parts, name), name))
        except _Bad as bad:
            problems.append(bad)
    if problems:
        raise _Bad(problems[0].reason, "; ".join(p.error for p in problems))
    return row


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (``{}`` is 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        deepest = max(deepest, level)
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _check_depth(raw: bytes, obj: Any) -> None:
    """Raise _Bad for an event nested deeper than MAX_DEPTH (cheap unless it has brackets)."""
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and isinstance(obj, (dict, list)):
        depth = _depth(obj)
        if depth > MAX_DEPTH:
            raise _Bad(
                "not_json",
                f"the message is JSON nested {depth} levels deep; at most {MAX_DEPTH} are accepted",
            )


def _not_finite(name: str, value: Any) -> str:
    if isinstance(value, int):
        return f"field '{name}' is too large for a 64-bit float"
    if math.isnan(value):
        return f"field '{name}' is NaN, expected a finite number"
    sign = "-" if value < 0 else ""
    return f"field '{name}' is {sign}Infinity (or beyond the 64-bit float range)"


def _key_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


_NUMBER_TYPES = frozenset((float, int))  # exactly: bool is an int subclass, not a number here


def _key_getter(key_field: str | None) -> Callable[[dict], str | None]:
    """The event's key as text, read by the dotted path ``key_field``; None if absent."""
    if not key_field:
        return lambda obj: None
    path = tuple(key_field.split("."))
    if len(path) == 1:
        return lambda obj: key if type(key := obj.get(key_field)) is str else _key_text(key)

    def nested(obj: dict) -> str | None:
        try:
            return _key_text(_walk(obj, path, key_field))
        except _Bad:
            return None

    return nested


def _parse_explained(raw: Any, max_bytes: int) -> Any:
    """bytes -> parsed JSON value by the standard library, or raise _Bad saying why."""
    if not raw:
        raise _Bad("empty", "the message has no value (empty, or a null tombstone)")
    if len(raw) > max_bytes:
        raise _Bad(
            "oversize",
            f"the message is {len(raw)} bytes, over the limit of {max_bytes} bytes "
            "(source.kafka.max_message_bytes); it was not parsed",
        )
    try:
        text = bytes(raw).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Bad(
            "not_utf8",
            f"the message is not UTF-8 text (byte 0x{raw[exc.start]:02x} at position "
            f"{exc.start} is invalid)",
        ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(
            "not_json",
            f"the message is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except RecursionError:
        raise _Bad(
            "not_json",
            f"the message is JSON nested too deeply to parse; at most {MAX_DEPTH} levels "
            "are accepted",
        ) from None
    except ValueError as exc:  # e.g. an integer with too many digits
        raise _Bad("not_json", f"the message is not usable JSON: {exc}") from None
    _check_depth(raw, obj)
    return obj


def parse_event(raw: Any, max_bytes: int = 1 << 20) -> Any:
    """One value parsed as :func:`decode_batch` parses it (its event, for a usable one).

    orjson parses; a value it refuses is parsed by the standard library, which
    accepts a few more (a byte order mark, a lone surrogate escape, NaN, an
    integer beyond 64 bits) and otherwise raises an error saying why.
    """
    if not raw or len(raw) > max_bytes:
        return _parse_explained(raw, max_bytes)
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return _parse_explained(raw, max_bytes)
    if len(raw) > MAX_DEPTH:  # shorter events cannot nest that deep
        _check_depth(raw, obj)
    return obj


def _field_getter(paths: Sequence[tuple[str, ...]]) -> Callable[[dict], Any]:
    """obj -> the values at ``paths`` (length d), by plain lookups: raises where the
    path needs a fallback (an array index, a key spelled with dots) or is missing."""
    if all(len(parts) == 1 for parts in paths):
        names = [parts[0] for parts in paths]
        if len(names) > 1:
            return itemgetter(*names)
        (name,) = names
        return lambda obj: (obj[name],)
    first = paths[0][0]
    if all(len(parts) > 1 and parts[0] == first for parts in paths):  # m.cpu, m.mem, ...
        inner = _field_getter([parts[1:] for parts in paths])
        return lambda obj: inner(obj[first])

    def nested(obj: dict) -> list:
        row = []
        for parts in paths:
            node = obj
            for part in parts:
                node = node[part]
            row.append(node)
        return row

    return nested


def _event_reader(pick: Callable[[dict], Any], max_bytes: int) -> Callable[[Any], Any]:
    """raw -> (row, event) of one value usable as it is, else None (then
    :func:`parse_event` and :func:`_explain` say why, or find the row via fallbacks)."""

    def read_one(raw: Any) -> tuple[Any, dict] | None:
        try:
            if not raw or len(raw) > max_bytes:
                return None
            obj = orjson.loads(raw)
            if type(obj) is not dict:
                return None
            row = pick(obj)
            if not _NUMBER_TYPES.issuperset(map(type, row)):
                return None
            if len(raw) > MAX_DEPTH:  # shorter events cannot nest that deep
                _check_depth(raw, obj)
        except Exception:
            return None
        return row, obj

    return read_one


def _read_clean(
    values: Sequence[Any], pick: Callable[[dict], Any], max_bytes: int
) -> tuple[list, list[dict]]:
    """Rows and events of values that are all usable as they are; raise on anything else.

    The steps of :func:`_event_reader`, each over the whole batch at once (no
    Python-level step per event): the form for the common batch.
    """
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    if not len(values) or not lengths.all() or lengths.max() > max_bytes:
        raise _Bad("", "")
    events = list(map(orjson.loads, values))
    if not all(type(event) is dict for event in events):
        raise _Bad("", "")
    rows = list(map(pick, events))
    if not _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(rows))):
        raise _Bad("", "")
    for i in np.flatnonzero(lengths > MAX_DEPTH):  # shorter events cannot nest that deep
        _check_depth(values[i], events[i])
    return rows, events


def decode_batch(
    values: Sequence[bytes | None],
    fields: Sequence[str],
    key_field: str | None = None,
    max_bytes: int = 1 << 20,
) -> Decoded:
    """Decode a batch of JSON message values into one feature matrix.

    Never raises on bad input: every unusable value becomes a
    :class:`DecodeError` with its index, reason label and explanation.

    Parameters
    ----------
    values : sequence of bytes or None, length n
        Raw message values (``None`` for a tombstone).
    fields : sequence of str, length d
        Dotted paths of the numeric features, in column order.
    key_field : str or None
        Dotted path of the event key copied into outlier records; a missing
        key is ``None``, not an error.
    max_bytes : int
        Larger values are rejected as ``oversize`` without being parsed.

    Returns
    -------
    Decoded
        ``X`` of shape (n_ok, d) and the bookkeeping to map rows back to input.
    """
    names = list(fields)
    paths = [tuple(name.split(".")) for name in names]
    pick = _field_getter(paths)
    d = len(names)
    errors: list[DecodeError] = []
    try:
        rows, events = _read_clean(values, pick, max_bytes)
        ok: list[int] = list(range(len(values)))
    except Exception:  # something unusual: event by event, the same steps
        read = list(map(_event_reader(pick, max_bytes), values))
        for i in list(compress(range(len(values)), map(not_, read))):  # the ones not read
            try:  # say exactly what is wrong, or find the row via fallbacks
                obj = parse_event(values[i], max_bytes)
                read[i] = (_explain(obj, paths, names), obj)
            except _Bad as bad:
                errors.append(DecodeError(i, bad.reason, bad.error))
            except Exception as exc:  # pragma: no cover - a decoder must never raise
                errors.append(DecodeError(i, "not_json", f"the message cannot be decoded: {exc}"))
        ok = list(compress(range(len(values)), read))
        usable = list(compress(read, read))
        rows, events = list(map(itemgetter(0), usable)), list(map(itemgetter(1), usable))
    keys = list(map(_key_getter(key_field), events))

    if not rows:
        return Decoded(np.empty((0, d)), np.empty(0, dtype=np.intp), [], [], errors)
    try:
        X = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float64: convert row by row
        X = np.empty((len(rows), d))
        for r, row in enumerate(rows):
            for c, v in enumerate(row):
                try:
                    X[r, c] = float(v)
                except OverflowError:
                    X[r, c] = np.inf
    ok_index = np.asarray(ok, dtype=np.intp)
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite)
        for r in bad_rows:
            cols = np.flatnonzero(~np.isfinite(X[r]))
            what = "; ".join(_not_finite(names[c], rows[r][c]) for c in cols)
            errors.append(DecodeError(int(ok_index[r]), "not_finite", what))
        errors.sort(key=lambda e: e.index)
        keep = np.flatnonzero(finite)
        X = X[keep]
        ok_index = ok_index[keep]
        keys = [keys[r] for r in keep]
        events = [events[r] for r in keep]
    return Decoded(X, ok_index, keys, events, errors)
