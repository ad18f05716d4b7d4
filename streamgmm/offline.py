"""``streamgmm score`` and ``evaluate``: the daemon's pipeline over a file.

The same loop as the service (decode, score, learn, dead letters), with a
file source and a file sink: every event comes out as a score record
(log-likelihood, score, threshold, outlier flag, component,
responsibilities), unusable lines go to standard error as dead letters.
CSV input (a header row, numeric cells) is read as if each row were a JSON
object.

``evaluate`` runs the same loop over a labelled file and compares the
scores of the scored events (warm-up ones apart) with the labels: ROC-AUC,
average precision, and precision and recall of the outlier flag at the
configured threshold (:func:`evaluate_file`, :func:`roc_auc`,
:func:`average_precision`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from sklearn import metrics

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

    def __init__(self, path: str, header_lines: int = 0) -> None:
        self.total = (
            _count_lines(path) - header_lines if path != "-" and os.path.isfile(path) else None
        )
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
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")  # a last line without its newline counts too


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
    on_batch: Callable[..., None] | None = None,
    dead_letters: str | None = None,
) -> int:
    """Score ``input_path`` with ``config``'s fields, model and threshold; the exit code.

    The configuration's checkpoint and metrics server are not used (a
    production checkpoint is never overwritten by a file run); pass
    ``checkpoint`` to start from a model and save it back. ``progress``
    reports on standard error; ``on_batch`` is called with ``(records,
    decoded, result)`` after each batch; dead letters go to standard error
    unless ``dead_letters`` names a file.
    """
    from .daemon import Daemon

    stream = None
    csv_input = _is_csv(input_path, fmt)
    if csv_input:
        text = sys.stdin if input_path == "-" else open(input_path, newline="")  # noqa: SIM115
        stream = CsvAsJsonl(text)
    config = replace(
        config,
        source=replace(config.source, kind="file"),
        checkpoint=replace(config.checkpoint, path=checkpoint),
        metrics=replace(config.metrics, port=0),
    )
    source = FileSource(input_path, stream=stream)
    sink = FileSink(outliers or os.devnull, dead_letters, output)
    report = Progress(input_path, header_lines=int(csv_input)) if progress else None
    hooks = [hook for hook in (on_batch, report) if hook is not None]

    def each_batch(records: list, decoded: Any, result: Any) -> None:
        for hook in hooks:
            hook(records, decoded, result)

    daemon = Daemon.from_config(
        config, source=source, sink=sink, serve_metrics=False,
        on_batch=each_batch if hooks else None,
    )  # fmt: skip
    daemon.install_signal_handlers()
    code = daemon.run()
    if report is not None:
        report.show(end="\n")
    return code


# ---------------------------------------------------------------------------
# evaluate


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``); NaN with one class.

    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return math.nan
    return float(metrics.roc_auc_score(y, score))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision (``sklearn.metrics.average_precision_score``); NaN without anomaly.

    >>> round(average_precision(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])), 4)
    0.8333
    """
    y = np.asarray(y, dtype=bool)
    if not y.any():
        return math.nan
    return float(metrics.average_precision_score(y, score))


_TRUE = {"1", "true", "yes", "anomaly", "outlier", "attack", "fraud"}
_FALSE = {"0", "false", "no", "normal", "inlier", "benign"}


