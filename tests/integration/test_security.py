"""Security: what the daemon exposes, what it sends to Kafka, what it loads, what it logs.

- /metrics listens on loopback unless told otherwise (the default config, the
  shipped examples, and a live daemon's socket in /proc/net/tcp);
- SASL/SSL client options of the YAML reach kafka-python, for the consumer
  and the producer (captured at construction, and seen on the wire: a
  SASL_PLAINTEXT daemon against the plaintext test broker fails in the SASL
  handshake);
- nothing in the package can unpickle: no pickle-like module, every np.load
  with allow_pickle=False, YAML through a safe loader, no eval/exec;
- a secret given through ${ENV} never appears in the log (at DEBUG level),
  in /metrics, or in ``check-config --print``.
"""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

import streamgmm
from streamgmm.config import load_config, parse_config
from streamgmm.sinks import KafkaSink
from streamgmm.sources import KafkaSource
from tests.support.processes import DaemonProcess, write_config
from tests.support.waits import wait_for

from ..figures import record

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

PACKAGE = Path(streamgmm.__file__).resolve().parent
REPO = PACKAGE.parent
SASL = {
    "security_protocol": "SASL_PLAINTEXT",
    "sasl_mechanism": "PLAIN",
    "sasl_plain_username": "streamgmm",
    "sasl_plain_password": "${STREAMGMM_TEST_KAFKA_PASSWORD}",
}


# ---------------------------------------------------------------------------
# metrics on loopback


def listening(port: int) -> list[str]:
    """Local addresses listening on ``port`` (IPv4 and IPv6), from /proc/net/tcp*."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if width == 8:
                    found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.append(address)
    return found


def outward_address() -> str | None:
    """This host's address towards the network (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_metrics_listen_on_loopback_by_default(tmp_path, broker, unique):
    assert parse_config({"features": {"fields": ["a"]}}).metrics.host == "127.0.0.1"
    for example in ("streamgmm.yaml", "container.yaml"):
        config = yaml.safe_load((REPO / "config" / example).read_text())
        assert config["metrics"]["host"] in ("127.0.0.1", "${STREAMGMM_METRICS_HOST:-127.0.0.1}")

    topics = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    path, port = write_config(tmp_path, broker.bootstrap, topics, unique("g"))
    config = yaml.safe_load(path.read_text())
    del config["metrics"]["host"]  # the default
    path.write_text(yaml.safe_dump(config))
    daemon = DaemonProcess(path, port, tmp_path / "daemon.log")
    try:
        wait_for(lambda: daemon.get("/healthz")[0] == 200, 20, "/healthz", daemon)
        addresses = listening(port)
        assert addresses == ["127.0.0.1"]
        outward = outward_address()
        if outward is not None:
            with pytest.raises(OSError), socket.create_connection((outward, port), timeout=2):
                pass
    finally:
        assert daemon.terminate() == 0, daemon.log_tail()
    record(
        "security",
        check="metrics bind address",
        default="127.0.0.1",
        live_listening=addresses,
        checked_from=outward or "no non-loopback address",
        reachable_from_network=False,
    )


# ---------------------------------------------------------------------------
# client options reach kafka-python


class Captured(Exception):
    pass


def test_sasl_and_ssl_options_reach_the_consumer_and_the_producer(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMGMM_TEST_KAFKA_PASSWORD", "pw-from-env")
    options = {**SASL, "ssl_cafile": "/etc/ssl/ca.pem", "ssl_check_hostname": True}
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "source": {"kafka": {"client": options}},
                "features": {"fields": ["a"]},
                "sink": {"kafka": {"client": options}},
            }
        )
    )
    config = load_config(path)
    seen = {}

    def consumer(**kwargs):
        seen["consumer"] = kwargs
        raise Captured

    def producer(**kwargs):
        seen["producer"] = kwargs
        raise Captured

    source = KafkaSource(
        ["localhost:9092"], "events", "g", client=config.source.kafka.client,
        consumer_factory=consumer,
    )  # fmt: skip
    with pytest.raises(Captured):
        source._ensure_consumer()
    sink = KafkaSink(
        ["localhost:9092"], {"outliers": "o"}, client=config.sink.kafka.client,
        producer_factory=producer,
    )  # fmt: skip
    wait_for(lambda: "producer" in seen, 5, "the producer to be built")
    sink.close(0.1)
    expected = {**options, "sasl_plain_password": "pw-from-env"}
    for role in ("consumer", "producer"):
        assert {k: seen[role][k] for k in expected} == expected, role


