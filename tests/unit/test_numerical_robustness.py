"""Whatever finite data arrives, no parameter and no score is ever NaN or infinite."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from streamgmm.detector import Detector
from streamgmm.gmm import COVARIANCE_TYPES, OnlineGaussianMixture

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
values = st.one_of(finite, st.sampled_from([0.0, 1.0, -1.0, 1e12, -1e12, 1e-300, 5e-324]))


@st.composite
def streams(draw):
    """Batches with duplicates, constant columns, huge magnitudes, d > n."""
    d = draw(st.integers(1, 6))
    n_batches = draw(st.integers(1, 5))
    batches = []
    for _ in range(n_batches):
        n = draw(st.integers(1, 12))
        kind = draw(st.sampled_from(["free", "repeated", "constant_column", "few_values"]))
        if kind == "repeated":
            row = draw(arrays(np.float64, d, elements=values))
            batch = np.tile(row, (n, 1))
        elif kind == "few_values":
            pool = draw(st.lists(values, min_size=1, max_size=3))
            batch = np.array(draw(st.lists(st.sampled_from(pool), min_size=n * d, max_size=n * d)))
            batch = batch.reshape(n, d)
        else:
            batch = draw(arrays(np.float64, (n, d), elements=values))
            if kind == "constant_column":
                batch[:, 0] = batch[0, 0]
        batches.append(batch)
    return batches


def assert_finite_model(model):
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.isfinite(getattr(model, name)).all(), name


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    batches=streams(),
    covariance_type=st.sampled_from(COVARIANCE_TYPES),
    n_components=st.sampled_from([1, 3, "auto"]),
)
def test_online_model_stays_finite(batches, covariance_type, n_components):
    model = OnlineGaussianMixture(
        n_components, covariance_type=covariance_type, warmup=5, random_state=0
    )
    for batch in batches:
        scores = model.score_then_learn(batch)
        assert np.isfinite(scores).all()
    if model.is_fitted:
        assert_finite_model(model)
        probe = np.concatenate(batches)
        assert np.isfinite(model.score_samples(probe)).all()
        assert np.isfinite(model.predict_proba(probe)).all()
        explanation = model.explain(probe)
        assert np.isfinite(explanation["mahalanobis"]).all()


@SETTINGS
@given(batches=streams(), covariance_type=st.sampled_from(COVARIANCE_TYPES))
def test_batch_fit_stays_finite(batches, covariance_type):
    data = np.concatenate(batches)
    model = OnlineGaussianMixture("auto", covariance_type=covariance_type, random_state=0)
    model.fit(data)
    assert_finite_model(model)
    assert np.isfinite(model.score_samples(data)).all()


@SETTINGS
@given(batches=streams())
def test_detector_stays_finite(batches):
    detector = Detector(warmup=4, random_state=0)
    for batch in batches:
        result = detector.process(batch)
        assert np.isfinite(result.score).all()
        assert np.isfinite(result.contributions).all()
        assert np.isfinite(result.mahalanobis).all()
    if detector.is_warmed_up:
        assert_finite_model(detector.model)


def test_single_repeated_point_forever():
    model = OnlineGaussianMixture(3, covariance_type="full", warmup=10, random_state=0)
    point = np.array([[3.0, -1e12, 7.0]])
    for _ in range(50):
        assert np.isfinite(model.score_then_learn(np.repeat(point, 20, axis=0))).all()
    assert_finite_model(model)
    assert model.score_samples(point)[0] > model.score_samples(point + 1.0)[0]
