"""Records out: outlier, dead-letter and score records as compact JSON, built per batch.

Every record is UTF-8 JSON with exactly the fields of ``OUTLIER_FIELDS``,
``DEAD_LETTER_FIELDS`` or ``SCORE_FIELDS``, in that order (docs/records.md);
a float that is NaN or infinite is written as ``null``, never as an invalid
JSON token. :func:`outlier_records` builds a batch's outlier records from
what :func:`~streamgmm.events.decode_batch` and the detector returned: the
daemon only sends them.

Examples
--------
>>> from types import SimpleNamespace
>>> import numpy as np
>>> from streamgmm.events import decode_batch
>>> source = [SimpleNamespace(topic="t", partition=0, offset=o, timestamp=1000, value=v)
...           for o, v in enumerate([b'{"x": 1, "id": "a"}', b'{"x": 90, "id": "b"}'])]
>>> decoded = decode_batch([r.value for r in source], ["x"], "id")
>>> result = SimpleNamespace(is_outlier=np.array([False, True]),
...     log_likelihood=np.array([-1.0, -40.0]), score=np.array([1.0, 40.0]),
...     threshold=np.array([9.0, 9.0]), component=np.array([0, 0]),
...     responsibilities=np.ones((2, 1)), mahalanobis=np.array([0.1, 8.9]),
...     contributions=np.array([[0.1], [8.9]]), surprise=np.array([[1.0], [40.0]]),
...     expected=np.array([[1.0], [1.0]]))
>>> [(o.index, o.key) for o in outlier_records(source, decoded, result, ["x"], 10)]
[(1, 'b')]
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np
import orjson

from .events import REASONS, Decoded

__all__ = [
    "DEAD_LETTER_FIELDS",
    "DEAD_LETTER_REASONS",
    "MODEL_ERROR",
    "OUTLIER_FIELDS",
    "SCORE_FIELDS",
    "OutlierRecord",
    "encode_dead_letter",
    "encode_outlier",
    "encode_score_record",
    "encode_score_records",
    "outlier_records",
    "rfc3339_ms",
]

# ---------------------------------------------------------------------------
# the contract: reasons and record fields, spelled once

#: The dead-letter reason of the events of a batch the model raised on (the daemon's
#: loop goes on); not a decoding error, so not among ``events.REASONS``.
MODEL_ERROR = "model_error"

#: Every ``reason`` a dead letter can carry.
DEAD_LETTER_REASONS = (*REASONS, MODEL_ERROR)

#: Outlier record fields, in order (DESIGN.md "Records").
OUTLIER_FIELDS = (
    "topic",
    "partition",
    "offset",
    "timestamp_ms",
    "key",
    "event",
    "log_likelihood",
    "score",
    "threshold",
    "component",
    "responsibilities",
    "mahalanobis",
    "contributions",
    "surprise",
    "expected",
    "model_events_seen",
    "detected_at",
)

#: Dead-letter record fields, in order. ``payload`` is the raw value as text when it
#: is UTF-8 (``payload_encoding`` "utf-8"), else base64 ("base64"); ``payload_bytes``
#: is its full size and ``payload_truncated`` says whether ``payload`` was cut short.
DEAD_LETTER_FIELDS = (
    "topic",
    "partition",
    "offset",
    "timestamp_ms",
    "error",
    "reason",
    "payload",
    "payload_encoding",
    "payload_bytes",
    "payload_truncated",
)

#: Score record fields (the optional every-event stream), in order.
SCORE_FIELDS = (
    "topic",
    "partition",
    "offset",
    "timestamp_ms",
    "key",
    "log_likelihood",
    "score",
    "threshold",
    "outlier",
    "component",
    "responsibilities",
    "model_events_seen",
)

#: Dead letters keep at most this many bytes of the payload by default, so that a
#: record about an oversize event is not itself too large to publish.
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024


# ---------------------------------------------------------------------------
# one record


def rfc3339_ms(when: datetime | float | None = None) -> str:
    """RFC 3339 UTC timestamp with millisecond precision (``...T12:00:00.123Z``).

    >>> rfc3339_ms(0.5)
    '1970-01-01T00:00:00.500Z'
    """
    if when is None:
        when = datetime.now(timezone.utc)
    elif not isinstance(when, datetime):
        when = datetime.fromtimestamp(float(when), timezone.utc)
    elif when.tzinfo is None:
        raise ValueError("detected_at must be timezone-aware (UTC)")
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _floats(values: Any) -> list[float | None]:
    array = np.asarray(values, dtype=np.float64).ravel()
    out = array.tolist()
    if not np.isfinite(array).all():
        out = [v if math.isfinite(v) else None for v in out]
    return out


def _sanitize(value: Any) -> Any:
    """Replace non-finite floats anywhere in a JSON value by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sanitize(v) for v in value]
    return value


