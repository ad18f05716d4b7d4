"""Detection: prequential ROC-AUC of GMMDetector against river's HalfSpaceTrees.

Every labelled set in the shared data directory (``NAME.npz`` with ``X`` and
``y``, see ``../shared/data/MANIFEST.md``) is streamed in file order, one event
at a time: ``score_one`` first, then ``learn_one`` (prequential: each event is
scored by a model that has not seen it). The contenders, in the same run and
on the same events:

- ``streamgmm.river.GMMDetector()`` with its default settings (no seed), and
  ``GMMDetector(random_state=s)`` for a few seeds, to show the spread;
- ``preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=42)``.

The score is river's convention (higher = more anomalous) and the AUC is
``sklearn.metrics.roc_auc_score(y, scores)`` over all rows, warm-up included.
Models are run in alternating chunks of events so that their events/s are
measured under the same machine load.

Run: ``python benchmarks/detection.py [--quick | --max-rows N] [--sets http smtp ...]``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bench_common import (
    REPO_ROOT,
    Report,
    Target,
    add_data_argument,
    add_output_arguments,
    data_dir,
    finish,
    fmt,
    fmt_rate,
    markdown_table,
    missing_data_report,
    output_dirs,
)

NAME = "detection"
TITLE = "Detection: prequential ROC-AUC, GMMDetector vs HalfSpaceTrees"
MEAN_MARGIN = 0.05  # mean AUC at least HST's mean + this
WORST_GAP = 0.10  # no set more than this below HST
DEFAULT = "GMMDetector()"
HST = "MinMaxScaler | HST"


# ---------------------------------------------------------------------------
# data


def list_sets(directory: Path, names: list[str] | None = None) -> list[Path]:
    """The ``*.npz`` sets in ``directory`` (largest first), or the ``names`` asked for."""
    paths = sorted(directory.glob("*.npz"))
    if names:
        wanted = set(names)
        paths = [p for p in paths if p.stem in wanted]
    return sorted(paths, key=_n_rows, reverse=True)


def _n_rows(path: Path) -> int:
    with np.load(path, allow_pickle=False) as npz:
        return int(npz["y"].shape[0])


def load_set(path: Path, max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        X, y = npz["X"], npz["y"]
    if max_rows is not None:
        X, y = X[:max_rows], y[:max_rows]
    return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)


# ---------------------------------------------------------------------------
# models and the prequential loop


def make_models(seeds: tuple[int, ...] = (0, 1, 2), hst_seed: int = 42) -> dict[str, object]:
    """The contenders, fresh: default GMMDetector, seeded ones, and MinMaxScaler | HST."""
    from river import anomaly, preprocessing

    from streamgmm.river import GMMDetector

    models: dict[str, object] = {DEFAULT: GMMDetector()}
    models[HST] = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=hst_seed)
    for seed in seeds:
        models[f"GMMDetector(random_state={seed})"] = GMMDetector(random_state=seed)
    return models


def prequential_scores(
    models: dict[str, object],
    X: np.ndarray,
    chunk: int = 1_000,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``score_one`` then ``learn_one`` on each row, in order, for every model.

    Models take turns on chunks of ``chunk`` rows (the turn order rotates), so
    that each sees the machine in the same state.

    Returns
    -------
    scores : {name: array of shape (n_samples,)}
    seconds : {name: total seconds spent in score_one and learn_one}
    """
    names = [f"x{j}" for j in range(X.shape[1])]
    scores = {name: np.empty(len(X)) for name in models}
    seconds = dict.fromkeys(models, 0.0)
    order = list(models)
    for turn, begin in enumerate(range(0, len(X), chunk)):
        rows = [dict(zip(names, map(float, row), strict=True)) for row in X[begin : begin + chunk]]
        shift = turn % len(order)
        for name in order[shift:] + order[:shift]:
            model, out = models[name], scores[name]
            score_one, learn_one = model.score_one, model.learn_one
            start = time.perf_counter()
            for i, x in enumerate(rows, begin):
                out[i] = score_one(x)
                learn_one(x)
            seconds[name] += time.perf_counter() - start
        if progress is not None:
            progress(begin + len(rows))
    return scores, seconds


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC; NaN when it is undefined (one class only, or a NaN score)."""
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2 or np.isnan(scores).any():
        return float("nan")
    # ranks keep +-inf scores usable (roc_auc_score refuses them) without changing the AUC
    return float(roc_auc_score(y, rankdata(scores)))


@dataclass
class SetResult:
    name: str
    n: int
    d: int
    anomaly_share: float
    auc: dict[str, float]
    rate: dict[str, float]  # events per second
    non_finite: dict[str, int]
    seconds: float
    seed_names: list[str] = field(default_factory=list)

    @property
    def difference(self) -> float:
        return self.auc[DEFAULT] - self.auc[HST]

    @property
    def seed_aucs(self) -> np.ndarray:
        return np.array([self.auc[name] for name in self.seed_names])


def evaluate_set(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    seeds: tuple[int, ...] = (0, 1, 2),
    chunk: int = 1_000,
    verbose: bool = False,
) -> SetResult:
    """Prequential AUC and events/s of every contender on one labelled set."""
    models = make_models(seeds)
    started = time.perf_counter()
    last = [started]

    def progress(done: int) -> None:
        now = time.perf_counter()
        if verbose and (now - last[0] > 30 or done == len(X)):
            print(f"    {name}: {done:,}/{len(X):,} rows, {now - started:.0f} s", flush=True)
            last[0] = now

    scores, seconds = prequential_scores(models, X, chunk, progress)
    return SetResult(
        name=name,
        n=len(X),
        d=X.shape[1],
        anomaly_share=float(y.mean()) if len(y) else float("nan"),
        auc={m: auc(y, s) for m, s in scores.items()},
        rate={m: len(X) / max(t, 1e-12) for m, t in seconds.items()},
        non_finite={m: int((~np.isfinite(s)).sum()) for m, s in scores.items()},
        seconds=time.perf_counter() - started,
        seed_names=[m for m in models if m not in (DEFAULT, HST)],
    )


# ---------------------------------------------------------------------------
# report


def _signed(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.3f}"


def result_rows(results: list[SetResult]) -> list[list[str]]:
    rows = []
    for r in results:
        seeds = r.seed_aucs
        rows.append(
            [
                r.name,
                f"{r.n:,}",
                str(r.d),
                f"{100 * r.anomaly_share:.2f}%",
                fmt(r.auc[DEFAULT]),
                fmt(r.auc[HST]),
                _signed(r.difference),
                fmt_rate(r.rate[DEFAULT]),
                fmt_rate(r.rate[HST]),
                fmt(float(np.nanmin(seeds))) if len(seeds) else "n/a",
                fmt(float(np.nanmedian(seeds))) if len(seeds) else "n/a",
                fmt(float(np.nanmax(seeds))) if len(seeds) else "n/a",
            ]
        )
    return rows


def summarise(results: list[SetResult]) -> tuple[str, list[Target]]:
    scored = [r for r in results if np.isfinite(r.difference)]
    if not scored:
        return "No set had both classes: no AUC to summarise.", [
            Target("detection targets", None, "no AUC could be computed")
        ]
    mean_gmm = float(np.mean([r.auc[DEFAULT] for r in scored]))
    mean_hst = float(np.mean([r.auc[HST] for r in scored]))
    worst = min(scored, key=lambda r: r.difference)
    at_least = sum(r.difference >= 0 for r in scored)
    seed_names = scored[0].seed_names
    seed_means = {s: float(np.mean([r.auc[s] for r in scored])) for s in seed_names}
    seed_worst = {s: min(r.auc[s] - r.auc[HST] for r in scored) for s in seed_names}
    non_finite = {m: sum(r.non_finite[m] for r in results) for m in results[0].non_finite}

    lines = [
        markdown_table(
            ["", "mean AUC", "mean - HST mean", "worst difference to HST"],
            [
                [DEFAULT, fmt(mean_gmm), _signed(mean_gmm - mean_hst), _signed(worst.difference)],
                [HST, fmt(mean_hst), "", ""],
                *[
                    [
                        s,
                        fmt(seed_means[s]),
                        _signed(seed_means[s] - mean_hst),
                        _signed(seed_worst[s]),
                    ]
                    for s in seed_names
                ],
            ],
        ),
        "",
        f"Over {len(scored)} sets: GMMDetector() >= HST on {at_least}; worst set "
        f"{worst.name} ({_signed(worst.difference)}).",
        "Non-finite scores: " + ", ".join(f"{m} {count}" for m, count in non_finite.items()) + ".",
    ]
    targets = [
        Target(
            f"mean AUC >= HST mean + {MEAN_MARGIN}",
            mean_gmm >= mean_hst + MEAN_MARGIN,
            f"{mean_gmm:.3f} vs {mean_hst:.3f} ({mean_gmm - mean_hst:+.3f})",
        ),
        Target(
            f"no set more than {WORST_GAP} below HST",
            worst.difference >= -WORST_GAP,
            f"worst: {worst.name} {worst.difference:+.3f}",
        ),
        Target(
            "every set at least HST's AUC (DESIGN.md section 5)",
            at_least == len(scored),
            f"{at_least}/{len(scored)} sets",
        ),
    ]
    if seed_names:
        holds = [
            seed_means[s] >= mean_hst + MEAN_MARGIN and seed_worst[s] >= -WORST_GAP
            for s in seed_names
        ]
        targets.append(
            Target(
                "both first targets hold for every seed",
                all(holds),
                f"{sum(holds)}/{len(holds)} seeds; seed means "
                + ", ".join(f"{seed_means[s]:.3f}" for s in seed_names),
            )
        )
    return "\n".join(lines), targets


def run(args: argparse.Namespace) -> Report:
    # a run on some sets or rows only is not the reference run: keep it out of results/
    out_dir, _ = output_dirs(args, partial=bool(args.sets or args.max_rows))
    directory = args.data or data_dir()
    paths = list_sets(directory, args.sets) if directory.is_dir() else []
    if not paths:
        what = f"no *.npz set in {directory}" + (f" named {args.sets}" if args.sets else "")
        return finish(missing_data_report(NAME, TITLE, what), out_dir)
    max_rows = args.max_rows if args.max_rows else (10_000 if args.quick else None)
    seeds = tuple(args.seeds)

    results = []
    for path in paths:
        X, y = load_set(path, max_rows)
        print(f"  {path.stem}: {len(X):,} rows x {X.shape[1]}", flush=True)
        result = evaluate_set(path.stem, X, y, seeds, args.chunk, verbose=True)
        results.append(result)
        print(
            f"  {path.stem}: AUC GMMDetector {result.auc[DEFAULT]:.3f} "
            f"HST {result.auc[HST]:.3f} ({result.seconds:.0f} s)",
            flush=True,
        )

    summary, targets = summarise(results)
    truncated = f" (first {max_rows:,} rows of each set only)" if max_rows else " (all rows)"
    body = [
        f"Data: `{os.path.relpath(directory, REPO_ROOT)}`{truncated}. Prequential: "
        "`score_one` then `learn_one` per row, "
        "rows in file order, AUC over all rows (warm-up included). "
        f"GMMDetector: `streamgmm.river.GMMDetector()` defaults (no seed); seeds "
        f"{', '.join(map(str, seeds)) or 'none'}: `GMMDetector(random_state=s)`. HST: "
        "`preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=42)`. "
        "Difference = GMMDetector() - HST. Events/s: score_one + learn_one, models taking turns "
        f"on chunks of {args.chunk:,} rows.",
        "",
        markdown_table(
            [
                "set",
                "n",
                "d",
                "anomalies",
                "AUC GMMDetector",
                "AUC HST",
                "difference",
                "GMMDetector events/s",
                "HST events/s",
                "seeds min",
                "seeds median",
                "seeds max",
            ],
            result_rows(results),
        ),
        "",
        summary,
    ]
    return finish(Report(NAME, TITLE, "\n".join(body), targets), out_dir)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_output_arguments(parser)
    add_data_argument(parser)
    parser.add_argument("--sets", nargs="*", default=None, help="set names (default: all)")
    parser.add_argument("--max-rows", type=int, default=None, help="first N rows of each set")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--chunk", type=int, default=1_000)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
