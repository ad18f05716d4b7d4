"""Drift: how fast does the detector recover after an abrupt shift of every mean?

A stationary mixture of 3 rotated ellipses in d=4 gives ``--before`` events
(30,000); then every event is shifted by 5 standard deviations of the
pre-shift data, per feature, for ``--after`` more events. ``Detector(half_life=H)``
processes the stream in batches of 100 events (prequential: each batch is
scored by the model as it was before it).

For each H: the pre-shift level (mean log-likelihood of the last 5,000 events
before the shift), and the recovery: the number of events after the shift up
to the end of the first batch that starts a run of 5 consecutive batches whose
mean log-likelihood is within 1 nat of that level.

Two ways to adapt are measured:

- the default detector: flagged events are not learnt but quarantined, and
  once they make up a large share of recent traffic they seed components of
  their own (a new regime);
- ``learn_from_outliers=True``: every event is learnt, and the half-life's
  forgetting alone moves the mixture to the new place.

``half_life=None`` (no forgetting) is shown as a reference for both.

Run: ``python benchmarks/drift.py [--quick]``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_common import (
    Report,
    Target,
    add_output_arguments,
    display_path,
    finish,
    markdown_table,
    output_dirs,
    rotated_ellipses,
)

from streamgmm.detector import Detector

NAME = "drift"
TITLE = "Drift: recovery after an abrupt shift of all means"
HALF_LIVES = (1000, 2000, 5000)
TARGET_EVENTS = 5_000
BATCH = 100
WINDOW = 500  # events per reported mean
LEVEL_EVENTS = 5_000
WITHIN_NATS = 1.0
CONSECUTIVE = 5


def shifted_stream(
    before: int = 30_000,
    after: int = 30_000,
    d: int = 4,
    n_components: int = 3,
    shift_sd: float = 5.0,
    seed: int = 0,
) -> np.ndarray:
    """Rows of shape (before + after, d): a stationary mixture, then every mean moved."""
    rng = np.random.default_rng(seed)
    X, _ = rotated_ellipses(d, n_components, rng).sample(before + after, rng)
    X[before:] += shift_sd * X[:before].std(axis=0)
    return X


@dataclass
class DriftRun:
    label: str
    half_life: int | None
    learn_from_outliers: bool
    log_likelihood: np.ndarray  # per event, prequential
    is_outlier: np.ndarray
    shift_at: int
    regime_changes: int
    n_components: int

    def batch_means(self, size: int = BATCH) -> np.ndarray:
        n = len(self.log_likelihood) // size * size
        return self.log_likelihood[:n].reshape(-1, size).mean(axis=1)

    @property
    def level(self) -> float:
        return float(self.log_likelihood[self.shift_at - LEVEL_EVENTS : self.shift_at].mean())

    def recovery(self) -> int | None:
        """Events after the shift until the mean is back within 1 nat for 5 batches, or None."""
        means = self.batch_means()[self.shift_at // BATCH :]
        good = np.abs(means - self.level) <= WITHIN_NATS
        for b in range(len(good) - CONSECUTIVE + 1):
            if good[b : b + CONSECUTIVE].all():
                return (b + 1) * BATCH
        return None

    def share_within_after_recovery(self) -> float:
        """Share of the batches after recovery that stay within 1 nat of the level."""
        events = self.recovery()
        if events is None:
            return float("nan")
        means = self.batch_means()[(self.shift_at + events) // BATCH :]
        return float((np.abs(means - self.level) <= WITHIN_NATS).mean()) if len(means) else 1.0


def run_detector(
    X: np.ndarray,
    shift_at: int,
    half_life: int | None,
    learn_from_outliers: bool = False,
    random_state: int = 0,
) -> DriftRun:
    detector = Detector(
        half_life=half_life, learn_from_outliers=learn_from_outliers, random_state=random_state
    )
    results = [detector.process(X[i : i + BATCH]) for i in range(0, len(X), BATCH)]
    label = f"half_life={half_life}" + (", learn_from_outliers" if learn_from_outliers else "")
    return DriftRun(
        label=label,
        half_life=half_life,
        learn_from_outliers=learn_from_outliers,
        log_likelihood=np.concatenate([r.log_likelihood for r in results]),
        is_outlier=np.concatenate([r.is_outlier for r in results]),
        shift_at=shift_at,
        regime_changes=detector.n_regime_changes,
        n_components=detector.model.n_components_,
    )


def plot(runs: list[DriftRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            "default detector (quarantine, new regime)",
            [r for r in runs if not r.learn_from_outliers],
        ),
        ("learn_from_outliers=True (forgetting only)", [r for r in runs if r.learn_from_outliers]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4), dpi=80, sharey=True)
    styles = ("-", "--", "-.", ":")
    for ax, (title, group) in zip(axes, panels, strict=True):
        lowest = np.inf
        for run, style in zip(group, styles, strict=False):
            means = run.batch_means(WINDOW)
            x = (np.arange(len(means)) + 1) * WINDOW / 1000
            ax.plot(x, means, style, linewidth=1.2, label=f"H={run.half_life}")
            lowest = min(lowest, means[run.shift_at // WINDOW :].min())
        shift = group[0].shift_at / 1000
        level = group[0].level
        ax.axvline(shift, color="black", linestyle="--", linewidth=0.8)
        ax.axhline(level - WITHIN_NATS, color="grey", linestyle=":", linewidth=0.8)
        bottom = level - 12
        ax.set_ylim(bottom, level + 2)
        if lowest < bottom:
            ax.annotate(
                f"shift (dip to {lowest:.0f}, off scale)",
                (shift, bottom),
                xytext=(-4, 4),
                textcoords="offset points",
                horizontalalignment="right",
                fontsize=7,
            )
        ax.set_xlabel("events (thousands)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel(f"mean log-likelihood per {WINDOW} events", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _recovery_text(events: int | None) -> str:
    return "never" if events is None else f"{events:,}"


def run(args: argparse.Namespace) -> Report:
    out_dir, img_dir = output_dirs(args)
    before, after = (10_000, 10_000) if args.quick else (args.before, args.after)
    X = shifted_stream(before, after, seed=args.seed)
    half_lives: list[int | None] = [*HALF_LIVES, None]
    runs = []
    for learn_from_outliers in (False, True):
        for half_life in half_lives:
            result = run_detector(X, before, half_life, learn_from_outliers, args.seed)
            runs.append(result)
            print(f"  {result.label}: recovery {_recovery_text(result.recovery())}", flush=True)

    picture = img_dir / "drift.png"
    plot(runs, picture)

    rows = []
    for r in runs:
        after_shift = r.is_outlier[r.shift_at :]
        rows.append(
            [
                "forgetting only" if r.learn_from_outliers else "default",
                str(r.half_life),
                f"{r.level:.3f}",
                f"{r.batch_means(WINDOW)[r.shift_at // WINDOW :].min():.1f}",
                _recovery_text(r.recovery()),
                "n/a"
                if np.isnan(r.share_within_after_recovery())
                else f"{r.share_within_after_recovery():.0%}",
                f"{after_shift.mean():.1%}",
                f"{after_shift[-5_000:].mean():.2%}",
                str(r.regime_changes),
                str(r.n_components),
            ]
        )

    first = before // WINDOW - 5
    last = min(before // WINDOW + 20, len(X) // WINDOW)
    series = []
    for w in range(first, last):
        cells = [f"{w * WINDOW - before:+,}"]
        cells += [f"{r.batch_means(WINDOW)[w]:.2f}" for r in runs]
        series.append(cells)

    targeted = [r for r in runs if not r.learn_from_outliers and r.half_life in HALF_LIVES]
    recoveries = [r.recovery() for r in targeted]
    targets = [
        Target(
            f"Detector(half_life=H), H in {{1000, 2000, 5000}}: back within {WITHIN_NATS:g} nat "
            f"of the pre-shift level within {TARGET_EVENTS:,} events",
            all(e is not None and e <= TARGET_EVENTS for e in recoveries),
            ", ".join(
                f"H={r.half_life}: {_recovery_text(e)}"
                for r, e in zip(targeted, recoveries, strict=True)
            ),
        )
    ]
    forgetting = [r for r in runs if r.learn_from_outliers and r.half_life in HALF_LIVES]
    targets.append(
        Target(
            "same with learn_from_outliers=True (forgetting alone; informative, not a design goal)",
            all((e := r.recovery()) is not None and e <= TARGET_EVENTS for r in forgetting),
            ", ".join(f"H={r.half_life}: {_recovery_text(r.recovery())}" for r in forgetting),
        )
    )

    body = [
        f"Stream: mixture of 3 rotated ellipses, d=4, {before:,} events, then every event "
        f"shifted by +5 pre-shift standard deviations per feature for {after:,} events "
        f"(seed {args.seed}). `Detector(half_life=H, random_state={args.seed})`, other "
        f"settings default, batches of {BATCH}. Log-likelihoods are prequential, in the units "
        "of the data. Level = mean of the last 5,000 pre-shift events. Recovery = events "
        f"after the shift to the end of the first of {CONSECUTIVE} consecutive batches whose "
        f"mean is within {WITHIN_NATS:g} nat of the level. 'Stays' = share of later batches "
        "still within 1 nat. Flagged = outlier share after the shift (all of it / its last "
        "5,000 events). Regime changes = quarantine releases (new components seeded).",
        "",
        markdown_table(
            [
                "mode",
                "H",
                "pre-shift level",
                f"worst {WINDOW}-event mean after",
                "recovery (events)",
                "stays",
                "flagged after shift",
                "flagged, last 5,000",
                "regime changes",
                "components",
            ],
            rows,
        ),
        "",
        f"## Mean log-likelihood per {WINDOW} events around the shift",
        "",
        "Window start relative to the shift; columns: "
        + "; ".join(
            f"{i + 1} = {'forgetting only' if r.learn_from_outliers else 'default'} H={r.half_life}"
            for i, r in enumerate(runs)
        )
        + ".",
        "",
        markdown_table(["events"] + [str(i + 1) for i in range(len(runs))], series),
        "",
        f"Picture: `{display_path(picture)}`.",
    ]
    return finish(Report(NAME, TITLE, "\n".join(body), targets), out_dir)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_output_arguments(parser)
    parser.add_argument("--before", type=int, default=30_000)
    parser.add_argument("--after", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=0)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
