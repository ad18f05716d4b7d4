"""Online (one pass of stepwise EM) vs batch EM: held-out log-likelihood, and concentric rings.

1. Stationary mixtures of rotated ellipses, d in {2, 8}, K in {3, 8}, every
   covariance type, several seeds, two layouts of the means (``wide``: mostly
   separated clusters; ``tight``: overlapping clusters, where EM has several
   basins). ``OnlineGaussianMixture`` sees the training events once, in
   mini-batches of ``--batch-size`` through ``partial_fit``; scikit-learn's
   ``GaussianMixture(n_init=3)`` is fitted on the same events, with the same K
   and covariance type. Both are scored on the same held-out events.

   Two more numbers say *why* they differ: the oracle (the true density's
   held-out log-likelihood) and "polished": batch EM started from the online
   model's parameters. If polishing gains nothing, the online model sits at the
   optimum of its own basin and any gap to scikit-learn is a different basin
   (initialisation luck, on either side), not an estimation error.

2. The case k-means gets wrong: two round clusters with the same centre, radii
   0.3 and 3. The mixture is learnt online; the recovered radii
   (``sqrt(trace(Sigma_k) / 2)``) are compared with the truth, and a picture
   shows the 1- and 2-sigma ellipses next to k-means' partition.

Run: ``python benchmarks/online_vs_batch.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_common import (
    Report,
    Target,
    add_output_arguments,
    display_path,
    finish,
    fmt,
    markdown_table,
    output_dirs,
    rotated_ellipses,
)

from streamgmm.gmm import OnlineGaussianMixture

NAME = "online_vs_batch"
TITLE = "Online (one pass) vs batch EM"
TOLERANCE = 0.02  # nats, DESIGN.md section 5
RADIUS_TOLERANCE = 0.10


# ---------------------------------------------------------------------------
# held-out log-likelihood


@dataclass
class Comparison:
    """Held-out mean log-likelihoods (nats per event) of one configuration and seed."""

    spread: str
    d: int
    K: int
    covariance_type: str
    seed: int
    online: float
    batch: float
    polished: float
    oracle: float
    online_seconds: float
    batch_seconds: float

    @property
    def difference(self) -> float:
        """online - batch: negative when the online model is worse."""
        return self.online - self.batch


def _precisions(model: OnlineGaussianMixture) -> np.ndarray:
    cov = model.covariances_
    if model.covariance_type == "full":
        return np.linalg.inv(cov)
    return 1.0 / cov


def compare(
    d: int,
    K: int,
    covariance_type: str,
    seed: int,
    spread: str = "wide",
    n_train: int = 50_000,
    n_test: int = 20_000,
    batch_size: int = 2_000,
    n_init: int = 3,
) -> Comparison:
    """One pass of ``partial_fit`` vs ``GaussianMixture(n_init)``, same data, same K and type."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(seed)
    truth = rotated_ellipses(d, K, rng, mean_spread=spread)
    X_train, _ = truth.sample(n_train, rng)
    X_test, _ = truth.sample(n_test, rng)

    start = time.perf_counter()
    online = OnlineGaussianMixture(  # scikit-learn's reg_covar: the same model as batch EM
        n_components=K, covariance_type=covariance_type, reg_covar=1e-6, random_state=seed
    )
    for begin in range(0, n_train, batch_size):
        online.partial_fit(X_train[begin : begin + batch_size])
    online_seconds = time.perf_counter() - start

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        batch = GaussianMixture(
            n_components=K, covariance_type=covariance_type, n_init=n_init, random_state=seed
        ).fit(X_train)
        batch_seconds = time.perf_counter() - start
        polished = GaussianMixture(
            n_components=K,
            covariance_type=covariance_type,
            weights_init=online.weights_ / online.weights_.sum(),
            means_init=online.means_,
            precisions_init=_precisions(online),
            max_iter=500,
        ).fit(X_train)

    return Comparison(
        spread=spread,
        d=d,
        K=K,
        covariance_type=covariance_type,
        seed=seed,
        online=online.score(X_test),
        batch=float(batch.score(X_test)),
        polished=float(polished.score(X_test)),
        oracle=float(truth.log_likelihood(X_test).mean()),
        online_seconds=online_seconds,
        batch_seconds=batch_seconds,
    )


def summary_rows(results: list[Comparison]) -> list[list[str]]:
    rows = []
    keys = sorted(
        {(r.spread, r.d, r.K, r.covariance_type) for r in results},
        key=lambda k: (k[0] != "wide", k[1], k[2], ("full", "diag", "spherical").index(k[3])),
    )
    for key in keys:
        group = [r for r in results if (r.spread, r.d, r.K, r.covariance_type) == key]
        diffs = np.array([r.difference for r in group])
        gains = np.array([r.polished - r.online for r in group])
        rows.append(
            [
                *map(str, key),
                f"{int((diffs >= -TOLERANCE).sum())}/{len(group)}",
                f"{np.median(diffs):+.4f}",
                f"{diffs.min():+.4f}",
                f"{diffs.max():+.4f}",
                f"{np.median(gains):+.4f}",
                fmt(float(np.median([r.online_seconds for r in group])), 2),
                fmt(float(np.median([r.batch_seconds for r in group])), 2),
            ]
        )
    return rows


