"""What the daemon says about itself: /readyz, the service manager's status line, SIGUSR1.

:class:`Status` keeps the readiness conditions (:class:`streamgmm.metrics.Health`,
served on /readyz), the one-line status sent to systemd (``STATUS=`` through
:class:`streamgmm.notify.Notifier`) every ``STATUS_EVERY_S`` or when something
changed, and the status line SIGUSR1 asks for in the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from .metrics import Health
from .notify import Notifier
from .sources import TopicPartition

__all__ = ["STATUS_EVERY_S", "Status"]

log = logging.getLogger("streamgmm.daemon")

STATUS_EVERY_S = 10.0
#: The window of "outliers in the last minute".
OUTLIER_WINDOW_S = 60.0


class Status:
    """Readiness, the ``STATUS=`` line and the SIGUSR1 log line of one daemon.

    Parameters
    ----------
    health : Health
        The readiness conditions /readyz serves.
    notifier : Notifier
        The service manager's notification socket (a no-op without one).
    """

    def __init__(self, health: Health, notifier: Notifier) -> None:
        self.health = health
        self.notifier = notifier
        self.requested = False  # SIGUSR1: log a status line (set by the signal handler)
        self._due = False  # send the status line now, not at the next STATUS_EVERY_S
        self._last_sent = 0.0
        self._events = 0  # since the last status line
        self._outliers: list[tuple[float, int]] = []  # (wall time, count) within the window

    # -- readiness ------------------------------------------------------------------

    def set(self, condition: str, ok: bool, reason: str) -> None:
        """Set one readiness condition (``connected``, ``assigned``, ``warmed_up``)."""
        self.health.set(condition, ok, reason)

    def tick(self) -> None:
        """The loop is alive: liveness for /healthz, a ping for the systemd watchdog."""
        self.health.tick()
        self.notifier.watchdog()

    def connected(self) -> bool:
        _, readiness = self.health.readiness()
        return bool(readiness["conditions"]["connected"])

    # -- the status line ----------------------------------------------------------------

    def count(self, events: int, outliers: int) -> None:
        """A batch of ``events`` was read, ``outliers`` of them flagged."""
        self._events += events
        if outliers:
            self._outliers.append((time.time(), outliers))

    def soon(self) -> None:
        """Send the status line at the next :meth:`report` (something changed)."""
        self._due = True

    def retrying(self) -> None:
        self.notifier.status("broker unreachable, retrying")

    def report(self, detector: Any) -> None:
        """Send the status line when it is due: a rate, the warm-up, or why not connected."""
        now = time.monotonic()
        if not self._due and now - self._last_sent < STATUS_EVERY_S:
            return
        self._due = False
        elapsed = now - self._last_sent if self._last_sent else STATUS_EVERY_S
        self._last_sent = now
        wall = time.time()
        self._outliers = [(t, n) for t, n in self._outliers if wall - t < OUTLIER_WINDOW_S]
        recent = sum(n for _, n in self._outliers)
        rate = self._events / elapsed
        self._events = 0
        if not self.connected():
            text = "broker unreachable, retrying"
        elif not detector.is_warmed_up:
            text = f"warming up {detector.n_seen}/{detector.warmup}"
        else:
            text = f"{rate:.0f} events/s, {recent} outliers in the last minute"
        self.notifier.status(text)

    def log_line(
        self,
        detector: Any,
        positions: Mapping[TopicPartition, int],
        seconds_since_checkpoint: float,
    ) -> None:
        """The status line SIGUSR1 asks for: what the loop has done and where it is."""
        self.requested = False
        _, readiness = self.health.readiness()
        log.info(
            "status (SIGUSR1)",
            extra={
                "fields": {
                    "events_seen": detector.n_seen,
                    "outliers": detector.n_outliers,
                    "warmed_up": detector.is_warmed_up,
                    "ready": readiness["ready"],
                    "failing": readiness["failing"],
                    "seconds_since_checkpoint": round(seconds_since_checkpoint, 1),
                    "offsets": {
                        f"{tp.topic}:{tp.partition}": o for tp, o in sorted(positions.items())
                    },
                }
            },
        )
