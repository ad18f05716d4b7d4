"""The decoding process: a child parses one batch while the loop reads the next.

The daemon's main thread is the bottleneck of a busy stream: kafka-python
parses every record in Python, and so does the JSON decoder, both under the
one GIL. Handing the decoding of each large batch to a child process lets
the two run on two cores. The child only computes :func:`~.events.decode_batch`
(a pure function); everything with a side effect stays in the loop, in order.

What crosses the pipes, in length-prefixed frames of raw bytes and JSON (no
pickle): the raw values one way; the feature matrix, row indices, keys and
dead-letter reasons the other. The parsed events are not sent back
(serialising them would cost more than parsing): the few an outlier record
embeds are parsed again in the loop, on demand, by
:func:`~.events.parse_event`, as ``decode_batch`` parsed them.

Run as ``python -m streamgmm.decode_worker`` (by :class:`Decoder`, never by hand).

Every wait on the child is bounded: a child that dies or stops answering is
killed and replaced, its batches are decoded in the loop, so nothing is lost,
and ``streamgmm_decoder_failures_total`` counts it. Small batches (a quiet
stream) are decoded in the loop: a round trip would only add delay.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .events import Decoded, DecodeError, decode_batch, parse_event

log = logging.getLogger("streamgmm.decode_worker")

#: Batches smaller than this are decoded in the loop: under 0.5 ms of work, as a
#: quiet stream's polls are (5,000 events/s come about 100 per poll).
MIN_BATCH = 200
#: A batch the child has not taken or answered in this long is decoded in the loop
#: (the default of ``Decoder(timeout_s=)``; the daemon shortens it under a watchdog).
ANSWER_TIMEOUT_S = 30.0
#: Pipe buffer asked for, so a whole batch is written while the child is busy
#: with the previous one (Linux grants up to /proc/sys/fs/pipe-max-size, 1 MiB).
PIPE_BYTES = 1 << 20
_HEADER = 8  # bytes of each big-endian length


class ChildGone(Exception):
    """The decoding process ended, or did not answer in time."""


def _frame(*parts: bytes) -> bytes:
    """Parts as one frame: total length, number of parts, each part's length, the parts."""
    lengths = [len(part) for part in parts]
    head = b"".join(n.to_bytes(_HEADER, "big") for n in [len(parts), *lengths])
    return (len(head) + sum(lengths)).to_bytes(_HEADER, "big") + head + b"".join(parts)


def _parts(body: bytes | bytearray) -> list[memoryview]:
    view = memoryview(body)
    count = int.from_bytes(view[:_HEADER], "big")
    lengths = [int.from_bytes(view[_HEADER * (i + 1) : _HEADER * (i + 2)], "big")
               for i in range(count)]  # fmt: skip
    parts, start = [], _HEADER * (count + 1)
    for n in lengths:
        parts.append(view[start : start + n])
        start += n
    return parts


def _pack_values(values: Sequence[bytes | None]) -> bytes:
    try:  # the usual batch: bytes only
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        return _frame(lengths.tobytes(), b"".join(values))  # type: ignore[arg-type]
    except TypeError:  # tombstones (None): length -1
        lengths = np.array([-1 if v is None else len(v) for v in values], dtype=np.int64)
        return _frame(lengths.tobytes(), b"".join(v for v in values if v is not None))


def _unpack_values(body: bytes) -> list[bytes | None]:
    lengths_part, data = _parts(body)
    lengths = np.frombuffer(lengths_part, dtype=np.int64)
    ends = np.cumsum(np.maximum(lengths, 0)).tolist()
    starts = [0, *ends[:-1]]
    blob = bytes(data)
    return [None if n < 0 else blob[a:b]
            for n, a, b in zip(lengths.tolist(), starts, ends, strict=True)]  # fmt: skip


def _pack_decoded(decoded: Decoded) -> bytes:
    meta = {"d": decoded.X.shape[1], "keys": decoded.keys,
            "errors": [list(error) for error in decoded.errors]}  # fmt: skip
    X = np.ascontiguousarray(decoded.X, dtype=np.float64)
    ok_index = np.ascontiguousarray(decoded.ok_index, dtype=np.int64)
    return _frame(json.dumps(meta).encode(), X.tobytes(), ok_index.tobytes())


def _unpack_decoded(body: bytearray, values: list, max_bytes: int) -> Decoded:
    meta_part, X_part, ok_part = _parts(body)
    meta = json.loads(bytes(meta_part))
    X = np.frombuffer(X_part, dtype=np.float64).reshape(-1, meta["d"])
    ok_index = np.frombuffer(ok_part, dtype=np.int64).astype(np.intp, copy=False)
    errors = [DecodeError(*error) for error in meta["errors"]]
    events = ParsedOnDemand(values, ok_index, max_bytes)
    return Decoded(X, ok_index, meta["keys"], events, errors)


