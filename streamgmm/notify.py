"""Tell systemd how the daemon is doing: the sd_notify protocol, no dependency.

Under ``Type=notify`` systemd passes the path of a unix datagram socket in
``$NOTIFY_SOCKET`` and waits for the service to send ``READY=1`` before it
counts it as started; with ``WatchdogSec=`` it also passes
``$WATCHDOG_USEC`` and kills the service when no ``WATCHDOG=1`` arrives
within that time. Each message is one datagram of newline-separated
``KEY=value`` assignments. A path starting with ``@`` names a socket in the
abstract namespace (the ``@`` stands for a leading NUL byte).

How the daemon uses it: ``ready()`` once the poll loop runs, ``watchdog()``
on every loop tick (it rate-limits itself; the loop comes round within a
quarter of ``$WATCHDOG_USEC``), ``status(...)`` with a one-line summary now
and then, ``stopping()`` when shutdown begins (from the loop, never from the
signal handler: a handler may interrupt a send). See :class:`Notifier`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Client for systemd's notify socket.

    Outside systemd (a terminal, Docker, the tests) ``$NOTIFY_SOCKET`` is unset
    and every method is a cheap no-op, so the daemon calls them unconditionally.
    A failed send never raises: the daemon's work matters more than its
    reports to the service manager. The first failure is logged as a warning,
    later ones at debug level.

    Parameters
    ----------
    environ : mapping of str to str, default=None
        Where to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``;
        ``os.environ`` when None. Read once, at construction.
    clock : callable returning float, default=time.monotonic
        Monotonic clock in seconds, used to rate-limit watchdog pings; injectable
        so tests need not sleep.
    timeout : float, default=1.0
        Seconds a send may block when the manager's receive queue is full. A
        blocked send stalls the loop, so it is short.

    Examples
    --------
    Without ``$NOTIFY_SOCKET`` nothing is sent and nothing fails:

    >>> notifier = Notifier(environ={})
    >>> notifier.enabled, notifier.watchdog_interval()
    (False, None)
    >>> notifier.ready(), notifier.watchdog(), notifier.status("idle")
    (False, False, False)

    With a socket, messages arrive as datagrams. Watchdog pings are spaced by a
    quarter of ``$WATCHDOG_USEC``, so that a loop calling :meth:`watchdog` at
    least that often never leaves systemd more than half of ``$WATCHDOG_USEC``
    without a ping (what sd-event does, and what systemd advises):

    >>> import os, socket, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notify")
    >>> manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    >>> manager.bind(path)
    >>> now = [100.0]
    >>> notifier = Notifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"},
    ...                     clock=lambda: now[0])
    >>> notifier.watchdog_interval()
    15.0
    >>> notifier.ready(), notifier.watchdog(), notifier.watchdog()
    (True, True, False)
    >>> now[0] += 7.5
    >>> notifier.watchdog(), notifier.status("1200 events/s, 3 outliers")
    (True, True)
    >>> [manager.recv(4096).decode() for _ in range(4)]
    ['READY=1', 'WATCHDOG=1', 'WATCHDOG=1', 'STATUS=1200 events/s, 3 outliers']
    >>> notifier.close(); manager.close()
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 1.0,
    ) -> None:
        env = os.environ if environ is None else environ
        self._clock = clock
        self._timeout = timeout
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_interval = _watchdog_interval(env) if self._address else None
        self._last_watchdog: float | None = None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    # ------------------------------------------------------------------
    # what the daemon calls

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given (the process runs under ``Type=notify``)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Longest time between two pings (half of ``$WATCHDOG_USEC``), None when off.

        :meth:`watchdog` sends at most one ping per half of this, so a loop
        that calls it at least every ``watchdog_interval() / 2`` seconds keeps
        every gap under this bound. A loop that may block longer (a poll, a
        backoff sleep) must wake up in time, or systemd kills it after twice
        this.
        """
        return self._watchdog_interval

    def ready(self) -> bool:
        """Report start-up finished (``READY=1``): the consume loop is running."""
        return self._send("READY=1")

    def watchdog(self) -> bool:
        """Ping the watchdog (``WATCHDOG=1``), at most once per half :meth:`watchdog_interval`.

        Cheap enough to call on every loop tick. Returns whether a ping was sent.
        """
        if self._watchdog_interval is None:
            return False
        now = self._clock()
        spacing = self._watchdog_interval / 2
        if self._last_watchdog is not None and now - self._last_watchdog < spacing:
            return False
        sent = self._send("WATCHDOG=1")
        if sent:  # a failed ping is retried on the next tick, not an interval later
            self._last_watchdog = now
        return sent

    def stopping(self) -> bool:
        """Report that shutdown began (``STOPPING=1``): flushing, checkpointing, leaving."""
        return self._send("STOPPING=1")

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status`` (``STATUS=...``)."""
        return self._send("STATUS=" + " ".join(str(text).splitlines()))

    def notify(self, *assignments: str) -> bool:
        """Send raw ``KEY=value`` assignments in one datagram, e.g. ``EXTEND_TIMEOUT_USEC=...``."""
        for assignment in assignments:
            if "=" not in assignment or "\n" in assignment:
                raise ValueError(f"not a KEY=value assignment: {assignment!r}")
        return self._send("\n".join(assignments))

    def close(self) -> None:
        """Close the socket; later calls reopen it."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._address if self._address is not None else "disabled"
        return f"Notifier({where!r}, watchdog_interval={self._watchdog_interval})"

    # ------------------------------------------------------------------
    # plumbing

    def _send(self, message: str) -> bool:
        if self._address is None:
            return False
        with self._lock:
            try:
                if self._socket is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.settimeout(self._timeout)
                    self._socket = sock
                self._socket.sendto(message.encode(), self._address)
            except OSError as exc:
                self._report_failure(message, exc)
                return False
        return True

    def _report_failure(self, message: str, exc: OSError) -> None:
        # Caller holds the lock. A fresh socket is tried on the next send.
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        first = message.partition("=")[0]
        if not self._warned:
            self._warned = True
            log.warning(
                "cannot notify systemd at %r (%s: %s); the service manager may consider the "
                "daemon unresponsive; further failures are logged at debug level",
                self._printable_address(),
                type(exc).__name__,
                exc,
            )
        else:
            log.debug("sd_notify %s failed: %s", first, exc)

    def _printable_address(self) -> str:
        address = self._address or ""
        return "@" + address[1:] if address.startswith("\0") else address


def _socket_address(value: str) -> str | None:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``, None when unset or unusable."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd >= 253 may pass "vsock:CID:PORT" (virtual machines); not a unix socket.
    log.warning("NOTIFY_SOCKET=%r is not a unix socket path; systemd will not be notified", value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds when the watchdog is meant for this process."""
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2e6
