"""Versioned, pickle-free state files, written atomically.

A state is a nested dict whose leaves are numpy arrays or JSON values
(numbers, strings, booleans, None, lists of those). Arrays go into an
``.npz`` archive (read back with ``allow_pickle=False``); everything else,
plus the format version, the config fingerprint and a SHA-256 checksum of
every array and of the metadata, goes into one JSON member of the same
archive. Loading verifies all of it before returning anything, so a
truncated, tampered or mismatched file is refused whole, never loaded half.

Writes go to a temporary file in the same directory, are fsynced and then
renamed over the target, so a crash leaves either the old file or the new
one, never a mixture. The temporary file a crash left behind is deleted by
the next write of the same target, and by :func:`remove_leftovers` (the
daemon calls it when it starts).

The same states also travel as single byte strings, one Kafka record each
(:func:`pack_state` / :func:`unpack_state`, used by the compacted state topic
of :mod:`streamgmm.state_topic`). Both forms describe a state the same way:
:func:`_split` turns the nested dict into a JSON tree whose arrays are
replaced by ``{"__array__": path}`` plus a flat dict of arrays, and
:func:`_join` puts it back. A record is built for speed on small states
(one per entity, 100,000 per partition):

========  =====  ==========================================================
bytes     type   field
========  =====  ==========================================================
0-3       4s     magic ``b"SGMS"``
4-5       <H     record format version (:data:`RECORD_VERSION`)
6-9       <I     CRC-32 of every byte after this field
10-17     <q     next_offset: the input offset the state has learnt up to
18-21     <I     CRC-32 of the fingerprint's canonical JSON (0: none)
22-25     <I     length of the JSON metadata
26-       bytes  metadata (UTF-8 JSON): kind, values tree, array table
                 ``[[path, dtype, shape], ...]`` (and the head's full fingerprint)
...       bytes  the arrays' raw bytes, in the table's order
========  =====  ==========================================================

Examples
--------
>>> import tempfile, os, numpy as np
>>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
>>> save_state(path, {"model": {"means": np.eye(2)}, "n_seen": 7},
...            kind="example", fingerprint={"fields": ["a", "b"]})
>>> state = load_state(path, kind="example", fingerprint={"fields": ["a", "b"]})
>>> state["n_seen"], state["model"]["means"].tolist()
(7, [[1.0, 0.0], [0.0, 1.0]])
>>> load_state(path, kind="example", fingerprint={"fields": ["a", "c"]})
Traceback (most recent call last):
...
streamgmm.checkpoint.CheckpointMismatchError: ...
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT_VERSION = 1
_META = "__meta__"
_SEP = "/"


class CheckpointError(Exception):
    """A state file cannot be used; the message says why and what to do."""


class CheckpointCorruptError(CheckpointError):
    """The file is not a readable streamgmm state file (truncated, tampered, other format)."""


class CheckpointMismatchError(CheckpointError):
    """The file is intact but was written for another configuration or format version."""


# ---------------------------------------------------------------------------
# nested dict <-> flat arrays + JSON


def _split(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, np.ndarray], dict]:
    arrays: dict[str, np.ndarray] = {}
    values: dict[str, Any] = {}
    for key, value in state.items():
        if _SEP in key:
            raise ValueError(f"state key {key!r} must not contain {_SEP!r}")
        path = prefix + key
        if isinstance(value, dict):
            sub_arrays, sub_values = _split(value, path + _SEP)
            arrays.update(sub_arrays)
            values[key] = sub_values
        elif isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"state entry {path!r} is an object array; it cannot be saved")
            arrays[path] = value
            values[key] = {"__array__": path}
        elif isinstance(value, np.generic):
            values[key] = value.item()
        else:
            values[key] = value
    return arrays, values


def _join(values: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and set(value) == {"__array__"}:
            state[key] = arrays[value["__array__"]]
        elif isinstance(value, dict):
            state[key] = _join(value, arrays)
        else:
            state[key] = value
    return state


def _checksum(arrays: dict[str, np.ndarray], meta_without_checksum: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(meta_without_checksum, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(name.encode())
        digest.update(str(array.dtype.str).encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def fingerprint_difference(saved: dict[str, Any], expected: dict[str, Any], where: str) -> str:
    """``"fields: file ['a'] vs config ['b'], ..."``: the keys on which two fingerprints differ."""
    diffs = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
    return ", ".join(f"{k}: {where} {saved.get(k)!r} vs config {expected.get(k)!r}" for k in diffs)


# ---------------------------------------------------------------------------
# one state as one byte string (a Kafka record's value)

RECORD_VERSION = 1
RECORD_MAGIC = b"SGMS"
_HEADER = struct.Struct(
    "<4sHIqII"
)  # magic, version, crc32, next_offset, fingerprint crc, meta length
_CRC_FROM = 10  # the CRC covers every byte after its own field


@dataclass(frozen=True)
class RecordHeader:
    """What a record says about itself before its state is decoded.

    Attributes
    ----------
    version : int
        Record format version.
    next_offset : int
        The input offset the state has learnt up to (-1: none given).
    fingerprint_crc : int
        CRC-32 of the configuration fingerprint the state is valid for (0: none).
    """

    version: int
    next_offset: int
    fingerprint_crc: int


def fingerprint_crc(fingerprint: dict[str, Any] | None) -> int:
    """CRC-32 of a fingerprint's canonical JSON (0 for none); stored in every record.

    >>> fingerprint_crc({"b": 1, "a": 2}) == fingerprint_crc({"a": 2, "b": 1})
    True
    """
    if not fingerprint:
        return 0
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return zlib.crc32(text.encode()) or 1


def pack_state(
    state: dict[str, Any],
    *,
    kind: str,
    next_offset: int = -1,
    fingerprint: dict[str, Any] | None = None,
    describe_fingerprint: bool = True,
) -> bytes:
    """``state`` (nested dict of numpy arrays and JSON values) as one checksummed byte string.

    Parameters
    ----------
    state
        Nested dict; arrays of numeric (or fixed-width string) dtypes, no objects.
    kind
        What the record holds (``"head"``, ``"entity"``); checked by :func:`unpack_state`.
    next_offset
        The input offset the state has learnt up to; readable with :func:`read_header`
        without decoding the state.
    fingerprint
        The configuration the state is valid for. Its CRC-32 is always stored; the
        whole dict too when ``describe_fingerprint`` (so a mismatch can be explained),
        which small per-entity records skip.

    Examples
    --------
    >>> import numpy as np
    >>> data = pack_state({"n": np.arange(3, dtype=np.float32), "seen": 4}, kind="entity",
    ...                   next_offset=17)
    >>> state, header = unpack_state(data, kind="entity")
    >>> state["n"].tolist(), state["seen"], header.next_offset
    ([0.0, 1.0, 2.0], 4, 17)
    """
    arrays, values = _split(state)
    table = []
    chunks: list[Any] = []
    for path, array in arrays.items():
        array = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d 1-d)
        if array.dtype.fields is not None or array.dtype.hasobject:
            raise TypeError(f"state entry {path!r} has dtype {array.dtype}; it cannot be saved")
        table.append([path, array.dtype.str, list(array.shape)])
        chunks.append(array.data.cast("B") if array.size else b"")
    meta: dict[str, Any] = {"kind": kind, "values": values, "arrays": table}
    if fingerprint and describe_fingerprint:
        meta["fingerprint"] = fingerprint
    try:
        meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    except TypeError as exc:
        raise TypeError(f"state holds a value that is neither an array nor JSON: {exc}") from exc
    body = b"".join(
        [
            struct.pack("<qII", int(next_offset), fingerprint_crc(fingerprint), len(meta_bytes)),
            meta_bytes,
            *chunks,
        ]
    )
    return RECORD_MAGIC + struct.pack("<HI", RECORD_VERSION, zlib.crc32(body)) + body


def read_header(data: bytes) -> RecordHeader:
    """Check a record's magic, version and CRC-32, and return its header.

    Cheap (no JSON, no arrays): the state topic's restore calls it on every
    record and decodes only the winners.

    Raises
    ------
    CheckpointCorruptError
        Not a streamgmm record, truncated, or a byte changed since it was written.
    CheckpointMismatchError
        Intact but of another record format version.
    """
    if len(data) < _HEADER.size or data[:4] != RECORD_MAGIC:
        raise CheckpointCorruptError(
            f"not a streamgmm state record ({len(data)} bytes, starting {bytes(data[:4])!r})"
        )
    _, version, crc, next_offset, fp_crc, _meta_len = _HEADER.unpack_from(data)
    if version != RECORD_VERSION:
        raise CheckpointMismatchError(
            f"state record format version {version}, this streamgmm reads version "
            f"{RECORD_VERSION}; run the streamgmm release that wrote it, or start from a new "
            "state topic"
        )
    if zlib.crc32(memoryview(data)[_CRC_FROM:]) != crc:
        raise CheckpointCorruptError(
            "state record fails its CRC-32: it was damaged or modified after it was written"
        )
    return RecordHeader(version, next_offset, fp_crc)


def unpack_state(
    data: bytes,
    *,
    kind: str | None = None,
    fingerprint: dict[str, Any] | None = None,
    verify: bool = True,
) -> tuple[dict[str, Any], RecordHeader]:
    """Decode a record written by :func:`pack_state`, verifying it first.

    ``fingerprint`` (when given) must match the one the record was written
    with; ``verify=False`` skips the CRC for a record :func:`read_header`
    already checked. The arrays returned are writable copies.

    Raises
    ------
    CheckpointCorruptError
        Truncated, damaged or not a record (the state is never returned half).
    CheckpointMismatchError
        Intact but of another format version, kind or configuration.
    """
    if verify:
        read_header(data)
    _, version, _, next_offset, fp_crc, meta_len = _HEADER.unpack_from(data)
    header = RecordHeader(version, next_offset, fp_crc)
    start = _HEADER.size
    try:
        meta = json.loads(bytes(data[start : start + meta_len]))
        offset = start + meta_len
        arrays = {}
        for path, dtype, shape in meta["arrays"]:
            dtype = np.dtype(dtype)
            count = 1
            for n in shape:
                count *= int(n)
            end = offset + count * dtype.itemsize
            if end > len(data) or dtype.hasobject:
                raise ValueError(f"array {path!r} runs past the record's end")
            if count:
                array = np.frombuffer(data, dtype, count, offset).reshape(tuple(shape)).copy()
            else:
                array = np.empty(tuple(shape), dtype)
            arrays[path] = array
            offset = end
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes left over after the arrays")
        record_kind = meta["kind"]
        state = _join(meta["values"], arrays)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise CheckpointCorruptError(
            f"state record cannot be decoded ({type(exc).__name__}: {exc})"
        ) from exc
    if kind is not None and record_kind != kind:
        raise CheckpointMismatchError(
            f"state record holds a {record_kind!r} state, expected {kind!r}"
        )
    if fingerprint is not None and header.fingerprint_crc != fingerprint_crc(fingerprint):
        saved = meta.get("fingerprint")
        detail = (
            fingerprint_difference(saved, fingerprint, "record")
            if isinstance(saved, dict)
            else "its fingerprint differs"
        )
        raise CheckpointMismatchError(
            f"state record was written for another configuration ({detail})"
        )
    return state, header


# ---------------------------------------------------------------------------
# the directory


def prepare_directory(path: str | os.PathLike, create: bool = True) -> str | None:
    """Make sure checkpoints can be written beside ``path``; what stops them, or None.

    The missing directories of ``path`` are created with mode 0700 (the
    state is the model of private data) when ``create`` is true; with
    ``create=False`` nothing is changed and a missing directory is fine as
    long as it could be created. The answer is a sentence that says what is
    wrong and what to do, or None when checkpoints can be written.

    >>> import tempfile, os, stat
    >>> root = tempfile.mkdtemp()
    >>> target = os.path.join(root, "state", "model.npz")
    >>> prepare_directory(target, create=False), os.path.exists(os.path.dirname(target))
    (None, False)
    >>> prepare_directory(target), oct(stat.S_IMODE(os.stat(os.path.dirname(target)).st_mode))
    (None, '0o700')
    >>> open(os.path.join(root, "file"), "w").close()
    >>> print(prepare_directory(os.path.join(root, "file", "model.npz")))  # doctest: +ELLIPSIS
    cannot use .../file as a directory: it is a file; point the path elsewhere, or move that file
    """
    target = os.path.abspath(os.fspath(path))
    if os.path.isdir(target):
        return f"{target} is a directory; give the path of a file in it (such as model.npz)"
    directory = os.path.dirname(target)
    missing = []
    existing = directory
    while not os.path.exists(existing):
        missing.append(existing)
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return (
            f"cannot use {existing} as a directory: it is a file; point the path "
            "elsewhere, or move that file"
        )
    if missing and not create:
        if not os.access(existing, os.W_OK | os.X_OK):
            return (
                f"{directory} does not exist and cannot be created ({existing} is not "
                "writable); create it, writable by the user streamgmm runs as"
            )
        return None
    for name in reversed(missing):
        try:
            os.mkdir(name, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            return (
                f"cannot create the directory {name}: {exc.strerror or exc}; create it, "
                "writable by the user streamgmm runs as, or point the path elsewhere"
            )
    if not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"the directory {directory} is not writable by this user; make it writable "
            "(chown/chmod), or point the path elsewhere"
        )
    return None


# ---------------------------------------------------------------------------
# writing


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_state(
    path: str | os.PathLike,
    state: dict[str, Any],
    *,
    kind: str,
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename).

    Parameters
    ----------
    path
        Target file; its directory must exist and be writable.
    state
        Nested dict of numpy arrays and JSON values.
    kind
        What the file holds (``"model"``, ``"daemon"``); checked on load.
    fingerprint
        The configuration the state is only valid for (number of components,
        covariance type, fields...); checked on load.
    """
    path = os.fspath(path)
    arrays, values = _split(state)
    meta = {
        "format": "streamgmm-state",
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "fingerprint": fingerprint or {},
        "values": values,
    }
    try:
        json.dumps(meta)
    except TypeError as exc:
        raise TypeError(f"state holds a value that is neither an array nor JSON: {exc}") from exc
    meta["checksum"] = _checksum(arrays, meta)

    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{_META: np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    remove_leftovers(path)


def _temp_prefix(path: str) -> str:
    """Temporary files of ``path`` are ``.<name>.tmp-XXXX`` in its directory."""
    return f".{os.path.basename(path)}.tmp-"


def remove_leftovers(path: str | os.PathLike) -> list[str]:
    """Delete the temporary files that interrupted writes of ``path`` left behind.

    A process killed between writing its temporary file and renaming it
    leaves that file behind; without this, a crash-looping daemon would fill
    its disk. Called after every write, and by the daemon when it starts.
    Returns the names deleted.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        if name.startswith(prefix):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


# ---------------------------------------------------------------------------
# reading


def _read(path: str) -> tuple[dict[str, np.ndarray], dict]:
    # A file that cannot be read (missing, permissions, a directory, an I/O error) is
    # not a damaged one: that OSError goes to the caller as it is. Only what was read
    # is judged, so a start-fresh policy never throws away a good file it could not open.
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(b"PK\x03\x04"):  # numpy would call anything else a pickle
        raise CheckpointCorruptError(
            f"{path} is not a streamgmm state file (not an .npz archive, {len(data)} bytes); "
            "it is truncated or damaged: restore a backup or move it away to start fresh"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = list(archive.files)
            if _META not in names:
                raise CheckpointCorruptError(
                    f"{path} is not a streamgmm state file (no metadata member); "
                    "point the config at the right file or move this one away to start fresh"
                )
            meta = json.loads(archive[_META].tobytes().decode())
            arrays = {name: archive[name] for name in names if name != _META}
    except CheckpointError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, UnicodeDecodeError) as exc:
        raise CheckpointCorruptError(
            f"{path} cannot be read as a streamgmm state file ({type(exc).__name__}: {exc}); "
            "it is truncated or damaged: restore a backup or move it away to start fresh"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != "streamgmm-state":
        raise CheckpointCorruptError(f"{path} is not a streamgmm state file")
    return arrays, meta


def load_state(
    path: str | os.PathLike, *, kind: str, fingerprint: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read a state written by :func:`save_state`, verifying everything first.

    Raises
    ------
    FileNotFoundError
        There is no file at ``path``.
    OSError
        The file cannot be read (permissions, a directory, an I/O error).
    CheckpointCorruptError
        The file is truncated, tampered with or not a state file.
    CheckpointMismatchError
        The file is intact but of another kind, format version or configuration.
    """
    path = os.fspath(path)
    arrays, meta = _read(path)
    expected = meta.pop("checksum", None)
    if expected != _checksum(arrays, meta):
        raise CheckpointCorruptError(
            f"{path} fails its checksum: it was modified or damaged after it was written; "
            "restore a backup or move it away to start fresh"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"{path} has state format version {version}, this streamgmm reads version "
            f"{FORMAT_VERSION}; use the streamgmm release that wrote it or start fresh"
        )
    if meta.get("kind") != kind:
        raise CheckpointMismatchError(
            f"{path} holds a {meta.get('kind')!r} state, expected {kind!r}"
        )
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        detail = fingerprint_difference(meta.get("fingerprint") or {}, fingerprint, "file")
        raise CheckpointMismatchError(
            f"{path} was written for another configuration ({detail}); restore the old "
            "configuration, point checkpoint.path elsewhere, or set "
            "checkpoint.on_mismatch: fresh to start a new model"
        )
    state = _join(meta["values"], arrays)
    return state


def read_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """The fingerprint and kind a state file was written with (for `streamgmm inspect`)."""
    _, meta = _read(os.fspath(path))
    return {
        "kind": meta.get("kind"),
        "format_version": meta.get("format_version"),
        **(meta.get("fingerprint") or {}),
    }
