import pickle

import numpy as np
import pytest
from scipy import stats
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.mixture import GaussianMixture

from streamgmm.checkpoint import CheckpointCorruptError
from streamgmm.gmm import (
    COVARIANCE_TYPES,
    KDE_BANDWIDTH,
    OnlineGaussianMixture,
    RunningGaussian,
    batch_step,
)

# scikit-learn's default: where a test compares with its batch EM or with exact
# variances, not the default 0.05 (a floor meant for standardised data)
SKLEARN_REG_COVAR = 1e-6


def rotated_mixture(rng, n, d=2, k=3, spread=6.0):
    means = rng.normal(0, spread, (k, d))
    factors = []
    for _ in range(k):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        factors.append(q * rng.uniform(0.3, 1.5, d))
    labels = rng.integers(0, k, n)
    noise = rng.normal(size=(n, d))
    return means[labels] + np.einsum("nd,nde->ne", noise, np.array(factors)[labels])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_one_pass_of_minibatches_matches_batch_em(covariance_type):
    rng = np.random.default_rng(3)
    data = rotated_mixture(rng, 24000, d=3, k=3)
    train, held_out = data[:20000], data[20000:]
    batch = GaussianMixture(3, covariance_type=covariance_type, n_init=3, random_state=0)
    batch.fit(train)
    online = OnlineGaussianMixture(
        3, covariance_type=covariance_type, reg_covar=SKLEARN_REG_COVAR, random_state=0
    )
    for chunk in np.array_split(train, 10):
        online.partial_fit(chunk)
    assert abs(batch.score(held_out) - online.score(held_out)) < 0.02


def test_same_mean_clusters_with_different_radii_are_recovered():
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(0, 0.3, (4000, 2)), rng.normal(0, 3.0, (4000, 2))])
    data = data[rng.permutation(len(data))]
    model = OnlineGaussianMixture(
        2, covariance_type="full", reg_covar=SKLEARN_REG_COVAR, random_state=1
    )
    for chunk in np.array_split(data, 40):
        model.partial_fit(chunk)
    radii = np.sort(np.sqrt(model.covariances_.diagonal(axis1=1, axis2=2).mean(axis=1)))
    assert radii == pytest.approx([0.3, 3.0], rel=0.1)
    assert model.weights_ == pytest.approx([0.5, 0.5], abs=0.05)


def test_step_of_a_batch_compounds_the_per_event_steps():
    # with alpha = 1 the statistics are a running average, however the stream is cut
    assert batch_step(0, 10, 1.0, 0.0, 0.0) == pytest.approx(1.0)
    assert batch_step(90, 10, 1.0, 0.0, 0.0) == pytest.approx(0.1)
    one_by_one = 1.0
    for i in range(91, 101):
        one_by_one *= 1 - 1 / i
    assert batch_step(90, 10, 1.0, 0.0, 0.0) == pytest.approx(1 - one_by_one)
    # a floor keeps a forgetting model from freezing
    assert batch_step(10**9, 1, 1.0, 0.0, 0.01) == pytest.approx(0.01)


def test_score_then_learn_scores_with_the_model_as_it_was():
    rng = np.random.default_rng(1)
    data = rotated_mixture(rng, 3000)
    a = OnlineGaussianMixture(3, random_state=0).fit(data[:1000])
    b = OnlineGaussianMixture.from_state(a.get_state())
    batch = data[1000:1500]
    expected = a.score_samples(batch)
    a.partial_fit(batch)
    scores = b.score_then_learn(batch)
    np.testing.assert_allclose(scores, expected)
    np.testing.assert_allclose(b.means_, a.means_)
    np.testing.assert_allclose(b.covariances_, a.covariances_)


def test_result_hardly_depends_on_how_the_stream_is_cut():
    rng = np.random.default_rng(2)
    data = rotated_mixture(rng, 20000)
    coarse = OnlineGaussianMixture(3, random_state=0).fit(data[:2000])
    fine = OnlineGaussianMixture.from_state(coarse.get_state())
    for chunk in np.array_split(data[2000:], 9):
        coarse.partial_fit(chunk)
    for chunk in np.array_split(data[2000:], 900):
        fine.partial_fit(chunk)
    held_out = rotated_mixture(np.random.default_rng(2), 20000)
    assert abs(coarse.score(held_out) - fine.score(held_out)) < 0.01


def test_half_life_lets_the_model_follow_a_drift():
    rng = np.random.default_rng(4)
    model = OnlineGaussianMixture(1, warmup=200, half_life=500, random_state=0)
    model.partial_fit(rng.normal(0, 1, (5000, 2)))
    for _ in range(20):
        model.partial_fit(rng.normal(3, 1, (250, 2)))
    assert model.means_[0] == pytest.approx([3, 3], abs=0.2)
    still = OnlineGaussianMixture(1, warmup=200, random_state=0)
    still.partial_fit(rng.normal(0, 1, (5000, 2)))
    for _ in range(20):
        still.partial_fit(rng.normal(3, 1, (250, 2)))
    assert still.means_[0][0] < 1.5  # without forgetting, the past weighs as much


