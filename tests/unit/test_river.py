import numpy as np
from river import anomaly, compose, preprocessing

from streamgmm.river import GMMDetector


def stream(rng, n, d=3):
    for row in rng.normal(size=(n, d)):
        yield {f"x{j}": float(v) for j, v in enumerate(row)}


def test_far_points_score_higher_in_a_pipeline():
    rng = np.random.default_rng(0)
    model = compose.Pipeline(preprocessing.StandardScaler(), GMMDetector(warmup=100))
    for x in stream(rng, 2000):
        model.learn_one(x)
    near = model.score_one({"x0": 0.0, "x1": 0.1, "x2": -0.1})
    far = model.score_one({"x0": 9.0, "x1": -9.0, "x2": 9.0})
    assert far > near + 10


def test_quantile_filter_flags_the_far_point():
    rng = np.random.default_rng(1)
    model = anomaly.QuantileFilter(GMMDetector(warmup=100), q=0.995)
    for x in stream(rng, 2000):
        model.learn_one(x)
    assert model.classify(model.score_one({"x0": 10.0, "x1": 10.0, "x2": 10.0}))
    assert not model.classify(model.score_one({"x0": 0.0, "x1": 0.0, "x2": 0.0}))


def test_clone_keeps_the_parameters_and_forgets_the_data():
    model = GMMDetector(warmup=50, half_life=1000)
    for x in stream(np.random.default_rng(2), 200):
        model.learn_one(x)
    fresh = model.clone()
    assert fresh.detector_params == {"warmup": 50, "half_life": 1000}
    assert fresh.detector.n_seen == 0
    assert model.detector.n_seen + len(model._pending) == 200


def test_first_score_before_anything_is_learnt_is_zero():
    assert GMMDetector().score_one({"a": 1.0}) == 0.0


def test_missing_feature_counts_as_zero():
    model = GMMDetector(warmup=20, micro_batch=1)
    for x in stream(np.random.default_rng(3), 100):
        model.learn_one(x)
    assert np.isfinite(model.score_one({"x0": 0.0}))
