"""Codec throughput: decode_batch on 2,000 JSON events of 8 numeric fields.

Compares the standard-library parser with orjson (used by the codec's fast
path when installed). Run: ``.venv/bin/python benchmarks/codec_throughput.py``.
Prints best-of-N milliseconds per batch and events per second.
"""

from __future__ import annotations

import json
import random
import time

from streamgmm import codec

FIELDS = ["cpu", "mem", "latency_ms", "disk", "net_in", "net_out", "load1", "errors"]


def make_batch(n: int = 2000, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "host": f"h{i % 50}",
                "ts": 1_700_000_000_000 + i,
                **{f: rng.gauss(0, 1) * 100 for f in FIELDS},
            }
        ).encode()
        for i in range(n)
    ]


def best_of(fn, repeats: int = 30) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    values = make_batch()
    results = {}
    backends = {"stdlib": codec._stdlib_loads}
    if codec._orjson is not None:
        backends["orjson"] = codec._orjson.loads
    saved = codec._fast_loads
    try:
        for name, loads in backends.items():
            codec._fast_loads = loads
            seconds = best_of(lambda: codec.decode_batch(values, FIELDS, "host", 1 << 20))
            results[name] = seconds
            print(
                f"decode_batch [{name:6}] {seconds * 1e3:6.2f} ms / 2000 events = "
                f"{len(values) / seconds:10,.0f} events/s"
            )
    finally:
        codec._fast_loads = saved
    if "orjson" in results:
        print(f"orjson speed-up: {results['stdlib'] / results['orjson']:.2f}x")


if __name__ == "__main__":
    main()