def test_warmup_scores_honestly_then_fits():
    rng = np.random.default_rng(5)
    model = OnlineGaussianMixture(2, warmup=300, random_state=0)
    first = model.score_then_learn(rng.normal(size=(200, 3)))
    assert np.isfinite(first).all() and not model.is_fitted
    far = model.score_samples(np.array([[10.0, 10.0, 10.0]]))
    assert far[0] < first.min()  # the running Gaussian already says far is unlikely
    model.score_then_learn(rng.normal(size=(200, 3)))
    assert model.is_fitted and model.n_seen_ == 400


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_probabilities_predictions_and_explanations_agree(covariance_type):
    rng = np.random.default_rng(6)
    data = rotated_mixture(rng, 3000, d=3)
    model = OnlineGaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(data)
    resp = model.predict_proba(data[:50])
    assert resp.shape == (50, 3)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.predict(data[:50]), resp.argmax(axis=1))
    explanation = model.explain(data[:50])
    k = explanation["component"]
    variances = {
        "full": lambda c: np.diagonal(c, axis1=1, axis2=2),
        "diag": lambda c: c,
        "spherical": lambda c: np.repeat(c[:, None], 3, axis=1),
    }[covariance_type](model.covariances_)
    expected = (data[:50] - model.means_[k]) / np.sqrt(variances[k])
    np.testing.assert_allclose(explanation["contributions"], expected)
    assert (explanation["mahalanobis"] >= 0).all()


def test_explanation_points_at_the_odd_feature():
    rng = np.random.default_rng(7)
    model = OnlineGaussianMixture(1, random_state=0).fit(rng.normal(size=(2000, 4)))
    explanation = model.explain(np.array([[0.1, 0.0, 8.0, -0.2]]))
    assert np.argmax(np.abs(explanation["contributions"][0])) == 2
    assert explanation["mahalanobis"][0] == pytest.approx(8.0, rel=0.1)


def test_auto_chooses_the_number_of_components_by_bic():
    rng = np.random.default_rng(8)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    data = centres[rng.integers(0, 3, 900)] + rng.normal(size=(900, 2))
    model = OnlineGaussianMixture("auto", random_state=0).fit(data)
    assert model.n_components_ == 3


def test_starved_component_is_reseeded():
    rng = np.random.default_rng(9)
    data = np.concatenate([rng.normal(0, 1, (500, 2)), rng.normal(50, 1, (500, 2))])
    model = OnlineGaussianMixture(2, half_life=200, weight_floor=0.01, random_state=0).fit(data)
    for _ in range(40):  # the cluster at 50 disappears from the stream
        model.partial_fit(rng.normal(0, 1, (100, 2)))
    assert model.n_reseeds_ >= 1
    assert np.all(np.abs(model.means_) < 10)  # both components now serve the live data


