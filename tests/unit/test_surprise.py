"""Field surprise: which field of an odd event is the odd one, given the others.

``surprise_j = -log p(x_j | x_-j)`` and ``expected_j = E[x_j | x_-j]`` are
checked against a brute-force computation on the marginal mixtures, then on
streams with injected single-field faults: among the flagged faulty events,
the field of highest surprise must be the faulty one.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from streamgmm.gmm import COVARIANCE_TYPES, OnlineGaussianMixture

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
