"""Logging set-up: one JSON object per line for machines, plain lines for people.

``format="auto"`` writes text when standard error is a terminal and JSON
otherwise (under systemd, Docker, a log shipper). Extra fields given with
``log.info("...", extra={"fields": {...}})`` are kept as keys in JSON.

>>> import io, json, logging
>>> stream = io.StringIO()
>>> logger = configure("INFO", "json", stream=stream, name="streamgmm.example")
>>> logger.info("checkpoint written", extra={"fields": {"events": 12}})
>>> record = json.loads(stream.getvalue())
>>> record["message"], record["level"], record["events"]
('checkpoint written', 'info', 12)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...fields, "exception"}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def configure(
    level: str = "INFO",
    fmt: str = "auto",
    stream: IO[str] | None = None,
    name: str = "streamgmm",
) -> logging.Logger:
    """Send the ``streamgmm`` loggers (and kafka-python's warnings) to ``stream``."""
    stream = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    kafka_logger = logging.getLogger("kafka")
    kafka_logger.handlers[:] = [handler]
    kafka_logger.setLevel(logging.ERROR)  # its warnings repeat on every retry; ours say more
    kafka_logger.propagate = False
    return logger
