import math

import numpy as np
import pytest
from scipy import stats

from streamgmm.threshold import (
    Chi2Threshold,
    LogLikelihoodThreshold,
    QuantileThreshold,
    Threshold,
    make_threshold,
)


def run(threshold, batches):
    flagged = total = 0
    for scores in batches:
        flags = threshold.flag(scores, None)
        flagged += flags.sum()
        total += len(scores)
        threshold.update(scores[~flags])
    return flagged / total


@pytest.mark.parametrize("q", [0.99, 0.999])
def test_quantile_threshold_flags_about_one_minus_q_of_normal_scores(q):
    rng = np.random.default_rng(0)
    # -log p of a Gaussian in 6 dimensions: a shifted chi-square over two
    threshold = QuantileThreshold(q)
    rate = run(threshold, (rng.chisquare(6, 2000) / 2 + 5 for _ in range(200)))
    assert rate == pytest.approx(1 - q, rel=0.35)
    true_quantile = stats.chi2.ppf(q, 6) / 2 + 5
    assert threshold.value == pytest.approx(true_quantile, abs=0.6)


def test_threshold_does_not_ratchet_down_over_a_long_stream():
    rng = np.random.default_rng(1)
    threshold = QuantileThreshold(0.999)
    values = []
    for _ in range(400):
        scores = rng.exponential(1.0, 1000)
        flags = threshold.flag(scores, None)
        threshold.update(scores[~flags])
        values.append(threshold.value)
    assert np.mean(values[-100:]) == pytest.approx(math.log(1000), abs=0.4)


def test_burst_of_anomalies_does_not_raise_threshold():
    rng = np.random.default_rng(2)
    threshold = QuantileThreshold(0.999)
    run(threshold, (rng.exponential(1.0, 1000) for _ in range(50)))
    before = threshold.value
    burst = rng.uniform(before + 1, before + 30, 20000)
    assert threshold.flag(burst, None).all()
    run(threshold, [burst])
    assert threshold.value == before


def test_far_out_points_are_flagged_whatever_their_rate():
    rng = np.random.default_rng(3)
    threshold = QuantileThreshold(0.999)
    run(threshold, (rng.exponential(1.0, 1000) for _ in range(50)))
    for _ in range(50):  # 30 % of traffic far out, for a long time
        scores = np.concatenate([rng.exponential(1.0, 700), np.full(300, 40.0)])
        flags = threshold.flag(scores, None)
        assert flags[700:].all()
        threshold.update(scores[~flags])


def test_recovers_from_a_threshold_set_too_low():
    rng = np.random.default_rng(4)
    threshold = QuantileThreshold(0.999)
    threshold.update(rng.exponential(0.2, 5000))  # a bad start
    assert threshold.value < 3
    run(threshold, (rng.exponential(1.0, 2000) for _ in range(100)))
    assert threshold.value == pytest.approx(math.log(1000), abs=0.6)


def test_no_threshold_before_any_score():
    threshold = QuantileThreshold()
    assert math.isnan(threshold.value)
    assert not threshold.flag(np.array([1e9]), None).any()


def test_loglik_and_chi2_rules():
    assert LogLikelihoodThreshold(-10).flag(np.array([9.0, 11.0]), None).tolist() == [False, True]
    chi2 = Chi2Threshold(0.999)
    assert not chi2.flag(None, np.array([1e9])).any()  # before it knows the dimension
    chi2.bind(3)
    assert chi2.value == pytest.approx(stats.chi2.ppf(0.999, 3))
    assert chi2.flag(None, np.array([1.0, 20.0])).tolist() == [False, True]


@pytest.mark.parametrize(
    "threshold",
    [QuantileThreshold(0.99, window=100), LogLikelihoodThreshold(-3.0), Chi2Threshold(0.9, 4)],
)
def test_state_round_trip(threshold):
    rng = np.random.default_rng(5)
    threshold.update(rng.exponential(1.0, 250))
    copy = Threshold.from_state(threshold.get_state())
    assert copy.get_params() == threshold.get_params()
    assert copy.value == threshold.value or (math.isnan(copy.value) and math.isnan(threshold.value))
    more = rng.exponential(1.0, 50)
    copy.update(more)
    threshold.update(more)
    assert copy.value == threshold.value or math.isnan(threshold.value)


def test_chi2_parameters_do_not_change_when_the_dimension_is_bound():
    chi2 = Chi2Threshold(0.999)
    before = chi2.get_params()
    chi2.bind(3)
    assert chi2.get_params() == before == {"probability": 0.999}
    copy = Threshold.from_state(chi2.get_state())
    assert copy.n_features == 3 and copy.value == chi2.value
    unbound = Threshold.from_state(Chi2Threshold(0.9).get_state())
    assert unbound.n_features is None and math.isnan(unbound.value)


def test_chi2_state_of_older_checkpoints_still_loads():
    old = {"kind": "chi2", "params": {"probability": 0.99, "n_features": 2}}
    assert Threshold.from_state(old).value == pytest.approx(stats.chi2.ppf(0.99, 2))


def test_make_threshold_names_the_kinds():
    assert isinstance(make_threshold("quantile", q=0.9), QuantileThreshold)
    with pytest.raises(ValueError, match="quantile, loglik, chi2"):
        make_threshold("median")
    with pytest.raises(ValueError, match="q must be in"):
        QuantileThreshold(1.5)