def detail_rows(results: list[Comparison]) -> list[list[str]]:
    return [
        [
            r.spread,
            str(r.d),
            str(r.K),
            r.covariance_type,
            str(r.seed),
            fmt(r.online, 4),
            fmt(r.batch, 4),
            f"{r.difference:+.4f}",
            f"{r.polished - r.online:+.4f}",
            fmt(r.oracle, 4),
        ]
        for r in results
    ]


# ---------------------------------------------------------------------------
# concentric rings


@dataclass
class Concentric:
    seed: int
    radii: np.ndarray  # recovered, ascending
    weights: np.ndarray  # matching the radii
    ari_gmm: float
    ari_kmeans: float
    X: np.ndarray
    labels: np.ndarray
    model: OnlineGaussianMixture
    kmeans_labels: np.ndarray

    def errors(self, true_radii=(0.3, 3.0)) -> np.ndarray:
        return np.abs(self.radii / np.asarray(true_radii) - 1.0)


def concentric(
    seed: int,
    n_per_ring: int = 10_000,
    radii=(0.3, 3.0),
    batch_size: int = 500,
) -> Concentric:
    """Two round clusters, same mean, radii 0.3 and 3, streamed once through ``partial_fit``."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0.0, r, (n_per_ring, 2)) for r in radii])
    labels = np.repeat(np.arange(len(radii)), n_per_ring)
    order = rng.permutation(len(X))
    X, labels = X[order], labels[order]

    model = OnlineGaussianMixture(
        n_components=2, covariance_type="full", reg_covar=1e-6, random_state=seed
    )
    for begin in range(0, len(X), batch_size):
        model.partial_fit(X[begin : begin + batch_size])
    recovered = np.sqrt(np.trace(model.covariances_, axis1=1, axis2=2) / 2.0)
    order = np.argsort(recovered)
    kmeans_labels = KMeans(n_clusters=2, n_init=3, random_state=seed).fit_predict(X)
    return Concentric(
        seed=seed,
        radii=recovered[order],
        weights=model.weights_[order],
        ari_gmm=float(adjusted_rand_score(labels, model.predict(X))),
        ari_kmeans=float(adjusted_rand_score(labels, kmeans_labels)),
        X=X,
        labels=labels,
        model=model,
        kmeans_labels=kmeans_labels,
    )


def plot_concentric(case: Concentric, path: Path, n_points: int = 2_500) -> None:
    """Data with the fitted 1- and 2-sigma ellipses, next to k-means' partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    shown = rng.choice(len(case.X), size=min(n_points, len(case.X)), replace=False)
    X = case.X[shown]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 4.0), dpi=80, sharex=True, sharey=True)
    colours = np.array(["tab:orange", "tab:blue"])
    gmm_labels = case.model.predict(X)
    left.scatter(X[:, 0], X[:, 1], s=2, c=colours[gmm_labels], alpha=0.5, linewidths=0)
    angles = np.linspace(0.0, 2.0 * np.pi, 200)
    circle = np.stack([np.cos(angles), np.sin(angles)])
    for k in range(case.model.n_components_):
        chol = np.linalg.cholesky(case.model.covariances_[k])
        for n_sigma, style in ((1, "-"), (2, "--")):
            ellipse = case.model.means_[k][:, None] + n_sigma * chol @ circle
            left.plot(ellipse[0], ellipse[1], style, color="black", linewidth=1)
    left.set_title("OnlineGaussianMixture, K=2: 1- and 2-sigma", fontsize=9)
    kmeans_colours = colours[case.kmeans_labels[shown]]
    right.scatter(X[:, 0], X[:, 1], s=2, c=kmeans_colours, alpha=0.5, linewidths=0)
    right.set_title("k-means, K=2: splits the plane, not the rings", fontsize=9)
    for ax in (left, right):
        ax.set_aspect("equal")
        ax.set_xlim(-9, 9)
        ax.set_ylim(-9, 9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------
# the benchmark


def run(args: argparse.Namespace) -> Report:
    out_dir, img_dir = output_dirs(args)
    if args.quick:
        dims, ks, seeds, n_train, n_test, spreads = (2, 8), (3,), (0,), 10_000, 5_000, ("wide",)
    else:
        dims, ks, seeds = (2, 8), (3, 8), tuple(range(args.seeds))
        n_train, n_test, spreads = args.n_train, args.n_test, ("wide", "tight")

    results = []
    for spread in spreads:
        for d in dims:
            for K in ks:
                for covariance_type in ("full", "diag", "spherical"):
                    for seed in seeds:
                        result = compare(
                            d, K, covariance_type, seed, spread, n_train, n_test, args.batch_size
                        )
                        results.append(result)
                        print(
                            f"  {spread} d={d} K={K} {covariance_type} seed={seed}: "
                            f"online {result.online:.4f} batch {result.batch:.4f} "
                            f"diff {result.difference:+.4f}",
                            flush=True,
                        )

    diffs = np.array([r.difference for r in results])
    within = int((diffs >= -TOLERANCE).sum())
    wide = np.array([r.difference for r in results if r.spread == "wide"])
    wide_within = int((wide >= -TOLERANCE).sum())
    gains = np.array([r.polished - r.online for r in results])

    rings = [concentric(seed) for seed in (range(1) if args.quick else range(3))]
    picture = img_dir / "concentric.png"
    plot_concentric(rings[0], picture)
    ring_errors = np.array([case.errors() for case in rings])

    targets = [
        Target(
            f"held-out log-likelihood within {TOLERANCE} nats of GaussianMixture(n_init=3), "
            "well-separated mixtures",
            bool(wide_within == len(wide)),
            f"{wide_within}/{len(wide)} runs; median difference {np.median(wide):+.4f}, "
            f"worst {wide.min():+.4f} nats",
        ),
        Target(
            "same, all runs (overlapping mixtures included)",
            bool(within == len(diffs)),
            f"{within}/{len(diffs)} runs; median difference {np.median(diffs):+.4f}, "
            f"worst {diffs.min():+.4f}, best {diffs.max():+.4f} nats",
        ),
        Target(
            "concentric rings (radii 0.3 and 3): both radii within 10%",
            bool((ring_errors <= RADIUS_TOLERANCE).all()),
            f"largest relative error {ring_errors.max():.1%} over {len(rings)} seeds",
        ),
    ]

    body = [
        f"Training: {n_train:,} events streamed once in mini-batches of {args.batch_size:,} "
        f"(`partial_fit`; the first 500 are the warm-up batch fit); held-out: {n_test:,} "
        f"events. Seeds: {', '.join(map(str, seeds))}. Difference = online - batch, in nats "
        "per event (negative: online worse). Batch: `sklearn.mixture.GaussianMixture(n_init=3)`, "
        "default tol and max_iter. Polish gain = held-out gain of batch EM started from the "
        "online parameters (near 0: the online model is at the optimum of its basin). "
        "`wide`: means uniform in [-6, 6]^d; `tight`: expected pairwise mean distance 4, "
        "clusters overlap. Components are ellipses with axis SDs in [0.2, 1.5], randomly "
        "rotated, so diag and spherical models are misspecified (for both sides).",
        "",
        "## Held-out log-likelihood, per configuration",
        "",
        markdown_table(
            [
                "means",
                "d",
                "K",
                "covariance",
                f"within {TOLERANCE}",
                "median diff",
                "worst diff",
                "best diff",
                "median polish gain",
                "online fit s",
                "batch fit s",
            ],
            summary_rows(results),
        ),
        "",
        f"All runs: {within}/{len(diffs)} within {TOLERANCE} nats (or better); "
        f"median |difference| {np.median(np.abs(diffs)):.4f}; median polish gain "
        f"{np.median(gains):+.4f}, largest {gains.max():+.4f} nats.",
        "",
        "## Concentric rings (k-means' failure case)",
        "",
        "Two round clusters, same centre, radii 0.3 and 3, 10,000 events each, shuffled, "
        "streamed once in batches of 500 into `OnlineGaussianMixture(n_components=2)`. "
        "Radius = sqrt(trace(Sigma_k) / 2). ARI: adjusted Rand index of the partition "
        "against the true rings (1 = perfect); k-means is scikit-learn's `KMeans(2)`.",
        "",
        markdown_table(
            ["seed", "radius 0.3 ->", "radius 3 ->", "errors", "weights", "ARI GMM", "ARI k-means"],
            [
                [
                    str(case.seed),
                    fmt(case.radii[0], 4),
                    fmt(case.radii[1], 4),
                    " / ".join(f"{e:.1%}" for e in case.errors()),
                    " / ".join(f"{w:.3f}" for w in case.weights),
                    fmt(case.ari_gmm, 3),
                    fmt(case.ari_kmeans, 3),
                ]
                for case in rings
            ],
        ),
        "",
        f"Picture: `{display_path(picture)}` (seed {rings[0].seed}).",
        "",
        "## Every run",
        "",
        markdown_table(
            [
                "means",
                "d",
                "K",
                "covariance",
                "seed",
                "online",
                "batch",
                "diff",
                "polish gain",
                "oracle",
            ],
            detail_rows(results),
        ),
    ]
    report = Report(NAME, TITLE, "\n".join(body), targets)
    return finish(report, out_dir)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_output_arguments(parser)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per configuration")
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=2_000)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