def _label(value: Any) -> float:
    """1.0 anomaly, 0.0 normal, NaN unreadable: booleans, numbers (non-zero is an
    anomaly), or words such as true/false, 1/0, yes/no, anomaly/normal."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return math.nan if math.isnan(value) else float(value != 0)
    if isinstance(value, str):
        word = value.strip().lower()
        return 1.0 if word in _TRUE else 0.0 if word in _FALSE else math.nan
    return math.nan


def evaluate_file(
    config: Config,
    input_path: str,
    label: str,
    fmt: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``config``'s detector over a labelled file; how its scores and flags agree.

    ``label`` is a top-level key (a CSV column) of each event: 1/0, true/false
    and the like (:func:`_label`); it must not be one of the features. The
    events are scored as ``streamgmm score`` scores them, in order, the model
    learning as it goes (prequential). Warm-up events are counted apart: the
    measures are over the scored events with a readable label.

    Returns a plain dict: ``events``, ``unusable`` (dead letters),
    ``unlabelled``, ``warmup`` (events and anomalies among them), ``scored``
    (events, anomalies, flagged, true_positives), ``roc_auc``,
    ``average_precision``, ``precision``, ``recall`` (at the threshold:
    the outlier flag), ``threshold`` (its kind and last value).
    """
    if label in config.features.fields:
        raise ValueError(
            f"the label {label!r} is one of the features: remove it from features.fields "
            "(or --fields); the model must not see the answer"
        )
    # in the loop: each event's label is read from its parsed object
    config = replace(config, features=replace(config.features, decode_process=False))
    parts: dict[str, list] = {"y": [], "score": [], "flag": [], "warmup": []}
    counts = {"events": 0, "unusable": 0, "unlabelled": 0}
    last_threshold = [math.nan]

    def collect(records: list, decoded: Any, result: Any) -> None:
        counts["events"] += len(records)
        counts["unusable"] += len(decoded.errors)
        if result is None:
            return
        y = np.array([_label(event.get(label)) for event in decoded.events], dtype=np.float64)
        parts["y"].append(y)
        parts["score"].append(result.score)
        parts["flag"].append(result.is_outlier)
        parts["warmup"].append(result.is_warmup)
        last_threshold[0] = float(result.threshold[-1])

    code = score_file(
        config, input_path, os.devnull, None, fmt, progress=progress, on_batch=collect,
        dead_letters=os.devnull,
    )  # fmt: skip
    if code != 0:
        raise RuntimeError(f"scoring {input_path} stopped (exit code {code})")
    y, score = (np.concatenate(parts[k]) if parts[k] else np.zeros(0) for k in ("y", "score"))
    flag, warmup = (
        np.concatenate(parts[k]).astype(bool) if parts[k] else np.zeros(0, dtype=bool)
        for k in ("flag", "warmup")
    )
    known = ~np.isnan(y)
    counts["unlabelled"] = int(np.count_nonzero(~known))
    scored = known & np.logical_not(warmup)
    y_s, score_s, flag_s = y[scored].astype(bool), score[scored], flag[scored]
    true_positives = int((y_s & flag_s).sum())
    flagged, anomalies = int(flag_s.sum()), int(y_s.sum())
    return {
        "input": input_path,
        "label": label,
        "fields": list(config.features.fields),
        **counts,
        "warmup": {"events": int((known & warmup).sum()),
                   "anomalies": int(y[known & warmup].sum())},
        "scored": {"events": int(scored.sum()), "anomalies": anomalies, "flagged": flagged,
                   "true_positives": true_positives},
        "roc_auc": roc_auc(y_s, score_s),
        "average_precision": average_precision(y_s, score_s),
        "precision": true_positives / flagged if flagged else math.nan,
        "recall": true_positives / anomalies if anomalies else math.nan,
        "threshold": {"kind": config.threshold.kind, "last_value": last_threshold[0]},
    }  # fmt: skip


def format_evaluation(report: dict[str, Any]) -> str:
    """The :func:`evaluate_file` report as a table for a person."""

    def number(value: float) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"

    scored, warmup = report["scored"], report["warmup"]
    rows = [
        ("input", report["input"]),
        ("label", report["label"]),
        ("fields", ", ".join(report["fields"])),
        ("events", f"{report['events']:,} ({report['unusable']:,} unusable, "
                   f"{report['unlabelled']:,} without a readable label)"),
        ("warm-up (not measured)", f"{warmup['events']:,} events, "
                                   f"{warmup['anomalies']:,} anomalies"),
        ("scored", f"{scored['events']:,} events, {scored['anomalies']:,} anomalies"),
        ("ROC-AUC", number(report["roc_auc"])),
        ("average precision", number(report["average_precision"])),
        (f"precision at the threshold ({report['threshold']['kind']})",
         f"{number(report['precision'])}  ({scored['true_positives']:,} of "
         f"{scored['flagged']:,} flagged)"),
        ("recall at the threshold", f"{number(report['recall'])}  "
                                    f"({scored['true_positives']:,} of {scored['anomalies']:,})"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
