import numpy as np
import pytest
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


class LocalAnomalies:
    """A labelled stream made here (river's own checks download CreditCard)."""

    def __init__(self, n: int, d: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(n, d))
        y = np.zeros(n, dtype=bool)
        anomalies = rng.choice(np.arange(100, n), size=n // 100, replace=False)
        X[anomalies] += rng.choice([-8.0, 8.0], size=(len(anomalies), d))
        y[anomalies] = True
        self.data = [
            ({f"f{j}": float(v) for j, v in enumerate(row)}, bool(label))
            for row, label in zip(X, y, strict=True)
        ]

    def __iter__(self):
        return iter(self.data)


def test_river_estimator_checks_pass_on_a_local_dataset(monkeypatch):
    import river.checks

    # river picks its datasets in _yield_datasets (1000 * scale events of CreditCard for
    # an anomaly detector); the same sizes, made locally, keep the test off the network
    def local_datasets(model, scale=1):
        yield LocalAnomalies(1000 * scale)

    monkeypatch.setattr(river.checks, "_yield_datasets", local_datasets)
    ran = []
    for params in GMMDetector._unit_test_params():
        model = GMMDetector(**params)
        for check in river.checks.yield_checks(model):
            check(model.clone())
            ran.append(check.__name__)
    assert {"check_pickling", "check_roc_auc", "check_emerging_features"} <= set(ran)
    river.checks.check_estimator(GMMDetector(warmup=20))  # river's entry point, as users call it


def test_a_learnt_detector_pickles_and_scores_the_same():
    import pickle

    model = GMMDetector(warmup=50, random_state=0)
    for x in stream(np.random.default_rng(3), 500):
        model.learn_one(x)
    copy = pickle.loads(pickle.dumps(model))
    probes = [*stream(np.random.default_rng(4), 50), {"x0": 9.0, "x1": -9.0, "x2": 9.0}]
    assert [copy.score_one(x) for x in probes] == [model.score_one(x) for x in probes]
    for x in probes:
        copy.learn_one(x)
        model.learn_one(x)
    assert copy.score_one(probes[-1]) == model.score_one(probes[-1])


def test_an_event_with_nan_is_refused_and_learning_goes_on():
    rng = np.random.default_rng(0)
    model = GMMDetector(warmup=50, random_state=0)
    with pytest.raises(ValueError, match="NaN"):
        model.learn_one({"a": float("nan"), "b": 0.0})  # the first event fixes no fields
    for i, row in enumerate(rng.normal(size=(400, 2))):
        model.learn_one({"a": row[0], "b": row[1]})
        if i in (10, 200):
            with pytest.raises(ValueError, match="NaN"):
                model.learn_one({"a": 0.0, "b": float("inf")})
    assert model.detector.n_seen + len(model._pending) == 400 and model.detector.is_warmed_up


@pytest.mark.parametrize(
    ("event", "message"),
    [({}, "no features"), ({"a": 10**400, "b": 0.0}, "not a number"), ({"a": "x"}, "not a number")],
)
def test_a_refused_first_event_fixes_nothing(event, message):
    model = GMMDetector(warmup=20, random_state=0)
    with pytest.raises(ValueError, match=message):
        model.learn_one(event)
    for i in range(40):
        model.learn_one({"x": float(i % 7), "y": float(i % 5)})
    assert model._features == ["x", "y"] and model.detector.n_seen + len(model._pending) == 40
