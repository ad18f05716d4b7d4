"""Regime changes may make a new pattern normal, never normal traffic abnormal."""

import numpy as np
import pytest

from streamgmm.detector import Detector


def feed(detector: Detector, X: np.ndarray, cut: int = 500) -> np.ndarray:
    return np.concatenate(
        [detector.process(X[i : i + cut]).is_outlier for i in range(0, len(X), cut)]
    )


def test_a_constant_stream_that_starts_to_vary_is_learnt_not_locked_out():
    rng = np.random.default_rng(0)
    level = np.array([10.0, 20.0, 30.0])
    X = np.concatenate([np.tile(level, (2000, 1)), level + rng.normal(0, 1, (30000, 3))])
    detector = Detector(random_state=0)
    flagged = feed(detector, X)
    assert flagged[-10000:].mean() < 0.02
    assert detector.n_regime_changes <= 1


@pytest.mark.parametrize("jitter", [0.0, 1e-3])
def test_a_field_constant_at_start_up_does_not_get_the_stream_flagged(jitter):
    """A field that holds still, or barely moves, for the warm-up's first events (a
    counter before any traffic, a sensor warming up) has no scale yet, or a tiny
    one: the warm-up must not flag every event after it, nor the mixture fitted on
    what it kept."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6000, 3)) * [1.0, 2.0, 0.5] + [5.0, 7.0, -3.0]
    X[:60, 1] = 7.0 + jitter * rng.normal(size=60)
    detector = Detector(random_state=0)
    flagged = feed(detector, X, cut=64)
    assert flagged[:500].mean() < 0.15  # the warm-up: the first varying values at most
    assert flagged[500:].mean() < 0.005
    assert flagged[500:2500].mean() < 0.005  # no lock-out waiting for a regime change


def host_kinds(rng, n):
    kinds = np.array([[20.0, 60.0, 40.0], [80.0, 30.0, 5.0], [50.0, 50.0, 15.0]])
    return kinds[rng.integers(0, 3, n)] + rng.normal(size=(n, 3)) * [3.0, 3.0, 4.0]


def test_an_attack_on_half_the_traffic_displaces_no_normal_kind():
    rng = np.random.default_rng(1)
    during = host_kinds(rng, 60000)
    attack = np.zeros(len(during), dtype=bool)
    attack[1::2] = True
    during[attack] = [50.0, 90.0, 70.0] + rng.normal(size=(attack.sum(), 3)) * [3.0, 3.0, 4.0]
    X = np.concatenate([host_kinds(rng, 10000), during, host_kinds(rng, 30000)])
    detector = Detector(random_state=0)
    flagged = feed(detector, X)
    in_attack = flagged[10000:70000]
    assert in_attack[~attack].mean() <= 0.005, "normal events flagged during the attack"
    assert flagged[70000:].mean() <= 0.005, "normal events flagged after the attack"
    assert in_attack[attack][:5000].mean() >= 0.5, "the attack's first events went unflagged"
    assert detector.model.n_components_ > 3  # the attack was added, nothing replaced


def new_fleet(rng, n):
    """Other kinds of hosts, as spread as the first ones: a deployment replaced them all."""
    kinds = np.array([[60.0, 10.0, 70.0], [10.0, 80.0, 60.0]])
    return kinds[rng.integers(0, 2, n)] + rng.normal(size=(n, 3)) * [3.0, 3.0, 4.0]


@pytest.mark.parametrize("cut", [1, 64, 500])
def test_traffic_that_moves_as_a_whole_is_learnt_within_a_few_hundred_events(cut, tmp_path):
    """Every event flagged, and spread like traffic, not a flood of one pattern: the
    model describes none of the traffic. Waiting for ``regime_share`` of ``patience``
    would flag the new fleet for 2,300 events; it is learnt after about 300, whatever
    the cut, across a checkpoint taken during the lock-out."""
    rng = np.random.default_rng(5)
    X = np.concatenate([host_kinds(rng, 3000), new_fleet(rng, 6000)])
    detector = Detector(random_state=0)
    first = feed(detector, X[:3100], cut)
    detector.save(tmp_path / "d.npz")
    rest = feed(Detector.load(tmp_path / "d.npz"), X[3100:], cut)
    flagged = np.concatenate([first, rest])
    assert flagged[3000:3200].all()  # the new fleet is news at first
    assert flagged[3000:3600].mean() < 0.7
    assert flagged[3600:].mean() <= 0.005
    reference = feed(Detector(random_state=0), X, 500)
    np.testing.assert_array_equal(flagged, reference)


def test_a_flood_of_a_few_repeated_events_stays_flagged():
    """A replayed attack (a handful of distinct requests, repeated) is the whole traffic
    for 1,000 events, as http's bursts are: narrower than any component, it is not a
    new population and stays flagged."""
    rng = np.random.default_rng(6)
    replayed = new_fleet(rng, 12)
    X = np.concatenate([host_kinds(rng, 5000), replayed[rng.integers(0, 12, 1000)]])
    detector = Detector(random_state=0)
    flagged = feed(detector, X)
    assert flagged[-1000:].all() and detector.n_regime_changes == 0


def test_a_broken_producers_garbage_stays_flagged():
    """Every event garbage for 1,000 events (values a million times too wide): it is
    all the traffic and all distinct, but it does not spread like traffic."""
    rng = np.random.default_rng(8)
    garbage = rng.uniform(-1e6, 1e6, (1000, 3))
    X = np.concatenate([host_kinds(rng, 5000), garbage, host_kinds(rng, 3000)])
    detector = Detector(random_state=0)
    flagged = feed(detector, X)
    assert flagged[5000:6000].all() and detector.n_regime_changes == 0
    assert flagged[6000:].mean() <= 0.005


def test_a_storm_learnt_as_a_regime_leaves_normal_traffic_normal():
    """Other hosts take the whole traffic for 300 events (an outage, a failover), long
    enough to be learnt as a regime; the usual traffic comes back and is not flagged."""
    rng = np.random.default_rng(7)
    X = np.concatenate([host_kinds(rng, 5000), new_fleet(rng, 300), host_kinds(rng, 20000)])
    detector = Detector(random_state=0)
    flagged = feed(detector, X)
    assert detector.n_regime_changes == 1
    assert flagged[5300:6300].mean() <= 0.005 and flagged[5300:].mean() <= 0.005


def test_a_burst_of_one_pattern_stays_flagged():
    rng = np.random.default_rng(2)
    X = np.concatenate([host_kinds(rng, 5000), np.full((1000, 3), [50.0, 90.0, 70.0])])
    detector = Detector(random_state=0)
    flagged = feed(detector, X)
    assert flagged[-1000:].all() and detector.n_regime_changes == 0


def test_values_too_large_to_square_are_outliers_not_errors():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2000, 3))
    far = [100, 700, 1500, 1700]
    X[far] = [[0.0, -1e300, 0.0], [1e101, 0.0, 0.0], [0.0, 0.0, 1.7e308], [-1.7e308, 1e200, 5]]
    for learn_from_outliers in (False, True):
        detector = Detector(warmup=300, random_state=0, learn_from_outliers=learn_from_outliers)
        results = [detector.process(X[i : i + 250]) for i in range(0, len(X), 250)]
        score = np.concatenate([r.score for r in results])
        flagged = np.concatenate([r.is_outlier for r in results])
        assert flagged[far].all() and np.isfinite(score).all()
        assert flagged.mean() < 0.01
        assert np.isfinite(detector.model.means_).all()
        assert np.isfinite(detector.model.covariances_).all()


def test_a_warmup_of_values_too_large_to_square_starts_again_not_an_error():
    X = np.ones((700, 2))
    X[:, 0] = 1e101  # a broken producer from the first event: nothing can be kept
    detector = Detector(warmup=300, random_state=0)
    result = detector.process(X)
    assert result.is_outlier.all() and result.is_warmup.all() and np.isfinite(result.score).all()
    assert not detector.is_warmed_up and detector.model.warmup_remaining == 200
    Detector.from_state(detector.get_state())  # it can be checkpointed meanwhile
    normal = np.random.default_rng(0).normal(size=(600, 2))
    after = detector.process(normal)
    assert after.is_warmup[:200].all() and not after.is_warmup[200:].any()  # 100 were in it
    assert detector.is_warmed_up and after.is_outlier[200:].mean() < 0.05


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (np.empty((5, 0)), "no features"),
        (np.ones((5, 2)) * (1 + 1j), "complex"),
        ([[10**400, 1.0]], "not a float64"),
        ([[None, 1.0]], "None"),
    ],
)
def test_events_the_detector_cannot_read_are_refused_before_anything_is_learnt(events, message):
    detector = Detector(warmup=10)
    with pytest.raises(ValueError, match=message):
        detector.process(events)
    assert detector.n_seen == 0 and detector.model.warmup_remaining == 10