def _widen(fd: int) -> None:
    # a smaller pipe only means the loop waits for the child a little more
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)


# ---------------------------------------------------------------------------
# the child


def _read_exactly(stream: Any, n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def _read_frame(stream: Any) -> bytes | None:
    header = _read_exactly(stream, _HEADER)
    return None if header is None else _read_exactly(stream, int.from_bytes(header, "big"))


def serve(stdin: Any, stdout: Any) -> None:
    """The child's loop: a settings frame, then batches of values in, decoded parts out."""
    settings = _read_frame(stdin)
    if settings is None:
        return
    fields, key_field, max_bytes = json.loads(bytes(_parts(settings)[0]))
    gc.freeze()  # as the daemon does (cli.cmd_run): collections skip the modules
    while (body := _read_frame(stdin)) is not None:
        decoded = decode_batch(_unpack_values(body), fields, key_field, max_bytes)
        stdout.write(_pack_decoded(decoded))
        stdout.flush()


def main() -> None:
    # The parent decides when this process ends (end of its input); a Ctrl-C, a
    # service manager's SIGTERM or a SIGHUP (a closed terminal) sent to the whole group,
    # or a SIGUSR1 meant for the daemon, must not end it mid-batch.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)


# ---------------------------------------------------------------------------
# the loop's side


class ParsedOnDemand(Sequence):
    """``Decoded.events`` for a batch decoded elsewhere: each event is parsed when read."""

    def __init__(self, values: Sequence[bytes | None], ok_index: np.ndarray, max_bytes: int):
        self._values = values
        self._ok_index = ok_index
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._ok_index)

    def __getitem__(self, row: Any) -> Any:
        if isinstance(row, slice):
            return [self[r] for r in range(*row.indices(len(self)))]
        return parse_event(self._values[self._ok_index[row]], self._max_bytes)


class Pending:
    """A batch handed to the decoder; :meth:`result` decodes it or waits for the child."""

    __slots__ = ("_decoded", "_finish", "_in_child", "values")

    def __init__(
        self, values: list, finish: Callable[[Pending], Decoded], in_child: bool = False
    ) -> None:
        self.values = values
        self._finish = finish
        self._in_child = in_child
        self._decoded: Decoded | None = None

    @property
    def elsewhere(self) -> bool:
        """True while the batch is being decoded by the child."""
        return self._in_child and self._decoded is None

    def result(self) -> Decoded:
        if self._decoded is None:
            self._decoded = self._finish(self)
        return self._decoded


