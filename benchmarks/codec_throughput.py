"""Decoding throughput: ``events.decode_batch`` on batches of JSON events of 8 numeric fields.

Four batches: clean flat fields (the common poll), 1% bad events mixed in (each
becomes a dead letter with its explanation), nested fields (``m.cpu``), and
nested with 1% bad. Run: ``.venv/bin/python benchmarks/codec_throughput.py
[--events 2000] [--repeats 30]``. Prints best-of-N milliseconds per batch and
events per second.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

from streamgmm.events import decode_batch

FIELDS = ["cpu", "mem", "latency_ms", "disk", "net_in", "net_out", "load1", "errors"]
BAD = [b"", b"\xff", b"[1]", b'{"cpu": "3.5"}', b"{"]


def make_batch(n: int = 2000, seed: int = 0, bad: float = 0.0, nested: bool = False) -> list:
    """``n`` events; a share ``bad`` of them replaced by one of the unusable kinds."""
    rng = random.Random(seed)
    values = []
    for i in range(n):
        fields = {f: rng.gauss(0, 1) * 100 for f in FIELDS}
        event = {"host": f"h{i % 50}", "ts": 1_700_000_000_000 + i}
        event.update({"m": fields} if nested else fields)
        raw = json.dumps(event).encode()
        values.append(rng.choice(BAD) if rng.random() < bad else raw)
    return values


def best_of(fn: Callable[[], object], repeats: int = 30) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure(n: int = 2000, repeats: int = 30) -> dict[str, float]:
    """Events per second of each kind of batch."""
    nested_fields = [f"m.{f}" for f in FIELDS]
    cases = {
        "clean": (make_batch(n), FIELDS),
        "1% bad": (make_batch(n, bad=0.01), FIELDS),
        "nested": (make_batch(n, nested=True), nested_fields),
        "nested, 1% bad": (make_batch(n, bad=0.01, nested=True), nested_fields),
    }
    return {
        name: n / best_of(lambda v=values, f=fields: decode_batch(v, f, "host", 1 << 20), repeats)
        for name, (values, fields) in cases.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    for name, rate in measure(args.events, args.repeats).items():
        print(
            f"decode_batch [{name:14}] {args.events / rate * 1e3:6.2f} ms / {args.events} "
            f"events = {rate:10,.0f} events/s"
        )


if __name__ == "__main__":
    main()
