"""docs/img/surprise.png: one faulty event's field surprise next to the old residuals.

A detector configured as in ``streamgmm demo`` learns the demo's host metrics
(web servers, databases, batch workers); then a web server answers at 400 ms.
The left panel shows what outlier records used to name the odd field by: the
standardised residuals to the most responsible component, which for this
event is the batch workers' (slow answers are normal there), so the residuals
blame cpu and mem. The right panel shows each field's surprise
``-log p(x_j | x_-j)``, with the value the model expected of the field.

Run: ``python scripts/surprise_figure.py [--output docs/img/surprise.png]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from streamgmm import demo
from streamgmm.daemon import build_detector

ROOT = Path(__file__).resolve().parents[1]


def faulty_event_explained(seed: int = 0):
    """Fields, the faulty event's values, and its BatchResult row (one event)."""
    config = demo.demo_config("localhost:9092", "unused.npz", 0)
    fields = list(config.features.fields)
    rng = np.random.default_rng(seed)
    detector = build_detector(config)
    normal = [demo.synthetic_event(rng) for _ in range(10_000)]
    detector.process(np.array([[e[f] for f in fields] for e in normal]))
    while True:  # a slow web server that the residuals blame on another field
        event = demo.synthetic_event(rng, anomaly=0)
        values = np.array([[event[f] for f in fields]])
        explained = detector.model.explain(detector.standardizer.transform(values))
        if np.argmax(np.abs(explained["contributions"][0])) != fields.index("latency_ms"):
            break
    return fields, event, detector.process(values)


def plot(output: Path, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields, event, result = faulty_event_explained(seed)
    residuals, surprise, expected = result.contributions[0], result.surprise[0], result.expected[0]
    old, new = int(np.argmax(np.abs(residuals))), int(np.argmax(surprise))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    y = np.arange(len(fields))[::-1]
    left.barh(y, residuals, color=["tab:red" if j == old else "tab:gray" for j in range(3)])
    left.axvline(0.0, color="black", linewidth=0.8)
    left.set_title(f"before: residual to the most responsible component\nnames {fields[old]}")
    left.set_xlabel("standard deviations")
    right.barh(y, surprise, color=["tab:blue" if j == new else "tab:gray" for j in range(3)])
    right.set_title(f"field surprise -log p(x_j | other fields)\nnames {fields[new]}")
    right.set_xlabel("nats")
    for ax in (left, right):
        ax.set_yticks(y, fields)
    for j, yj in enumerate(y):
        right.annotate(
            f" {event[fields[j]]:.4g} (expected {expected[j]:.4g})",
            (max(surprise[j], 0.0), yj),
            va="center",
            fontsize=8,
        )
    right.set_xlim(0.0, 1.6 * surprise.max())
    values = ", ".join(f"{f}={event[f]:.4g}" for f in fields)
    fig.suptitle(f"a web server answering slowly: {event['host']} {values}", fontsize=10)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80)
    print(f"wrote {output}: residuals name {fields[old]}, surprise names {fields[new]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "img" / "surprise.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    plot(args.output, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
