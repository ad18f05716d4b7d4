"""Speed of ``OnlineGaussianMixture.explain`` with field surprise, against the residuals alone.

Before field surprise, ``explain(X)`` was the E-step plus the residuals to the
most responsible component (``contributions``); it now also computes every
field's surprise and expected value (``field_surprise``, O(K d^2) per event).
The old explanation is reproduced verbatim below (:func:`residual_explain`),
so both run in the same process on the same fitted model and the same
2,000-event batches (d=8, K=6, full and diag), interleaved in alternating
order; medians are compared. Two paths are timed:

- ``explain(X)``: the explanation on its own, E-step included (the API call);
- ``explain(X, evaluation)``: the E-step reused, as the Detector calls it,
  next to the cost of that E-step (``evaluate``) for scale.

Both run with BLAS's default threading and with BLAS limited to one thread: on a
busy machine, two BLAS threads fighting for the cores make small GEMMs erratic.

Run: ``python benchmarks/explain_speed.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_common import BLAS_MODES, blas_threads

from streamgmm.gmm import Evaluation, OnlineGaussianMixture


def residual_explain(model: OnlineGaussianMixture, X, evaluation: Evaluation | None = None):
    """The explanation as it was before field surprise (streamgmm 0.1.0)."""
    X = model._validate(X, reset=False)
    evaluation = evaluation if evaluation is not None else model.evaluate(X)
    best = evaluation.responsibilities.argmax(axis=1)
    rows = np.arange(X.shape[0])
    variances = model._ops.variances(model.covariances_, model.n_features_in_)
    contributions = (X - model._means[best]) / np.sqrt(variances[best])
    return {
        "component": best,
        "mahalanobis": np.sqrt(evaluation.mahalanobis_sq[rows, best]),
        "contributions": contributions,
    }


def fitted_model(covariance_type: str, d: int, K: int, seed: int = 0):
    """A model fitted on a random correlated mixture, and a stream of events from it."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 4.0, (K, d))
    factors = rng.normal(size=(K, d, d)) / np.sqrt(d)
    labels = rng.integers(K, size=40_000)
    X = means[labels] + np.einsum("nij,nj->ni", factors[labels], rng.normal(size=(40_000, d)))
    model = OnlineGaussianMixture(K, covariance_type=covariance_type, random_state=seed)
    return model.fit(X[:5000]), X[5000:]


def time_explain(covariance_type: str, d: int = 8, K: int = 6, batch: int = 2000, rounds: int = 15):
    """Median seconds per batch of each path: a dict name -> seconds."""
    model, stream = fitted_model(covariance_type, d, K)
    batches = [stream[i : i + batch] for i in range(0, len(stream) - batch + 1, batch)]
    contenders = {
        "residuals explain(X)": lambda X, ev: residual_explain(model, X),
        "surprise explain(X)": lambda X, ev: model.explain(X),
        "residuals explain(X, evaluation)": lambda X, ev: residual_explain(model, X, ev),
        "surprise explain(X, evaluation)": lambda X, ev: model.explain(X, ev),
        "evaluate(X)": lambda X, ev: model.evaluate(X),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for i, X in enumerate(batches):
            evaluation = model.evaluate(X)
            order = names if (r + i) % 2 == 0 else names[::-1]
            for name in order:
                started = time.perf_counter()
                contenders[name](X, evaluation)
                times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 15
    print("| BLAS | covariance | path | residuals ms | surprise ms | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for mode, limit in BLAS_MODES:
        for covariance_type in ("full", "diag"):
            with blas_threads(limit):
                t = time_explain(covariance_type, rounds=rounds)
            for path in ("explain(X)", "explain(X, evaluation)"):
                old, new = t[f"residuals {path}"], t[f"surprise {path}"]
                print(
                    f"| {mode} | {covariance_type} | `{path}` | {1e3 * old:.2f} "
                    f"| {1e3 * new:.2f} | {new / old:.2f}x |"
                )
            evaluate = 1e3 * t["evaluate(X)"]
            print(
                f"| {mode} | {covariance_type} | `evaluate(X)` (for scale) | {evaluate:.2f} | | |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