def test_bad_input_gets_a_clear_error():
    model = OnlineGaussianMixture(1).fit(np.random.default_rng(0).normal(size=(100, 2)))
    with pytest.raises(
        ValueError, match="X has 5 features, but OnlineGaussianMixture is expecting 2"
    ):
        model.score_samples(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN or infinity; drop or repair"):
        model.partial_fit(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"beyond ±1e\+100.*rescale"):
        model.score_samples(np.array([[1e200, 1.0]]))
    with pytest.raises(ValueError, match=r"(?s)Expected 2D array, got 1D array instead.*Reshape"):
        model.score_samples(np.zeros(2))  # one event or two? refused, not guessed
    with pytest.raises(ValueError, match="Complex data not supported"):
        model.score_samples(np.zeros((1, 2), dtype=complex))
    with pytest.raises(NotFittedError, match="not fitted yet: it needs 10 warm-up events"):
        OnlineGaussianMixture(warmup=10).predict(np.zeros((1, 2)))
    with pytest.raises(NotFittedError, match="call fit"):
        OnlineGaussianMixture().score_samples(np.zeros((1, 2)))


def test_parameters_are_checked_by_fit_not_by_the_constructor():
    X = np.random.default_rng(0).normal(size=(20, 2))
    model = OnlineGaussianMixture(covariance_type="ful")  # stored as given, like scikit-learn
    assert model.get_params()["covariance_type"] == "ful"
    with pytest.raises(ValueError, match="covariance_type must be one of full, diag, spherical"):
        model.fit(X)
    with pytest.raises(ValueError, match="step_alpha"):
        OnlineGaussianMixture(step_alpha=0.3).partial_fit(X)
    assert OnlineGaussianMixture(1).set_params(covariance_type="full").fit(X).covariances_.ndim == 3


def test_fit_twice_with_the_same_random_state_gives_the_same_model():
    X = np.random.default_rng(3).normal(size=(300, 2))
    model = OnlineGaussianMixture(n_components=3, random_state=7)
    first = model.fit(X).means_.copy()
    np.testing.assert_array_equal(model.fit(X).means_, first)
    np.testing.assert_array_equal(clone(model).fit(X).means_, first)


def test_warm_up_scores_with_the_warmup_density_before_the_mixture_exists():
    model = OnlineGaussianMixture(warmup=100)
    model.partial_fit(np.random.default_rng(0).normal(size=(10, 2)))
    assert not model.is_fitted
    scores = model.score_samples([[0.0, 0.0], [8.0, 8.0]])
    assert scores[0] > scores[1]
    with pytest.raises(NotFittedError, match="10 seen"):
        model.predict([[0.0, 0.0]])


def direct_warmup_log_likelihood(X, kept):
    """Row by row: the Gaussian KDE of the kept rows before it, kernels KDE_BANDWIDTH
    running sds wide (the sd floored as the running Gaussian floors it)."""
    n, d = X.shape
    out = np.empty(n)
    for i in range(n):
        kernels = X[:i][kept[:i]]
        m = len(kernels)
        if m == 0:
            out[i] = -0.5 * d * np.log(2 * np.pi)  # the running Gaussian's, a unit one
            continue
        floor = 1e-12 + 1e-10 * kernels.mean(axis=0) ** 2
        var = kernels.var(axis=0) + floor
        low, high = kernels.min(axis=0), kernels.max(axis=0)
        extent = np.maximum(np.abs(low), np.abs(high))
        unvaried = high - low <= 2 * np.sqrt(1e-12 + 1e-10 * extent**2)  # the standardiser's 1
        var = np.where(unvaried, np.maximum(var, 1.0), var)
        h_sq = KDE_BANDWIDTH**2 * var
        log_kernels = -0.5 * (((X[i] - kernels) ** 2 / h_sq).sum(axis=1))
        log_kernels -= 0.5 * np.log(2 * np.pi * h_sq).sum()
        out[i] = np.logaddexp.reduce(log_kernels) - np.log(m)
    return out


def test_warmup_scores_are_the_kde_of_the_kept_events_before_each():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(160, 3)) * [1.0, 100.0, 0.01] + [0.0, 1e4, 5.0]
    X[:30, 2] = 5.0  # a field constant for a while: its variance is only the floor
    X[[60, 90, 91, 130]] += [40.0, 0.0, 0.0]  # far out after 50 events: flagged, not kept
    for cuts in ([160], [1] * 160, [7, 50, 3, 100]):
        model = OnlineGaussianMixture(warmup=200)
        parts = [model.warmup_step(part, 50, 1e-6) for part in np.split(X, np.cumsum(cuts)[:-1])]
        ll = np.concatenate([p.log_likelihood for p in parts])
        flagged = np.concatenate([p.flagged for p in parts])
        threshold = np.concatenate([p.threshold for p in parts])
        # the flags are the running Gaussian's, the score is the KDE of the events kept
        gaussian = RunningGaussian().score_then_update(X, 50, stats.chi2.isf(1e-6, 3))
        np.testing.assert_array_equal(flagged, gaussian.flagged)
        assert flagged[[60, 90, 91, 130]].all() and flagged.sum() == 4
        np.testing.assert_allclose(ll, direct_warmup_log_likelihood(X, ~flagged), rtol=1e-9)
        # flagged exactly when the score passes the warm-up threshold
        can = np.isfinite(threshold)
        np.testing.assert_array_equal(-ll[can] > threshold[can], flagged[can])
    # what the next event would be scored by, before it is learnt (the river path)
    model = OnlineGaussianMixture(warmup=200)
    model.warmup_step(X[:100], 50, 1e-6)
    ahead = model.warmup_log_likelihood(X[100:101])
    np.testing.assert_allclose(ahead, model.warmup_step(X[100:101], 50, 1e-6).log_likelihood)


def test_a_fitted_model_pickles_and_scores_the_same():
    X = np.random.default_rng(4).normal(size=(400, 3))
    for covariance_type in COVARIANCE_TYPES:
        model = OnlineGaussianMixture(covariance_type=covariance_type, random_state=0).fit(X)
        copy = pickle.loads(pickle.dumps(model))
        np.testing.assert_array_equal(copy.score_samples(X), model.score_samples(X))
        np.testing.assert_array_equal(copy.score_then_learn(X), model.score_then_learn(X))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_save_and_load_round_trip_exactly(tmp_path, covariance_type):
    rng = np.random.default_rng(10)
    data = rotated_mixture(rng, 6000, d=3)
    model = OnlineGaussianMixture("auto", covariance_type=covariance_type, random_state=0)
    model.partial_fit(data[:3000])
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = OnlineGaussianMixture.load(path)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert loaded.n_seen_ == model.n_seen_ and loaded.get_params() == model.get_params()
    # and they go on identically
    np.testing.assert_array_equal(
        loaded.score_then_learn(data[3000:]), model.score_then_learn(data[3000:])
    )
    np.testing.assert_array_equal(loaded.means_, model.means_)


