"""The detector's answers depend on the sequence of events, never on how it is cut."""

import numpy as np
import pytest

from streamgmm.detector import Detector
from streamgmm.river import GMMDetector


def stream(seed: int = 0, n: int = 3000, d: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (3, d))
    X = centres[rng.integers(0, 3, n)] + rng.normal(size=(n, d))
    anomalies = rng.choice(n, n // 50, replace=False)
    size = (len(anomalies), d)
    X[anomalies] += rng.choice([-1, 1], size) * rng.uniform(8, 20, size)
    X[:400:37] += 30.0  # far-out events inside the warm-up, after and before its first 50
    return X


def run(X: np.ndarray, cuts, **params):
    detector = Detector(warmup=300, random_state=0, **params)
    edges = np.cumsum(cuts)
    results = [detector.process(part) for part in np.split(X, edges[edges < len(X)])]
    return detector, results


def joined(results, name):
    return np.concatenate([getattr(r, name) for r in results])


def river_scores(X: np.ndarray) -> list[float]:
    """Each event's score_one, then learn_one, through the river path."""
    model = GMMDetector(warmup=300, random_state=0)
    scores = []
    for row in X:
        x = {f"x{j}": v for j, v in enumerate(row)}
        scores.append(model.score_one(x))
        model.learn_one(x)
    return scores


def random_cuts(seed: int, n: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return list(rng.integers(1, 700, n // 2))


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_scores_flags_and_model_do_not_depend_on_the_cut(covariance_type):
    X = stream()
    reference, whole = run(X, [len(X)], covariance_type=covariance_type)
    for cuts in ([1] * len(X), [7] * 500, [64] * 50, [500] * 6, random_cuts(1, len(X))):
        detector, parts = run(X, cuts, covariance_type=covariance_type)
        np.testing.assert_allclose(joined(parts, "score"), whole[0].score, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(joined(parts, "is_outlier"), whole[0].is_outlier)
        np.testing.assert_array_equal(joined(parts, "is_warmup"), whole[0].is_warmup)
        np.testing.assert_allclose(joined(parts, "threshold"), whole[0].threshold, rtol=1e-9)
        for name in ("surprise", "expected"):
            np.testing.assert_allclose(joined(parts, name), getattr(whole[0], name), rtol=1e-9)
        np.testing.assert_allclose(detector.model.means_, reference.model.means_, rtol=1e-9)
        assert detector.n_seen == reference.n_seen and detector.n_pending == reference.n_pending


def test_the_warmup_ends_at_warmup_events_whatever_the_cut():
    X = stream()
    for cuts in ([1] * 400, [299, 2], [301]):
        detector, parts = run(X[:301], cuts)
        flags = joined(parts, "is_warmup")
        assert flags[:300].all() and not flags[300:].any() and detector.is_warmed_up


def test_anomalies_in_a_large_first_batch_are_flagged_as_one_by_one():
    X = stream()
    _, whole = run(X, [len(X)])
    _, single = run(X, [1] * len(X))
    late_in_warmup = np.arange(50, 300)[(np.arange(50, 300) % 37) == 0]
    assert whole[0].is_outlier[late_in_warmup].all()
    np.testing.assert_array_equal(whole[0].is_outlier, joined(single, "is_outlier"))


def test_river_path_scores_exactly_as_the_batch_path():
    X = stream(n=1500)
    _, whole = run(X, [len(X)])
    scores = river_scores(X)
    np.testing.assert_allclose(scores[1:], whole[0].score[1:], rtol=1e-9, atol=1e-9)
    assert scores[0] == 0.0  # river's convention before any event: nothing known


def test_a_checkpoint_inside_a_micro_batch_resumes_it(tmp_path):
    X = stream()
    _, whole = run(X, [len(X)])
    detector = Detector(warmup=300, random_state=0)
    first = detector.process(X[:1000])
    assert detector.n_pending not in (0, detector.micro_batch)
    detector.save(tmp_path / "d.npz")
    resumed = Detector.load(tmp_path / "d.npz")
    rest = resumed.process(X[1000:])
    scores = np.concatenate([first.score, rest.score])
    np.testing.assert_allclose(scores, whole[0].score, rtol=1e-9, atol=1e-9)


def test_a_field_whose_variance_sits_at_the_floor_is_judged_alike_in_every_cut():
    # the field's variance is exactly the running Gaussian's floor (1e-12): whether it
    # has varied must not depend on the rounding of each cut's sums
    rng = np.random.default_rng(0)
    X = rng.normal(size=(700, 2))
    X[:, 1] = np.where(np.arange(700) % 2 == 0, 1e-6, -1e-6)
    X[64, 1] = 1e-4
    _, whole = run(X, [len(X)])
    for cuts in ([1] * len(X), [3] * 300, [7] * 100):
        _, parts = run(X, cuts)
        np.testing.assert_array_equal(joined(parts, "is_outlier"), whole[0].is_outlier)
        np.testing.assert_allclose(joined(parts, "score"), whole[0].score, rtol=1e-9, atol=1e-9)


def test_a_checkpoint_inside_the_warmup_after_flags_resumes_it(tmp_path):
    X = stream()  # far-out events inside the warm-up: flagged, not kept
    _, whole = run(X, [len(X)])
    detector = Detector(warmup=300, random_state=0)
    first = detector.process(X[:200])
    assert first.is_outlier.any() and detector.model.warmup_remaining == 100
    detector.save(tmp_path / "d.npz")
    resumed = Detector.load(tmp_path / "d.npz")
    assert resumed.model.warmup_remaining == 100
    rest = resumed.process(X[200:])
    np.testing.assert_array_equal(
        np.concatenate([first.is_warmup, rest.is_warmup]), whole[0].is_warmup
    )
    scores = np.concatenate([first.score, rest.score])
    np.testing.assert_allclose(scores, whole[0].score, rtol=1e-9, atol=1e-9)


def test_river_path_scores_values_too_large_to_square_as_the_batch_path():
    X = stream(n=1200)
    X[[120, 900, 950], 0] = [1e300, -1e308, 1e101]  # in the warm-up and after it
    _, whole = run(X, [len(X)])
    scores = river_scores(X)
    np.testing.assert_allclose(scores[1:], whole[0].score[1:], rtol=1e-9)


def test_a_checkpoint_from_before_the_warmup_count_resumes_its_warmup_alike():
    X = stream()
    _, whole = run(X, [len(X)])
    detector = Detector(warmup=300, random_state=0)
    first = detector.process(X[:200])
    state = detector.get_state()
    del state["model"]["buffered"]  # as written before the model counted flagged events
    resumed = Detector.from_state(state)
    assert resumed.model.warmup_remaining == 100
    rest = resumed.process(X[200:])
    np.testing.assert_array_equal(
        np.concatenate([first.is_warmup, rest.is_warmup]), whole[0].is_warmup
    )
    np.testing.assert_allclose(np.concatenate([first.score, rest.score]), whole[0].score, rtol=1e-9)