def test_sasl_options_are_used_on_the_wire_and_the_password_is_never_logged(
    tmp_path, broker, unique
):
    """SASL_PLAINTEXT against the plaintext test broker: kafka-python opens with a SASL
    handshake, which the broker refuses; the daemon stays up, not ready, and the
    password it was given never shows in its DEBUG log or its /metrics."""
    secret = f"pw-{uuid.uuid4().hex}"
    topics = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    fast = {"bootstrap_timeout_ms": 2000}
    path, port = write_config(
        tmp_path, broker.bootstrap, topics, unique("g"),
        source__kafka__client={**SASL, **fast, "session_timeout_ms": 3000,
                               "heartbeat_interval_ms": 500},
        sink__kafka__client={**SASL, **fast},
        log__level="DEBUG",
    )  # fmt: skip
    daemon = DaemonProcess(
        path, port, tmp_path / "daemon.log", env={"STREAMGMM_TEST_KAFKA_PASSWORD": secret}
    )
    try:
        wait_for(
            lambda: "SaslHandshake" in daemon.log_path.read_text(),
            30,
            "a SASL handshake to be attempted",
            daemon,
        )
        status, body = daemon.get("/readyz")
        assert status == 503 and b'"connected": false' in body, body
        assert daemon.get("/healthz")[0] == 200
        metrics = daemon.metrics_text()
    finally:
        code = daemon.terminate(timeout_s=60)
    log = daemon.log_path.read_text()
    assert code == 0, daemon.log_tail()
    assert secret not in log, "the password is in the log"
    assert secret not in metrics, "the password is in /metrics"
    shown = subprocess.run(
        [sys.executable, "-m", "streamgmm.cli", "check-config", "--print", str(path)],
        capture_output=True, text=True, env={"STREAMGMM_TEST_KAFKA_PASSWORD": secret,
                                             "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert secret not in shown.stdout + shown.stderr
    assert '"sasl_plain_password": "***"' in shown.stdout
    record(
        "security",
        check="SASL options on the wire, secret from ${ENV}",
        handshake="SaslHandshake attempted, refused by the plaintext broker",
        secret_in_debug_log=False,
        secret_in_metrics=False,
        secret_in_check_config=False,
        log_lines=len(log.splitlines()),
    )


# ---------------------------------------------------------------------------
# nothing can unpickle

PICKLING_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "joblib",
    "shelve",
    "marshal",
    "cloudpickle",
}


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_nothing_in_the_package_can_unpickle():
    problems = []
    np_loads = 0
    for source in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        where = source.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if PICKLING_MODULES & {n.split(".")[0] for n in names}:
                    problems.append(f"{where}:{node.lineno} imports {names}")
        for call in calls(tree):
            name = dotted(call.func)
            keywords = {k.arg: k.value for k in call.keywords}
            if name in ("np.load", "numpy.load"):
                np_loads += 1
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{call.lineno} np.load without allow_pickle=False")
            if "allow_pickle" in keywords and getattr(keywords["allow_pickle"], "value", 1):
                problems.append(f"{where}:{call.lineno} allow_pickle is not False")
            if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                problems.append(f"{where}:{call.lineno} {name}")
            if name == "yaml.load":
                loader = dotted(keywords.get("Loader", ast.Name("missing")))
                if loader in ("missing", "yaml.Loader", "yaml.FullLoader", "yaml.UnsafeLoader"):
                    problems.append(f"{where}:{call.lineno} yaml.load with {loader}")
            if name in ("eval", "exec", "pickle.loads", "pickle.load"):
                problems.append(f"{where}:{call.lineno} {name}()")
    assert not problems, "\n".join(problems)
    assert np_loads >= 1  # the checkpoint loader was inspected
    from streamgmm.config.loader import _UniqueKeyLoader

    assert issubclass(_UniqueKeyLoader, yaml.SafeLoader)
