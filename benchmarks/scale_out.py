"""Scale-out: events/s of one and of two ``streamgmm run`` processes in one group, and restore time.

On one embedded broker (Tansu), in the same run:

1. Throughput. N JSON events with 8 numeric fields, keyed by host (H hosts of
   three kinds, each with its own level), are written to a topic of 6
   partitions. One process (a group of its own) reads the whole topic with
   per-entity models and the state in a compacted topic
   (``checkpoint.topic``), decoding in its own process
   (``features.decode_process: false``); then two processes in a second group
   split the same topic. Rates are events per second from the first event
   counted to the last (``streamgmm_events_total`` of both). The set-ups take
   turns ``--repeats`` times; medians are quoted.
2. Restore. A unit (one partition's state) with E entities of 8 fields is
   written to a state topic with the daemon's own store and read back as a
   new owner does; seconds per 100,000 entities and MB/s.

The machine has 2 cores shared with the broker: two processes cannot double
the rate here; the figure says what a second instance costs or gains on the
same host. On separate hosts each instance brings its own cores.

Run: ``python benchmarks/scale_out.py [--events 300000] [--hosts 600] [--repeats 2]
[--entities 100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from end_to_end import FAST, events_counted, free_port

from streamgmm.embedded import EmbeddedBroker

FIELDS = [f"f{j}" for j in range(8)]
RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 6


def host_events(rng: np.random.Generator, n: int, hosts: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs: host h of kind h % 3 has its own level per field."""
    kinds = rng.normal(0, 10, (3, 8))
    levels = kinds[np.arange(hosts) % 3] + rng.normal(0, 2, (hosts, 8))
    which = rng.integers(0, hosts, n)
    rows = levels[which] + rng.normal(0, 0.5, (n, 8))
    out = []
    for h, row in zip(which.tolist(), rows.round(4).tolist(), strict=True):
        key = f"host-{h}"
        out.append(
            (
                key.encode(),
                json.dumps({"host": key, **dict(zip(FIELDS, row, strict=True))}).encode(),
            )
        )
    return out


def produce(bootstrap: str, topic: str, pairs: list[tuple[bytes, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    for key, value in pairs:
        producer.send(topic, key=key, value=value)
    producer.flush(120)
    producer.close(10)


def start(workdir: str, bootstrap: str, topic: str, group: str, name: str):
    port = free_port()
    config = {
        "source": {"kind": "kafka", "kafka": {
            "bootstrap_servers": [bootstrap], "topic": topic, "group_id": group,
            "max_poll_records": 2000, "client": FAST}},
        "features": {"fields": FIELDS, "key": "host", "decode_process": False},
        "model": {"warmup": 1000, "random_state": 0, "entity": {"enabled": True}},
        "sink": {"kind": "kafka", "kafka": {"topic": f"{group}-out",
                                            "dead_letter_topic": f"{group}-dead"}},
        "checkpoint": {"path": None, "topic": f"{group}-state", "interval_s": 10},
        "metrics": {"host": "127.0.0.1", "port": port},
        "log": {"level": os.environ.get("SCALE_LOG_LEVEL", "WARNING"), "format": "json"},
    }  # fmt: skip
    path = os.path.join(workdir, f"{name}.yaml")
    Path(path).write_text(yaml.safe_dump(config))
    log = open(os.path.join(workdir, f"{name}.log"), "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "streamgmm", "run", "-c", path], stdout=log, stderr=subprocess.STDOUT
    )
    return process, port


def group_rate(workdir: str, bootstrap: str, topic: str, n: int, group: str, size: int) -> float:
    """Events/s of ``size`` processes in one group over the whole topic."""
    daemons = [start(workdir, bootstrap, topic, group, f"{group}-{i}") for i in range(size)]
    try:
        first = first_count = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            counted = sum(events_counted(port) for _, port in daemons)
            if counted > 0 and first is None:
                first, first_count = time.perf_counter(), counted
            if counted >= n:
                return (n - first_count) / (time.perf_counter() - first)
            for process, _ in daemons:
                if process.poll() is not None:
                    raise RuntimeError(f"a daemon of {group} exited ({process.returncode})")
            time.sleep(0.05)
        raise RuntimeError(f"{group} did not finish the topic in time")
    finally:
        for process, _ in daemons:
            process.terminate()
        for process, _ in daemons:
            process.wait(60)


def restore_rate(bootstrap: str, entities: int) -> dict:
    """Write one unit of ``entities`` entities with the daemon's store, restore it as a new
    owner does: seconds, MB and MB/s."""
    from streamgmm.detector import Detector
    from streamgmm.state_topic import StateStore

    rng = np.random.default_rng(1)
    detector = Detector(warmup=1000, random_state=0)
    X = rng.normal(size=(entities, 8))
    keys = [f"entity-{i}" for i in range(entities)]
    detector.process(X, keys=keys)
    changed, removed = detector.entity_changes()
    store = StateStore([bootstrap], "restore-state", "restore-events")
    store.ensure_topic(1)
    written = store.write(
        0, head=detector.get_state(entities=False), entities=changed, removed=removed,
        next_offset=entities,
    )  # fmt: skip
    if not store.flush(120):
        raise RuntimeError("the state records were not acknowledged")
    restored = store.restore(0, timeout_s=600)
    store.close()
    if len(restored.entities) != len(changed):
        raise RuntimeError(f"restored {len(restored.entities)} of {len(changed)} entities")
    return {
        "entities": len(changed),
        "records": restored.records,
        "written": written,
        "seconds": restored.seconds,
        "mb": restored.bytes / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--hosts", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--entities", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rates: dict[int, list[float]] = {1: [], 2: []}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as workdir:
        broker.create_topics(["scale-events"], partitions=PARTITIONS)
        produce(broker.bootstrap, "scale-events", host_events(rng, args.events, args.hosts))
        for turn in range(args.repeats):
            for size in (1, 2):
                group = f"scale-{size}-{turn}"
                rates[size].append(
                    group_rate(workdir, broker.bootstrap, "scale-events", args.events, group, size)
                )
                print(
                    f"turn {turn + 1}: {size} process(es) {rates[size][-1]:,.0f}/s", file=sys.stderr
                )
        restore = restore_rate(broker.bootstrap, args.entities)
    one, two = (float(np.median(rates[k])) for k in (1, 2))
    per_100k = restore["seconds"] * 100_000 / restore["entities"]
    table = "\n".join([
        f"# Scale-out benchmark ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()})",
        "",
        f"{args.events:,} JSON events of 8 fields keyed by {args.hosts} hosts, a topic of "
        f"{PARTITIONS} partitions, one Tansu broker on the same machine; per-entity models "
        "on, state in a compacted topic, `decode_process: false`; median of "
        f"{args.repeats} turns:",
        "",
        "| processes in the group | events/s | ratio to one |",
        "|---:|---:|---:|",
        f"| 1 | {one:,.0f} | 1 |",
        f"| 2 | {two:,.0f} | {two / one:.2f} |",
        "",
        f"Restore of one unit with {restore['entities']:,} entities of 8 fields "
        f"({restore['records']:,} records, {restore['mb']:.1f} MB): "
        f"{restore['seconds']:.2f} s, **{per_100k:.2f} s per 100,000 entities**, "
        f"{restore['mb'] / restore['seconds']:.1f} MB/s.",
    ])  # fmt: skip
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale_out.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