def _dumps(record: dict) -> bytes:
    try:
        return orjson.dumps(record)  # writes NaN and infinities as null
    except (TypeError, orjson.JSONEncodeError):
        pass  # e.g. an integer beyond 64 bits in an event: the standard library copes
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        record = _sanitize(record)
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a "\ud800" escape in the event:
        # written as the same escape again (valid JSON, not valid UTF-8 text otherwise)
        return json.dumps(record, separators=(",", ":"), allow_nan=False).encode("ascii")


def encode_outlier(
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: str | None,
    event: Mapping[str, Any],
    log_likelihood: float,
    score: float,
    threshold: float,
    component: int,
    responsibilities: Sequence[float] | np.ndarray,
    mahalanobis: float,
    contributions: Mapping[str, float],
    surprise: Mapping[str, float],
    expected: Mapping[str, float],
    model_events_seen: int,
    detected_at: datetime | float | None = None,
) -> bytes:
    """One outlier record as JSON bytes (fields: :data:`OUTLIER_FIELDS`).

    Parameters
    ----------
    event : dict
        The original payload, embedded as is (non-finite floats become null).
    responsibilities : array-like of shape (n_components,)
        Soft membership of the event in each component.
    contributions : mapping of field name to float
        Standardised residual of each field against the best component.
    surprise : mapping of field name to float
        ``-log p(x_j | x_-j)`` of each field in nats: the highest is the odd
        field given the others.
    expected : mapping of field name to float
        ``E[x_j | x_-j]``, what the model expected of each field given the
        others, in the field's units.
    detected_at : datetime (UTC), epoch seconds, or None for now

    >>> rec = json.loads(encode_outlier(topic="t", partition=0, offset=5, timestamp_ms=1,
    ...     key=None, event={"x": 9}, log_likelihood=float("-inf"), score=float("inf"),
    ...     threshold=12.5, component=1, responsibilities=[0.25, 0.75], mahalanobis=4.0,
    ...     contributions={"x": 4.0}, surprise={"x": 9.1}, expected={"x": 1.5},
    ...     model_events_seen=10, detected_at=0))
    >>> rec["log_likelihood"], rec["responsibilities"], rec["detected_at"]
    (None, [0.25, 0.75], '1970-01-01T00:00:00.000Z')
    """
    values = (
        topic,
        _int(partition),
        _int(offset),
        _int(timestamp_ms),
        key,
        event,
        _float(log_likelihood),
        _float(score),
        _float(threshold),
        _int(component),
        _floats(responsibilities),
        _float(mahalanobis),
        {str(k): _float(v) for k, v in contributions.items()},
        {str(k): _float(v) for k, v in surprise.items()},
        {str(k): _float(v) for k, v in expected.items()},
        _int(model_events_seen),
        rfc3339_ms(detected_at),
    )
    return _dumps(dict(zip(OUTLIER_FIELDS, values, strict=True)))


