"""Poll a condition until a deadline; a failure names what was awaited and shows the log."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Watched(Protocol):
    """A process a test waits on: ``process`` (a Popen) and the tail of its log."""

    process: object

    def log_tail(self) -> str: ...


def wait_for(
    predicate: Callable[[], object],
    deadline_s: float,
    what: str,
    daemon: Watched | None = None,
    every_s: float = 0.1,
    ignore: tuple[type[BaseException], ...] = (OSError,),
) -> object:
    """Poll ``predicate`` until it is truthy and return its value; fail naming ``what``.

    A predicate that raises one of ``ignore`` (by default OSError: a server not
    listening yet) counts as false. With ``daemon``, its exit fails the wait at once
    and its log's last lines are in every failure.
    """
    deadline = time.monotonic() + deadline_s
    last: object = None
    while True:
        try:
            value = last = predicate()
        except ignore as exc:
            value, last = None, exc
        if value:
            return value
        if daemon is not None and daemon.process.poll() is not None:
            raise AssertionError(
                f"the process exited ({daemon.process.returncode}) while waiting for {what}:\n"
                + daemon.log_tail()
            )
        if time.monotonic() > deadline:
            tail = f"\nlast log lines:\n{daemon.log_tail()}" if daemon is not None else ""
            raise AssertionError(
                f"timed out after {deadline_s:.0f} s waiting for {what} (last: {last!r}){tail}"
            )
        time.sleep(every_s)