def test_save_during_warmup_keeps_the_buffer(tmp_path):
    rng = np.random.default_rng(11)
    data = rng.normal(size=(400, 2))
    model = OnlineGaussianMixture(2, warmup=300, random_state=0)
    model.partial_fit(data[:200])
    model.save(tmp_path / "m.npz")
    loaded = OnlineGaussianMixture.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(
        loaded.score_then_learn(data[200:]), model.score_then_learn(data[200:])
    )
    np.testing.assert_array_equal(loaded.means_, model.means_)


def test_a_damaged_model_file_is_refused(tmp_path):
    model = OnlineGaussianMixture(1).fit(np.random.default_rng(0).normal(size=(100, 2)))
    path = tmp_path / "m.npz"
    model.save(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointCorruptError, match="truncated or damaged"):
        OnlineGaussianMixture.load(path)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_data_far_from_zero_keeps_its_variances(covariance_type):
    rng = np.random.default_rng(12)
    data = 1e8 + rng.normal(size=(6000, 2))
    params = dict(covariance_type=covariance_type, reg_covar=SKLEARN_REG_COVAR, random_state=0)
    fitted = OnlineGaussianMixture(1, **params).fit(data)
    streamed = OnlineGaussianMixture(1, **params)
    for chunk in np.array_split(data + 9e8, 12):
        streamed.partial_fit(chunk)
    for model in (fitted, streamed):
        variances = np.atleast_2d(
            model.covariances_.reshape(-1)[:: 3 if covariance_type == "full" else 1]
        )
        assert variances == pytest.approx(1.0, abs=0.06)  # sampling noise, not 0 or 42
    assert fitted.score(data) == pytest.approx(-2.84, abs=0.02)


def test_a_field_constant_so_far_is_measured_in_its_own_units():
    """A field that has not varied yet has no scale: the running Gaussian (and the KDE
    that takes its variance) measures it in its own units, as the standardiser does a
    constant field, not against a variance of 1e-12 that makes any change of it
    astronomically unlikely. A change far in those units is still flagged."""
    rng = np.random.default_rng(5)
    X = np.zeros((300, 3))
    X[:, 0] = rng.normal(size=300)
    X[100, 1] = 1.0  # a sparse binary field, its first 1
    X[200, 2] = 500.0  # a counter before any traffic, far from its zeros
    for cuts in ([300], [1] * 300, [99, 2, 150, 49]):
        model = OnlineGaussianMixture(warmup=400)
        parts = [model.warmup_step(part, 50, 1e-6) for part in np.split(X, np.cumsum(cuts)[:-1])]
        flagged = np.concatenate([p.flagged for p in parts])
        score = -np.concatenate([p.log_likelihood for p in parts])
        assert np.flatnonzero(flagged).tolist() == [200]
        assert score[100] < score[:100].max() + 5.0  # under 1e-12, about 5e11 nats
        assert 1e4 < score[200] < 1e6


def test_the_warmup_gaussian_flags_a_minority_whatever_the_cut():
    """A field that barely varied for the first 60 rows (a sensor's jitter while it
    warms up): past it every row is far out for so small a variance; the Gaussian flags
    them only while they stay fewer than the rows kept, then keeps them and learns the
    field varies. Same flags whatever the cut, and across a checkpoint (the count of
    flagged rows is saved)."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 2))
    X[:60, 1] = 3.0 + 1e-3 * rng.normal(size=60)

    def flags(cut):
        gaussian, out = RunningGaussian(), []
        for i in range(0, len(X), cut):
            gaussian = RunningGaussian.from_state(gaussian.get_state())
            out.append(gaussian.score_then_update(X[i : i + cut], 50, 30.0).flagged)
        return gaussian, np.concatenate(out)

    gaussian, whole = flags(len(X))
    n_flagged, n_kept = np.cumsum(whole), np.cumsum(~whole)
    assert (n_flagged <= n_kept).all() and whole[60:120].sum() >= 50  # a minority, then learnt
    assert gaussian.n_flagged == whole.sum() and gaussian.count == len(X) - whole.sum()
    assert not whole[200:].any()
    for cut in (1, 7, 64):
        np.testing.assert_array_equal(flags(cut)[1], whole)