class _Child:
    """The decoding process and the two pipes to it; every wait bounded by a deadline."""

    def __init__(self, settings: list, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamgmm.decode_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._out = self.process.stdin.fileno()
        self._in = self.process.stdout.fileno()
        self._inbox = bytearray()  # answers read while a request was being written
        for fd in (self._out, self._in):
            _widen(fd)
            os.set_blocking(fd, False)
        self.send(_frame(json.dumps(settings).encode()))

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, frame: bytes) -> None:
        """Write ``frame``; answers that arrive meanwhile are read into the inbox.

        The child writes an answer before it reads the next request: an answer
        larger than the pipe leaves it waiting for the loop to read, while the
        loop waits for it to read the request. Reading while writing breaks
        that circle.
        """
        data = memoryview(frame)
        deadline = time.monotonic() + self.timeout_s
        while data:
            try:
                data = data[os.write(self._out, data) :]
            except BlockingIOError:
                remaining = max(0.0, deadline - time.monotonic())
                readable, writable, _ = select.select([self._in], [self._out], [], remaining)
                if not readable and not writable:
                    raise ChildGone(
                        f"the decoding process did not answer within {self.timeout_s:g} s"
                    ) from None
                if readable:
                    self._drain()
            except OSError as exc:  # BrokenPipeError: it has ended
                raise ChildGone(self._ended(exc)) from None

    def _drain(self) -> None:
        """Move what the child has written so far into the inbox, without waiting."""
        while True:
            try:
                chunk = os.read(self._in, PIPE_BYTES)
            except BlockingIOError:
                return
            if not chunk:
                raise ChildGone(self._ended("its output closed"))
            self._inbox += chunk

    def receive(self) -> bytearray:
        deadline = time.monotonic() + self.timeout_s
        header = self._read(_HEADER, deadline)
        return self._read(int.from_bytes(header, "big"), deadline)

    def _read(self, n: int, deadline: float) -> bytearray:
        buffer = bytearray(n)
        got = min(n, len(self._inbox))  # first what was read while sending
        buffer[:got] = self._inbox[:got]
        del self._inbox[:got]
        view = memoryview(buffer)
        while got < n:
            try:
                chunk = os.readv(self._in, [view[got:]])
            except BlockingIOError:
                self._wait(self._in, writing=False, deadline=deadline)
                continue
            if chunk == 0:
                raise ChildGone(self._ended("its output closed"))
            got += chunk
        return buffer

    def _wait(self, fd: int, writing: bool, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        ready = select.select([], [fd], [], max(0.0, remaining)) if writing else (
            select.select([fd], [], [], max(0.0, remaining)))  # fmt: skip
        if not any(ready):
            raise ChildGone(f"the decoding process did not answer within {self.timeout_s:g} s")

    def _ended(self, why: Any) -> str:
        try:
            code = self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        return f"the decoding process ended (exit code {code}): {why}"

    def stop(self, kill: bool) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            pipe.close()  # end of input: a healthy child exits
        if not kill:
            try:
                self.process.wait(5.0)
                return
            except subprocess.TimeoutExpired:
                pass
        self.process.kill()
        self.process.wait()


class Decoder:
    """Decode batches in the loop or, when ``workers`` is 1, in one child process.

    Parameters
    ----------
    fields, key_field, max_bytes :
        As for :func:`~.events.decode_batch`.
    workers : {0, 1}
        0 decodes in the calling thread; 1 starts a child process at the
        first large batch.
    on_failure : callable or None
        Called with a reason when the child failed and its batches were
        decoded in the loop instead (the daemon counts it).
    timeout_s : float
        Longest wait for the child to take a batch or answer it.
    """

    def __init__(
        self,
        fields: Sequence[str],
        key_field: str | None,
        max_bytes: int,
        *,
        workers: int = 1,
        on_failure: Callable[[str], None] | None = None,
        timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        self.fields = list(fields)
        self.timeout_s = timeout_s
        self.key_field = key_field
        self.max_bytes = max_bytes
        self.workers = workers
        self.on_failure = on_failure
        self._child: _Child | None = None
        self._waiting: list[Pending] = []  # sent to the child, answers come in this order

    def decode(self, values: list) -> Decoded:
        return decode_batch(values, self.fields, self.key_field, self.max_bytes)

    def submit(self, values: list) -> Pending:
        """Start decoding ``values``; :meth:`Pending.result` gives the answer."""
        child = self._ready_child() if self.workers and len(values) >= MIN_BATCH else None
        try:
            frame = _pack_values(values) if child is not None else None
        except TypeError:  # not bytes (a str from some custom source): the loop copes
            frame = None
        if child is None or frame is None:
            return Pending(values, self._decode_here)
        pending = Pending(values, self._receive, in_child=True)
        self._waiting.append(pending)
        try:
            child.send(frame)
        except ChildGone as exc:
            self._fail(str(exc))
        return pending

    def _decode_here(self, pending: Pending) -> Decoded:
        return self.decode(pending.values)

    def _receive(self, pending: Pending) -> Decoded:
        while pending._decoded is None:
            assert self._child is not None
            first = self._waiting[0]
            try:
                answer = self._child.receive()
            except ChildGone as exc:
                self._fail(str(exc))  # decodes every waiting batch here
                continue
            self._waiting.pop(0)
            first._decoded = _unpack_decoded(answer, first.values, self.max_bytes)
        return pending._decoded

    def _ready_child(self) -> _Child | None:
        if self._child is None:
            try:
                self._child = _Child([self.fields, self.key_field, self.max_bytes], self.timeout_s)
            except (OSError, ChildGone) as exc:
                log.warning(
                    "cannot start the decoding process (%s): decoding in the main loop, which "
                    "is slower; check the process limits (LimitNPROC=, TasksMax=) or set "
                    "features.decode_process: false",
                    exc,
                )
                self.workers = 0
                return None
            log.info("decoding large batches in process %d", self._child.pid)
        return self._child

    def _fail(self, why: str) -> None:
        log.error("%s: its batches are decoded in the main loop, nothing is lost; "
                  "a new process is started for the next large batch", why)  # fmt: skip
        if self._child is not None:
            self._child.stop(kill=True)
            self._child = None
        for lost in self._waiting:
            lost._decoded = self.decode(lost.values)
        self._waiting.clear()
        if self.on_failure is not None:
            self.on_failure(why)

    @property
    def pid(self) -> int | None:
        """The decoding process's id, None when there is none."""
        return self._child.pid if self._child is not None else None

    def close(self) -> None:
        """Stop the child; batches not yet taken are decoded here first."""
        if self._child is not None:
            for pending in list(self._waiting):
                pending.result()
            self._child.stop(kill=False)
            self._child = None


def default_workers() -> int:
    """1 when this process may use two CPUs or more, else 0."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux, or the call is filtered
        cpus = os.cpu_count() or 1
    return 1 if cpus >= 2 else 0


if __name__ == "__main__":
    main()
