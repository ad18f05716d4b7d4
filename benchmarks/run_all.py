"""Run every benchmark and collect their tables in ``benchmarks/results/SUMMARY.md``.

Each benchmark also writes its own ``results/NAME.md``. ``--quick`` runs them on
small inputs (about a minute in all) and writes to ``results/quick/`` instead,
so a quick run never overwrites the committed full results. A benchmark that
fails is reported and the others still run; the exit status is then 1.

Run: ``python benchmarks/run_all.py [--quick] [--only speed drift ...]``
(``make bench`` runs the full set).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import detection
import drift
import online_vs_batch
import speed
import trust
from bench_common import (
    QUICK_RESULTS_DIR,
    RESULTS_DIR,
    Report,
    machine_info,
    markdown_table,
)

BENCHMARKS = {
    "online_vs_batch": online_vs_batch,
    "speed": speed,
    "detection": detection,
    "drift": drift,
    "trust": trust,
}


def _demote(markdown: str) -> str:
    """Headings one level down, so that each report nests under its section."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def summary(reports: list[Report], failures: dict[str, str], quick: bool) -> str:
    rows = [[r.name, *t.row()] for r in reports for t in r.targets]
    rows += [[name, "benchmark", "FAILED", error] for name, error in failures.items()]
    parts = [
        "# streamgmm benchmarks: summary" + (" (quick mode, small inputs)" if quick else ""),
        "",
        machine_info(),
        "",
        "Targets from DESIGN.md section 5 (and the benchmark brief). Each section below is "
        "also in `benchmarks/results/NAME.md`.",
        "",
        markdown_table(["benchmark", "target", "status", "measured"], rows),
        "",
    ]
    for report in reports:
        parts += [f"## {report.title}", "", _demote(report.body.rstrip()), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs; write results/quick/")
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS), default=None)
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args(argv)

    out = args.out or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)
    common = (["--quick"] if args.quick else []) + (["--out", str(out)] if args.out else [])
    reports, failures = [], {}
    for name in args.only or BENCHMARKS:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            reports.append(BENCHMARKS[name].main(common))
        except Exception as error:  # one broken benchmark must not hide the others
            traceback.print_exc()
            failures[name] = f"{type(error).__name__}: {error}"
        print(f"== {name}: {time.perf_counter() - started:.0f} s", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    path = out / "SUMMARY.md"
    path.write_text(summary(reports, failures, args.quick))
    print(f"[summary written to {path}]", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
