"""``streamgmm score``: the daemon's pipeline over a file, as a filter.

The same loop as the service (decode, score, learn, dead letters), with a
file source and a file sink: every event comes out as a score record
(log-likelihood, score, threshold, outlier flag, component,
responsibilities), unusable lines go to standard error as dead letters.
CSV input (a header row, numeric cells) is read as if each row were a JSON
object.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any

from .config import Config
from .sinks import FileSink
from .sources import FileSource


def _cell(text: str) -> Any:
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


class CsvAsJsonl(io.RawIOBase):
    """A CSV text stream read as JSONL bytes, one object per row, lazily.

    >>> stream = CsvAsJsonl(io.StringIO("a,b\\n1,x\\n2.5,\\n"))
    >>> stream.read().decode().splitlines()
    ['{"a": 1, "b": "x"}', '{"a": 2.5, "b": null}']
    """

    def __init__(self, text: io.TextIOBase) -> None:
        self._rows = csv.DictReader(text)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while len(self._pending) < len(buffer):
            row = next(self._rows, None)
            if row is None:
                break
            self._pending += json.dumps({k: _cell(v) for k, v in row.items()}).encode() + b"\n"
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class Progress:
    """A one-line progress report on standard error: lines done, rate, share of the file."""

    def __init__(self, path: str) -> None:
        self.total = _count_lines(path) if path != "-" and os.path.isfile(path) else None
        self.done = 0
        self.outliers = 0
        self.started = self._shown = time.monotonic()

    def __call__(self, records: list, decoded: Any, result: Any) -> None:
        self.done += len(records)
        if result is not None:
            self.outliers += int(result.is_outlier.sum())
        now = time.monotonic()
        if now - self._shown >= 0.2:
            self._shown = now
            self.show(now)

    def show(self, now: float | None = None, end: str = "\r") -> None:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        share = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
        print(
            f"scored {self.done:,} events{share}  {self.done / elapsed:,.0f} events/s  "
            f"{self.outliers:,} outliers",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def _count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            count += chunk.count(b"\n")
    return count


def _is_csv(path: str, fmt: str) -> bool:
    return fmt == "csv" or (fmt == "auto" and path.lower().endswith(".csv"))


def score_file(
    config: Config,
    input_path: str,
    output: str = "-",
    outliers: str | None = None,
    fmt: str = "auto",
    checkpoint: str | None = None,
    progress: bool = False,
) -> int:
    """Score ``input_path`` with ``config``'s fields, model and threshold; the exit code.

    The configuration's checkpoint and metrics server are not used (a
    production checkpoint is never overwritten by a file run); pass
    ``checkpoint`` to start from a model and save it back.
    """
    from .daemon import Daemon

    stream = None
    if _is_csv(input_path, fmt):
        text = sys.stdin if input_path == "-" else open(input_path, newline="")  # noqa: SIM115
        stream = CsvAsJsonl(text)
    config = replace(
        config,
        source=replace(config.source, kind="file"),
        checkpoint=replace(config.checkpoint, path=checkpoint),
        metrics=replace(config.metrics, port=0),
    )
    source = FileSource(input_path, stream=stream)
    sink = FileSink(outliers or os.devnull, None, output)
    report = Progress(input_path) if progress else None
    daemon = Daemon(config, source=source, sink=sink, serve_metrics=False, on_batch=report)
    daemon.install_signal_handlers()
    code = daemon.run()
    if report is not None:
        report.show(end="\n")
    return code
