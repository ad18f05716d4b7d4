"""Per-entity models: detection, speed and memory, on generated host streams.

Hosts of three kinds, each with its own level per field (tests/support/hosts.py);
host anomalies are values normal for the population but far from the host's own
level. Measures, keyed (``process(X, keys)``) against keyless:

- host-anomaly AUC and the share of host anomalies / normal events flagged, after
  the first quarter of the stream, for a grid of relevance r and min_events;
- events/s keyed and keyless;
- bytes per entity (arrays, dict and key strings; tracemalloc) and, with
  ``--million``, the process RSS growth for 1,000,000 entities of 8 fields.

Usage::

    python benchmarks/entities.py            # grid + speed + bytes per entity (~1 min)
    python benchmarks/entities.py --million  # also the 1,000,000-entity memory run
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.metrics import roc_auc_score

from streamgmm.detector import Detector
from tests.support.hosts import host_stream

STREAMS = {
    "400 hosts, d=4, 80k events": dict(n_events=80_000, n_hosts=400, d=4, seed=1),
    "200 hosts, d=8, 60k events": dict(
        n_events=60_000, n_hosts=200, d=8, seed=2, host_anomaly_rate=0.01
    ),
    # young entities: 40 events a host, most judged before their 20th
    "2000 hosts, d=4, 80k events": dict(n_events=80_000, n_hosts=2_000, d=4, seed=5),
}
RELEVANCES = (0.5, 1.0, 2.0, 4.0, 8.0)
MIN_EVENTS = (5, 20, 40)


def detection(stream, keyed: bool, **params) -> dict[str, float]:
    detector = Detector(random_state=0, **params)
    started = time.perf_counter()
    result = detector.process(stream.X, keys=stream.keys if keyed else None)
    seconds = time.perf_counter() - started
    judged = (np.arange(len(stream.X)) >= len(stream.X) // 4) & (stream.kind != 2)
    truth = stream.kind[judged] == 1
    flagged = result.is_outlier[judged]
    return {
        "auc": roc_auc_score(truth, result.score[judged]),
        "host_flagged": flagged[truth].mean(),
        "normal_flagged": flagged[~truth].mean(),
        "events_per_s": len(stream.X) / seconds,
    }


def grid() -> None:
    streams = {name: host_stream(**spec) for name, spec in STREAMS.items()}
    print("| stream | r | min_events | AUC | host flagged | normal flagged |")
    print("|---|---|---|---|---|---|")
    for name, stream in streams.items():
        m = detection(stream, keyed=False)
        print(
            f"| {name} | keyless | - | {m['auc']:.3f} | {m['host_flagged']:.2f} "
            f"| {m['normal_flagged']:.4f} |"
        )
        for r in RELEVANCES:
            for min_events in MIN_EVENTS:
                m = detection(stream, True, relevance=r, min_entity_events=min_events)
                print(
                    f"| {name} | {r} | {min_events} | {m['auc']:.3f} | {m['host_flagged']:.2f} "
                    f"| {m['normal_flagged']:.4f} |",
                    flush=True,
                )


def warmed_rate(stream, keyed: bool, warm: int = 20_000, batch: int = 2_000) -> float:
    """Events/s once warmed up: ``warm`` events first (the warm-up, every host's first
    events), then the rest timed in polls of ``batch``."""
    detector = Detector(random_state=0)
    keys = np.asarray(stream.keys) if keyed else None
    detector.process(stream.X[:warm], keys=None if keys is None else keys[:warm])
    started = time.perf_counter()
    for i in range(warm, len(stream.X), batch):
        detector.process(
            stream.X[i : i + batch], keys=None if keys is None else keys[i : i + batch]
        )
    return (len(stream.X) - warm) / (time.perf_counter() - started)


def widened(stream, d: int, seed: int = 0):
    """The stream with ``d`` fields: its 8 repeated with scale factors and fresh noise."""
    rng = np.random.default_rng(seed)
    base = stream.X
    columns = [base[:, j % base.shape[1]] * (1.0 + 0.1 * (j // base.shape[1])) for j in range(d)]
    X = np.stack(columns, axis=1)
    X *= 1.0 + 0.01 * rng.normal(size=X.shape)
    return type(stream)(X, stream.keys, stream.kind, stream.host, stream.position)


def speed(repeats: int = 3) -> None:
    """Keyed against keyless, interleaved runs, medians: over a whole stream (the warm-up
    included) and once warmed up (the steady state a long-running daemon sees), then
    once warmed up with wider events."""
    stream = host_stream(100_000, n_hosts=400, d=8, seed=3)
    whole: dict[bool, list[float]] = {False: [], True: []}
    warmed: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for keyed in (False, True):
            whole[keyed].append(detection(stream, keyed)["events_per_s"])
            warmed[keyed].append(warmed_rate(stream, keyed))
    rows = [("whole stream, d=8", whole), ("once warmed up, d=8", warmed)]
    for d in (16, 64):
        wide = widened(host_stream(60_000, n_hosts=400, d=8, seed=3), d)
        rates = {k: [warmed_rate(wide, k) for _ in range(repeats)] for k in (False, True)}
        rows.append((f"once warmed up, d={d}", rates))
    for label, rates in rows:
        keyless, keyed = (float(np.median(rates[k])) for k in (False, True))
        print(
            f"events/s, {label} (400 hosts, median of {repeats}): keyless "
            f"{keyless:,.0f}, keyed {keyed:,.0f} ({keyed / keyless:.2f}x)"
        )


def _warm_detector(d: int, max_entities: int) -> Detector:
    stream = host_stream(2_000, n_hosts=50, d=d, seed=4, host_anomaly_rate=0.0, gross_rate=0.0)
    detector = Detector(random_state=0, max_entities=max_entities)
    detector.process(stream.X)
    return detector


def _distinct_keys(detector: Detector, n: int, d: int, chunk: int = 100_000) -> None:
    rng = np.random.default_rng(5)
    stream = host_stream(chunk, n_hosts=400, d=d, seed=6, host_anomaly_rate=0.0, gross_rate=0.0)
    for start in range(0, n, chunk):
        keys = [f"entity-{start + i:07d}" for i in range(chunk)]
        detector.process(stream.X[rng.permutation(chunk)], keys=keys)


def bytes_per_entity(n: int = 100_000, d: int = 8) -> None:
    detector = _warm_detector(d, max_entities=10 * n)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _distinct_keys(detector, n, d)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    table = detector.entities
    arrays = table.nbytes() / table.capacity
    print(
        f"bytes per entity (d={d}, K={table.n_components}, {len(table):,} entities): "
        f"{(after - before) / len(table):.0f} traced (arrays {arrays:.0f} per row of "
        f"capacity {table.capacity:,}, the rest the dict, key strings and row list)"
    )


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def million(d: int = 8) -> None:
    n = 1_000_000
    detector = _warm_detector(d, max_entities=n)
    before = _rss()
    started = time.perf_counter()
    _distinct_keys(detector, n, d)
    seconds = time.perf_counter() - started
    grown = _rss() - before
    print(
        f"1,000,000 entities of {d} fields (K={detector.entities.n_components}): RSS growth "
        f"{grown / 2**30:.2f} GiB ({grown / len(detector.entities):.0f} bytes per entity), "
        f"{len(detector.entities):,} held, {n / seconds:,.0f} events/s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--million", action="store_true", help="the 1,000,000-entity run")
    parser.add_argument("--skip-grid", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_grid:
        grid()
    speed()
    bytes_per_entity()
    if args.million:
        million()


if __name__ == "__main__":
    main()
