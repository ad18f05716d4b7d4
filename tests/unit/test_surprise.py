"""Field surprise: which field of an odd event is the odd one, given the others.

``surprise_j = -log p(x_j | x_-j)`` and ``expected_j = E[x_j | x_-j]`` are
checked against a brute-force computation on the marginal mixtures, then on
streams with injected single-field faults: among the flagged faulty events,
the field of highest surprise must be the faulty one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from streamgmm import demo
from streamgmm.config import parse_config
from streamgmm.daemon import build_detector
from streamgmm.detector import Detector
from streamgmm.gmm import COVARIANCE_TYPES, OnlineGaussianMixture
from streamgmm.offline import score_file

# ---------------------------------------------------------------------------
# exactness against brute force


def full_covariances(model: OnlineGaussianMixture) -> np.ndarray:
    cov, d = model.covariances_, model.n_features_in_
    if model.covariance_type == "full":
        return cov
    if model.covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(d) for c in cov])


def brute_force(model: OnlineGaussianMixture, X: np.ndarray):
    """Surprise and expected value of every field by scipy on the marginal mixtures."""
    weights, means, covs = model.weights_, model.means_, full_covariances(model)
    n, d = X.shape
    K = len(weights)
    log_p = logsumexp(
        [
            np.log(weights[k]) + stats.multivariate_normal(means[k], covs[k]).logpdf(X)
            for k in range(K)
        ],
        axis=0,
    )
    surprise, expected = np.empty((n, d)), np.empty((n, d))
    for j in range(d):
        rest = [i for i in range(d) if i != j]
        log_joint = np.stack(
            [
                np.log(weights[k])
                + stats.multivariate_normal(means[k][rest], covs[k][np.ix_(rest, rest)])
                .logpdf(X[:, rest])
                .reshape(n)
                for k in range(K)
            ]
        )  # (K, n): log w_k N_k(x_-j)
        log_marginal = logsumexp(log_joint, axis=0)
        surprise[:, j] = log_marginal - log_p
        gamma = np.exp(log_joint - log_marginal)
        # Gaussian conditioning by covariances: mu_j + S_j,-j S_-j,-j^-1 (x_-j - mu_-j)
        cond = np.stack(
            [
                means[k][j]
                + (X[:, rest] - means[k][rest])
                @ np.linalg.solve(covs[k][np.ix_(rest, rest)], covs[k][rest, j])
                for k in range(K)
            ]
        )
        expected[:, j] = (gamma * cond).sum(axis=0)
    return surprise, expected


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surprise_and_expected_equal_brute_force_on_the_marginal_mixtures(covariance_type, seed):
    rng = np.random.default_rng(seed)
    d, K = int(rng.integers(2, 6)), int(rng.integers(1, 4))
    centres = rng.normal(0.0, 5.0, (K, d))
    mixing = rng.normal(size=(K, d, d))
    labels = rng.integers(K, size=1500)
    data = centres[labels] + np.einsum("nij,nj->ni", mixing[labels], rng.normal(size=(1500, d)))
    data += 100.0  # far from zero: the centring must hold
    model = OnlineGaussianMixture(K, covariance_type=covariance_type, random_state=seed).fit(data)
    X = np.concatenate([data[:20], data[20:30] + rng.normal(0.0, 8.0, (10, d))])
    surprise, expected = model.field_surprise(X)
    want_surprise, want_expected = brute_force(model, X)
    np.testing.assert_allclose(surprise, want_surprise, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(expected, want_expected, rtol=1e-7, atol=1e-7)
    explanation = model.explain(X)
    np.testing.assert_array_equal(explanation["surprise"], surprise)
    np.testing.assert_array_equal(explanation["expected"], expected)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_surprise_stays_finite_far_out(covariance_type):
    rng = np.random.default_rng(3)
    model = OnlineGaussianMixture(3, covariance_type=covariance_type, random_state=0)
    model.fit(rng.normal(size=(600, 4)) + rng.integers(3, size=(600, 1)) * 10.0)
    X = np.array(
        [
            [0.0, 0.0, 0.0, 1e6],
            [1e9, -1e9, 1e9, 0.0],
            [-1e30, 0.0, 5.0, 1e30],
            [10.0, 10.0, 10.0, 10.0],
        ]
    )
    surprise, expected = model.field_surprise(X)
    assert np.isfinite(surprise).all() and np.isfinite(expected).all()
    assert np.argmax(surprise[0]) == 3 and surprise[0, 3] > 1e10
    empty = model.field_surprise(np.empty((0, 4)))
    assert empty[0].shape == empty[1].shape == (0, 4)


# ---------------------------------------------------------------------------
# held-out accuracy: the field of highest surprise is the faulty one

# mean and spread of cpu %, mem %, latency ms and network Mbit/s of four kinds of host
HOST_KINDS = {
    "web": ((25.0, 70.0, 40.0, 300.0), (5.0, 5.0, 6.0, 40.0)),
    "batch": ((90.0, 45.0, 5.0, 20.0), (4.0, 6.0, 1.5, 8.0)),
    "db": ((50.0, 90.0, 8.0, 120.0), (6.0, 3.0, 2.0, 20.0)),
    "cache": ((10.0, 30.0, 1.0, 600.0), (3.0, 5.0, 0.3, 60.0)),
}


def host_metrics(rng, n: int, fault_rate: float):
    """Host metrics; a fault sets one field to a value normal for another kind of host.

    Returns the events (n, 4) and the faulty field of each (-1: none).
    """
    means = np.array([m for m, _ in HOST_KINDS.values()])
    spreads = np.array([s for _, s in HOST_KINDS.values()])
    kind = rng.integers(len(means), size=n)
    X = rng.normal(means[kind], spreads[kind])
    field = np.where(rng.random(n) < fault_rate, rng.integers(X.shape[1], size=n), -1)
    rows = np.flatnonzero(field >= 0)
    other = (kind[rows] + rng.integers(1, len(means), size=len(rows))) % len(means)
    cols = field[rows]
    X[rows, cols] = rng.normal(means[other, cols], spreads[other, cols])
    return X, field


def correlated_mixture(rng, n: int, fault_rate: float):
    """A random mixture of correlated Gaussians (d in 3..10, K in 2..4) with one-field faults.

    A fault moves one field by 4 to 8 of its standard deviations in its component.
    """
    d, K = int(rng.integers(3, 11)), int(rng.integers(2, 5))
    means = rng.normal(0.0, 4.0, (K, d))
    mixing = rng.normal(size=(K, d, d)) / np.sqrt(d)
    covs = mixing @ mixing.transpose(0, 2, 1) + 0.05 * np.eye(d)
    label = rng.integers(K, size=n)
    X = means[label] + np.einsum(
        "nij,nj->ni", np.linalg.cholesky(covs)[label], rng.normal(size=(n, d))
    )
    field = np.where(rng.random(n) < fault_rate, rng.integers(d, size=n), -1)
    rows = np.flatnonzero(field >= 0)
    cols = field[rows]
    size = rng.choice([-1.0, 1.0], size=len(rows)) * rng.uniform(4.0, 8.0, size=len(rows))
    X[rows, cols] += size * np.sqrt(covs[label[rows], cols, cols])
    return X, field


def named_fields(detector: Detector, X: np.ndarray, field: np.ndarray, warmup: int):
    """Stream X in batches; for every flagged faulty event after the warm-up, the field named
    by surprise and by the largest residual, and the faulty field: arrays (3, n_flagged)."""
    found = []
    for start in range(0, len(X), 2000):
        result = detector.process(X[start : start + 2000])
        rows = np.flatnonzero(result.is_outlier & (field[start : start + 2000] >= 0))
        rows = rows[rows + start >= warmup]
        found.append(
            np.stack(
                [
                    result.surprise[rows].argmax(axis=1),
                    np.abs(result.contributions[rows]).argmax(axis=1),
                    field[start + rows],
                ]
            )
        )
    return np.concatenate(found, axis=1)


def accuracy(found: np.ndarray) -> tuple[float, float]:
    return float((found[0] == found[2]).mean()), float((found[1] == found[2]).mean())


def test_surprise_names_the_faulty_field_of_host_metrics():
    found = []
    for seed in range(4):
        X, field = host_metrics(np.random.default_rng(seed), 20_000, fault_rate=0.01)
        field[:1000] = -1  # no faults in the warm-up
        found.append(named_fields(Detector(warmup=1000, random_state=0), X, field, 1000))
    found = np.concatenate(found, axis=1)
    by_surprise, by_residual = accuracy(found)
    print(f"host metrics: {found.shape[1]} flagged faults, faulty field named by surprise "
          f"{by_surprise:.3f}, by the largest residual {by_residual:.3f}")  # fmt: skip
    assert found.shape[1] > 300
    assert by_surprise >= 0.97
    assert by_surprise > by_residual + 0.2  # the residual names the kind it resembles


def test_surprise_names_the_faulty_field_of_correlated_mixtures():
    found = []
    for seed in range(6):
        X, field = correlated_mixture(np.random.default_rng(seed), 20_000, fault_rate=0.01)
        field[:1000] = -1
        detector = Detector(covariance_type="full", warmup=1000, random_state=0)
        found.append(named_fields(detector, X, field, 1000))
    found = np.concatenate(found, axis=1)
    by_surprise, by_residual = accuracy(found)
    print(f"correlated mixtures: {found.shape[1]} flagged faults, faulty field named by "
          f"surprise {by_surprise:.3f}, by the largest residual {by_residual:.3f}")  # fmt: skip
    assert found.shape[1] > 500
    assert by_surprise >= 0.97
    assert by_surprise >= by_residual


def test_the_demo_summary_names_the_injected_field():
    config = demo.demo_config("localhost:9092", "unused.npz", 0)
    fields = list(config.features.fields)
    rng = np.random.default_rng(0)
    detector = build_detector(config)
    events = [
        demo.synthetic_event(
            rng, int(rng.integers(len(demo.ANOMALIES))) if i > 1500 and i % 50 == 0 else None
        )
        for i in range(1, 30_001)
    ]
    X = np.array([[event[f] for f in fields] for event in events])
    named = flagged = 0
    for start in range(0, len(X), 2000):
        result = detector.process(X[start : start + 2000])
        for row in np.flatnonzero(result.is_outlier):
            event = events[start + row]
            if not event.get("injected"):
                continue
            line = demo.odd_field(
                fields, X[start + row], result.surprise[row], result.expected[row]
            )
            flagged += 1
            named += line.split(" ")[0] in event["injected"]
    print(f"demo: {named}/{flagged} flagged injected anomalies named by their faulty field")
    assert flagged > 400
    assert named >= 0.9 * flagged


def test_outlier_records_carry_surprise_and_expected_for_every_field(tmp_path: Path):
    rng = np.random.default_rng(5)
    fields = ["cpu", "mem", "latency_ms"]
    X = host_metrics(rng, 3000, fault_rate=0.0)[0][:, :3]
    X[2500:2510, 2] = 400.0  # hosts of every kind answering at 400 ms
    lines = [
        json.dumps({"host": f"h{i}", **dict(zip(fields, row.tolist(), strict=True))})
        for i, row in enumerate(X)
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    config = parse_config(
        {
            "source": {"kind": "file", "file": {"path": "-"}},
            "features": {"fields": fields, "key": "host"},
            "model": {"warmup": 1000, "random_state": 0},
            "sink": {"kind": "file", "file": {"path": "-"}},
        }
    )
    outliers = tmp_path / "outliers.jsonl"
    code = score_file(config, str(tmp_path / "events.jsonl"), os.devnull, str(outliers))
    assert code == 0
    records = [json.loads(line) for line in outliers.read_text().splitlines()]
    faults = [r for r in records if r["event"]["latency_ms"] == 400.0]
    assert len(faults) >= 8
    for record in records:
        assert set(record["surprise"]) == set(record["expected"]) == set(fields)
        assert all(isinstance(v, float) for v in record["surprise"].values())
    for record in faults:
        assert max(record["surprise"], key=record["surprise"].get) == "latency_ms"
        assert record["expected"]["latency_ms"] < 300.0


# ---------------------------------------------------------------------------
# the benchmark and the figure script cannot rot

ROOT = Path(__file__).resolve().parents[2]


def _load(directory: str, name: str):
    import importlib
    import sys

    if str(ROOT / directory) not in sys.path:
        sys.path.insert(0, str(ROOT / directory))
    return importlib.import_module(name)


def test_the_speed_benchmark_times_the_old_explanation_against_the_new():
    explain_speed = _load("benchmarks", "explain_speed")
    model, stream = explain_speed.fitted_model("diag", d=4, K=2)
    old = explain_speed.residual_explain(model, stream[:100])
    new = model.explain(stream[:100])
    for key in ("component", "mahalanobis", "contributions"):
        np.testing.assert_array_equal(old[key], new[key])
    times = explain_speed.time_explain("full", d=4, K=2, batch=500, rounds=1)
    assert all(t > 0 for t in times.values())


def test_the_figure_shows_surprise_naming_latency_where_residuals_do_not(tmp_path: Path):
    figure = _load("scripts", "surprise_figure")
    fields, event, result = figure.faulty_event_explained(seed=0)
    assert event["latency_ms"] == 400.0 and result.is_outlier[0]
    assert fields[int(np.argmax(result.surprise[0]))] == "latency_ms"
    assert fields[int(np.argmax(np.abs(result.contributions[0])))] != "latency_ms"
    figure.plot(tmp_path / "surprise.png")
    assert (tmp_path / "surprise.png").stat().st_size > 10_000