def encode_dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    error: str,
    reason: str,
    payload: bytes | None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> bytes:
    """One dead-letter record as JSON bytes (fields: :data:`DEAD_LETTER_FIELDS`).

    ``payload`` is embedded as text when it is valid UTF-8, else as base64;
    at most ``max_payload_bytes`` of it are kept (``payload_truncated`` says so).

    >>> rec = json.loads(encode_dead_letter(topic="t", partition=0, offset=3,
    ...     timestamp_ms=None, error="the message is not UTF-8 text", reason="not_utf8",
    ...     payload=b"\\xff\\x00"))
    >>> rec["payload"], rec["payload_encoding"], rec["payload_bytes"]
    ('/wA=', 'base64', 2)
    """
    if payload is None:
        text, encoding, size, truncated = None, None, 0, False
    else:
        raw = bytes(payload)
        size = len(raw)
        truncated = size > max_payload_bytes
        kept = raw[:max_payload_bytes]
        try:
            raw.decode("utf-8")  # the whole payload decides the encoding
            # a cut may split the last character: drop its partial bytes
            text, encoding = kept.decode("utf-8", errors="ignore"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    values = (
        topic,
        _int(partition),
        _int(offset),
        _int(timestamp_ms),
        error,
        reason,
        text,
        encoding,
        size,
        truncated,
    )
    return _dumps(dict(zip(DEAD_LETTER_FIELDS, values, strict=True)))


def encode_score_record(
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: str | None,
    log_likelihood: float,
    score: float,
    threshold: float,
    outlier: bool,
    component: int,
    responsibilities: Sequence[float] | np.ndarray,
    model_events_seen: int,
) -> bytes:
    """One score record (every event's view) as JSON bytes (fields: :data:`SCORE_FIELDS`).

    The one-row case of :func:`encode_score_records`, which alone spells the layout.
    """
    (record,) = encode_score_records(
        topics=[topic],
        partitions=[partition],
        offsets=[offset],
        timestamps_ms=[timestamp_ms],
        keys=[key],
        log_likelihood=[log_likelihood],
        score=[score],
        threshold=threshold,
        outlier=[outlier],
        component=[component],
        responsibilities=[responsibilities],
        model_events_seen=model_events_seen,
    )
    return record


def encode_score_records(
    *,
    topics: Sequence[str],
    partitions: Sequence[int],
    offsets: Sequence[int],
    timestamps_ms: Sequence[int | None],
    keys: Sequence[str | None],
    log_likelihood: Sequence[float] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    threshold: float | Sequence[float] | np.ndarray,
    outlier: Sequence[bool] | np.ndarray,
    component: Sequence[int] | np.ndarray,
    responsibilities: Sequence[Sequence[float]] | np.ndarray,
    model_events_seen: int | Sequence[int] | np.ndarray,
) -> list[bytes]:
    """Score records for a whole batch; the vectorised form of :func:`encode_score_record`.

    Parameters
    ----------
    log_likelihood, score : array-like of shape (n,)
    threshold : float or array-like of shape (n,)
        The threshold in force for each event (one for all, or one each).
    outlier : array-like of shape (n,), bool
    component : array-like of shape (n,), int
    responsibilities : array-like of shape (n, n_components)
    model_events_seen : int or array-like of shape (n,)
        Events the model of each event had seen (one for all, or one each).
    """
    ll = _floats(log_likelihood)
    sc = _floats(score)
    resp = np.asarray(responsibilities, dtype=np.float64)
    resp_rows = resp.tolist() if np.isfinite(resp).all() else [_floats(r) for r in resp]
    thr = _floats(np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(ll),)))
    flags = np.asarray(outlier, dtype=bool).tolist()
    comps = np.asarray(component).astype(int).tolist()
    seen = np.broadcast_to(np.asarray(model_events_seen, dtype=np.int64), (len(ll),)).tolist()
    out = []
    for i in range(len(ll)):
        values = (
            topics[i],
            int(partitions[i]),
            int(offsets[i]),
            _int(timestamps_ms[i]),
            keys[i],
            ll[i],
            sc[i],
            thr[i],
            flags[i],
            comps[i],
            resp_rows[i],
            seen[i],
        )
        out.append(_dumps(dict(zip(SCORE_FIELDS, values, strict=True))))
    return out


# ---------------------------------------------------------------------------
# a batch's records


class OutlierRecord(NamedTuple):
    """One outlier of a batch: its index in the batch's input, its event key, its record."""

    index: int
    key: str | None
    value: bytes


def outlier_records(
    records: Sequence[Any],
    decoded: Decoded,
    result: Any,
    fields: Sequence[str],
    model_events_seen: int | np.ndarray,
    detected_at: datetime | float | None = None,
) -> list[OutlierRecord]:
    """The outlier records of one batch, in input order.

    Parameters
    ----------
    records : sequence of source records, length n
        With ``topic``, ``partition``, ``offset`` and ``timestamp`` (ms).
    decoded : Decoded
        The batch decoded; its rows (n_ok) are what the model scored.
    result : BatchResult
        The detector's answer for ``decoded.X``: ``is_outlier`` of shape (n_ok,)
        and, per row, the scores and explanations an outlier record carries
        (``contributions``, ``surprise`` and ``expected`` of shape (n_ok, d)).
    fields : sequence of str, length d
        The feature names, which key the per-field explanations.
    model_events_seen : int or array of shape (n_ok,)
        Events the model had seen (one for all, or per row: each partition's own model).
    detected_at : datetime (UTC), epoch seconds, or None for now
        One time for the whole batch.
    """
    if detected_at is None:
        detected_at = datetime.now(timezone.utc)
    seen = np.broadcast_to(np.asarray(model_events_seen, dtype=np.int64), result.is_outlier.shape)
    out = []
    for row in np.flatnonzero(result.is_outlier):
        index = int(decoded.ok_index[row])
        record = records[index]
        key = decoded.keys[row]
        value = encode_outlier(
            topic=record.topic, partition=record.partition, offset=record.offset,
            timestamp_ms=record.timestamp, key=key, event=decoded.events[row],
            log_likelihood=result.log_likelihood[row], score=result.score[row],
            threshold=result.threshold[row], component=result.component[row],
            responsibilities=result.responsibilities[row], mahalanobis=result.mahalanobis[row],
            contributions=dict(zip(fields, result.contributions[row].tolist(), strict=True)),
            surprise=dict(zip(fields, result.surprise[row].tolist(), strict=True)),
            expected=dict(zip(fields, result.expected[row].tolist(), strict=True)),
            model_events_seen=int(seen[row]), detected_at=detected_at,
        )  # fmt: skip
        out.append(OutlierRecord(index, key, value))
    return out
