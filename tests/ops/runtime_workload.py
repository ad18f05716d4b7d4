"""What the daemon does to its host, minus the model: run inside the sandbox.

Imports the runtime stack and every streamgmm module, computes with numpy,
scipy and OpenBLAS threads, serves and scrapes Prometheus metrics, notifies
a systemd-style socket, writes and reads a checkpoint, handles SIGTERM and,
given a broker address, produces and consumes through Kafka. Prints one line
per step, so a failure shows how far it got; exits 0 when all passed.

    python runtime_workload.py [BOOTSTRAP_SERVER]

With ``STREAMGMM_SANDBOX_EXPECT=1`` it first proves the sandbox is in force
(writable+executable memory and netlink sockets refused), so a test cannot
pass because the filters silently were not loaded.
"""

from __future__ import annotations

import importlib
import mmap
import os
import pkgutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
import uuid


def step(name: str) -> None:
    print(f"ok {name}", flush=True)


def sandbox_in_force() -> None:
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        raise SystemExit("writable+executable memory was allowed: the sandbox is not in force")
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    except OSError:
        pass
    else:
        raise SystemExit("a netlink socket was allowed: the sandbox is not in force")
    step("sandbox in force")


def numerics() -> None:
    import numpy as np
    import scipy.cluster.vq
    import scipy.linalg
    import scipy.special
    import scipy.stats

    rng = np.random.default_rng(0)
    a = rng.normal(size=(600, 600))
    s = a @ a.T + 600 * np.eye(600)  # large enough for OpenBLAS to start its threads
    chol = np.linalg.cholesky(s)
    scipy.linalg.solve_triangular(chol, a[:, :5], lower=True)
    assert np.isfinite(np.linalg.slogdet(s)[1])
    assert np.isfinite(scipy.special.logsumexp(a, axis=1)).all()
    scipy.cluster.vq.kmeans2(a[:, :3], 4, seed=1, minit="++")
    scipy.stats.chi2.ppf(0.999, df=3)
    step("numpy/scipy/OpenBLAS")

    import river.anomaly
    import river.stats

    q = river.stats.Quantile(0.99)
    for x in a[:, 0]:
        q.update(float(x))
    river.anomaly.HalfSpaceTrees(seed=1).learn_one({"x": 0.5})
    step("river")


def streamgmm_modules() -> None:
    import streamgmm

    names = [m.name for m in pkgutil.walk_packages(streamgmm.__path__, "streamgmm.")]
    for name in names:
        importlib.import_module(name)
    step(f"import {len(names)} streamgmm modules")


def metrics() -> None:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("sandbox_probe_total", "probe", registry=registry).inc()
    prometheus_client.ProcessCollector(registry=registry)
    server, _ = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    port = server.server_address[1]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "sandbox_probe_total 1.0" in body, body
    server.shutdown()
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    step("metrics server")


def notify_and_checkpoint() -> None:
    import numpy as np

    from streamgmm.checkpoint import load_state, save_state
    from streamgmm.notify import Notifier

    with tempfile.TemporaryDirectory() as tmp:
        manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        manager.bind(os.path.join(tmp, "notify"))
        notifier = Notifier(environ={"NOTIFY_SOCKET": os.path.join(tmp, "notify")})
        assert notifier.ready() and notifier.status("probe")
        assert manager.recv(100) == b"READY=1"
        manager.close()
        step("sd_notify")
        path = os.path.join(tmp, "model.npz")
        save_state(path, {"means": np.eye(3), "n": 5}, kind="probe", fingerprint={"k": 3})
        assert load_state(path, kind="probe", fingerprint={"k": 3})["n"] == 5
        step("checkpoint write/fsync/rename/read")


def signals_and_threads() -> None:
    got = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: got.set())
    worker = threading.Thread(target=lambda: time.sleep(0.05))
    worker.start()
    os.kill(os.getpid(), signal.SIGTERM)
    worker.join()
    assert got.wait(5)
    step("signals and threads")


def kafka_round_trip(bootstrap: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"sandbox-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(topic, b'{"cpu": 0.5}').get(timeout=30)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    while not values and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(record.value for record in records)
    consumer.close()
    assert values == [b'{"cpu": 0.5}'], values
    step("kafka produce/consume")


def main() -> None:
    if os.environ.get("STREAMGMM_SANDBOX_EXPECT") == "1":
        sandbox_in_force()
    numerics()
    streamgmm_modules()
    metrics()
    notify_and_checkpoint()
    signals_and_threads()
    if len(sys.argv) > 1:
        kafka_round_trip(sys.argv[1])
    print("ALL OK", flush=True)


if __name__ == "__main__":
    main()
