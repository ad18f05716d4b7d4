import numpy as np
import pytest

from streamgmm.checkpoint import CheckpointMismatchError
from streamgmm.detector import Detector
from streamgmm.threshold import Chi2Threshold, LogLikelihoodThreshold


def clusters(rng, n, d=3, shift=0.0):
    centres = np.array([[0.0] * d, [6.0] * d, [0.0, 6.0] + [0.0] * (d - 2)])
    return centres[rng.integers(0, 3, n)] + rng.normal(size=(n, d)) + shift


def warmed(rng, **kwargs):
    detector = Detector(warmup=300, random_state=0, **kwargs)
    for batch in np.array_split(clusters(rng, 6000), 30):
        detector.process(batch)
    return detector


def test_warmup_events_are_scored_one_by_one_and_far_ones_flagged():
    rng = np.random.default_rng(0)
    detector = Detector(warmup=300, random_state=0)
    result = detector.process(np.concatenate([clusters(rng, 299), [[100.0, 100.0, 100.0]]]))
    assert result.is_warmup.all() and result.is_outlier.tolist() == [False] * 299 + [True]
    assert np.isfinite(result.score).all()
    assert result.score[-1] == result.score.max()  # honest: the far point scores worst
    assert np.isnan(result.threshold[:50]).all()  # nothing can be judged before 50 events
    assert result.score[-1] > result.threshold[-1]
    assert detector.is_warmed_up  # the warm-up is the first 300 events, flagged or not


def test_batch_straddling_the_warmup_is_split():
    rng = np.random.default_rng(1)
    detector = Detector(warmup=100, random_state=0)
    result = detector.process(clusters(rng, 250))
    assert result.is_warmup[:100].all() and not result.is_warmup[100:].any()
    assert (result.component[:100] == -1).all() and (result.component[100:] >= 0).all()
    assert result.responsibilities.shape == (250, detector.model.n_components_)
    np.testing.assert_allclose(result.responsibilities[100:].sum(axis=1), 1.0)


def test_obvious_outliers_are_flagged_and_explained():
    rng = np.random.default_rng(2)
    detector = warmed(rng)
    batch = np.concatenate([clusters(rng, 1000), [[0.0, 0.0, 25.0]]])
    result = detector.process(batch)
    assert result.is_outlier[-1]
    assert result.is_outlier[:-1].mean() < 0.01
    assert np.argmax(np.abs(result.contributions[-1])) == 2
    assert result.score[-1] > result.threshold[-1]


def test_outliers_are_not_learnt_by_default():
    rng = np.random.default_rng(3)
    detector = warmed(rng)
    detector.process(clusters(rng, detector.events_to_update))  # an update: none in hand
    seen = detector.model.n_seen_
    result = detector.process(np.full((detector.micro_batch, 3), 40.0))
    assert result.is_outlier.all()
    assert detector.model.n_seen_ == seen


def test_learn_from_outliers_learns_everything():
    rng = np.random.default_rng(3)
    detector = warmed(rng, learn_from_outliers=True)
    seen = detector.model.n_seen_
    detector.process(np.full((detector.events_to_update, 3), 40.0))  # to the next update
    assert detector.model.n_seen_ == seen + detector.micro_batch


def test_burst_of_anomalies_stays_flagged_and_does_not_raise_threshold():
    rng = np.random.default_rng(4)
    detector = warmed(rng)
    before = detector.threshold.value
    burst = rng.normal(20.0, 0.1, (1000, 3))
    flagged = [detector.process(chunk).is_outlier.mean() for chunk in np.array_split(burst, 10)]
    assert min(flagged) == 1.0
    assert detector.threshold.value <= before + 1e-9
    assert detector.n_regime_changes == 0


def test_level_shift_becomes_the_new_normal():
    rng = np.random.default_rng(5)
    detector = warmed(rng, half_life=2000)
    flagged = []
    for _ in range(60):
        flagged.append(detector.process(clusters(rng, 100, shift=30.0)).is_outlier.mean())
    assert flagged[0] == 1.0  # at first, every event of the new regime is an outlier
    assert detector.n_regime_changes >= 1
    assert np.mean(flagged[-10:]) < 0.02  # then it is learnt, not locked out


def test_constant_and_huge_features_do_not_break_it():
    rng = np.random.default_rng(6)
    detector = Detector(warmup=200, random_state=0)
    data = np.column_stack([np.full(3000, 7.0), rng.normal(1e12, 1e9, 3000), rng.normal(size=3000)])
    for batch in np.array_split(data, 10):
        result = detector.process(batch)
        assert np.isfinite(result.score).all()
        assert np.isfinite(result.contributions).all()
    assert np.isfinite(detector.model.means_).all()


@pytest.mark.parametrize("threshold", [None, LogLikelihoodThreshold(-12.0), Chi2Threshold(0.9999)])
def test_checkpointed_detector_goes_on_exactly_like_the_original(tmp_path, threshold):
    rng = np.random.default_rng(7)
    data = clusters(rng, 5000)
    original = Detector(warmup=300, random_state=0, threshold=threshold)
    for batch in np.array_split(data[:2000], 7):
        original.process(batch)
    original.process(np.full((3, 3), 30.0))  # something in quarantine
    original.save(tmp_path / "detector.npz")
    resumed = Detector.load(tmp_path / "detector.npz")
    for batch in np.array_split(data[2000:], 5):
        a, b = original.process(batch), resumed.process(batch)
        np.testing.assert_array_equal(a.score, b.score)
        np.testing.assert_array_equal(a.is_outlier, b.is_outlier)
    assert resumed.n_seen == original.n_seen


def test_checkpoint_taken_during_warmup_resumes_the_warmup(tmp_path):
    rng = np.random.default_rng(8)
    data = clusters(rng, 1000)
    original = Detector(warmup=300, random_state=0)
    original.process(data[:120])
    original.save(tmp_path / "d.npz")
    resumed = Detector.load(tmp_path / "d.npz")
    np.testing.assert_array_equal(
        original.process(data[120:]).score, resumed.process(data[120:]).score
    )


def test_wrong_width_is_refused():
    rng = np.random.default_rng(9)
    detector = warmed(rng)
    with pytest.raises(ValueError, match="fitted with 3"):
        detector.process(np.zeros((2, 4)))


def test_fingerprint_names_the_fields(tmp_path):
    detector = Detector(warmup=10)
    assert detector.fingerprint(["a", "b"])["fields"] == ["a", "b"]
    detector.save(tmp_path / "d.npz")
    from streamgmm.checkpoint import load_state

    with pytest.raises(CheckpointMismatchError):
        load_state(
            tmp_path / "d.npz",
            kind="Detector",
            fingerprint=Detector(warmup=10, covariance_type="full").fingerprint(),
        )


def test_attack_inside_the_warmup_does_not_hide_later_attacks():
    rng = np.random.default_rng(10)
    attack = np.array([[40.0, -40.0, 40.0]])
    warmup = np.concatenate([clusters(rng, 290), np.repeat(attack, 10, axis=0)])
    detector = Detector(warmup=300, random_state=0)
    detector.process(warmup[rng.permutation(300)])
    for _ in range(15):  # until the inliers' own estimate has taken over from the prior
        detector.process(clusters(rng, 100))
    result = detector.process(np.concatenate([clusters(rng, 500), attack]))
    assert result.is_outlier[-1], "the attack seen in the warm-up went unflagged"
    assert result.score[-1] > result.threshold[-1]
    assert result.is_outlier[:-1].mean() < 0.01


def test_far_out_events_during_the_warmup_are_flagged_and_not_learnt():
    rng = np.random.default_rng(11)
    detector = Detector(warmup=300, random_state=0)
    first = detector.process(clusters(rng, 100))
    assert not first.is_outlier.any()
    result = detector.process(np.concatenate([clusters(rng, 50), [[40.0, -40.0, 40.0]]]))
    assert result.is_warmup.all() and result.is_outlier.tolist() == [False] * 50 + [True]
    assert result.score[-1] > result.threshold[-1] > result.score[:-1].max()
    assert detector.model._warm.count == 150  # the outlier is not part of the warm-up
    detector.process(clusters(rng, 200 + detector.micro_batch))
    assert detector.is_warmed_up and detector.model.n_seen_ == 299 + detector.micro_batch


@pytest.mark.parametrize("n_attacks", [1, 3])
def test_anomalies_among_the_first_events_win_no_component(n_attacks):
    # the first 50 events come before anything can judge them: they are learnt
    attack = np.array([40.0, -40.0] * 4)
    positions = [3, 17, 31][:n_attacks]

    def run(**kwargs):
        rng = np.random.default_rng(12)
        first = clusters(rng, 300, d=8)
        first[positions] = attack
        detector = Detector(warmup=300, random_state=0, **kwargs)
        result = detector.process(first)
        assert not result.is_outlier[positions].any()
        later = detector.process(np.concatenate([clusters(rng, 2000, d=8), [attack]]))
        return detector, later

    unguarded, later = run(min_component_share=0.0)
    assert unguarded.model.weights_.min() < 0.01, "the attack won no component of its own"
    if n_attacks == 3:
        assert not later.is_outlier[-1], (
            "the case this guards against: the attack's own component makes it look normal"
        )
    detector, later = run()
    assert detector.n_warmup_dropped == n_attacks
    assert detector.model.weights_.min() >= 0.01
    assert later.is_outlier[-1] and later.score[-1] > later.threshold[-1]
    assert later.is_outlier[:-1].mean() < 0.01


def test_min_component_share_survives_a_checkpoint(tmp_path):
    detector = Detector(warmup=300, random_state=0, min_component_share=0.03)
    detector.process(clusters(np.random.default_rng(13), 400))
    detector.save(tmp_path / "d.npz")
    restored = Detector.load(tmp_path / "d.npz")
    assert restored.min_component_share == 0.03
    assert restored.n_warmup_dropped == detector.n_warmup_dropped


def test_outlier_scores_are_the_scores_process_gives_and_learn_nothing():
    rng = np.random.default_rng(21)
    detector = warmed(rng)
    batch = np.concatenate([clusters(rng, 20), [[30.0, -30.0, 30.0]]])
    before = detector.get_state()
    scores = detector.outlier_scores(batch)
    assert detector.n_seen == before["n_seen"]  # nothing learnt
    result = detector.process(batch)
    np.testing.assert_allclose(scores, result.score, rtol=1e-10)
    assert scores.argmax() == len(batch) - 1  # higher is more anomalous
    assert not hasattr(detector, "score")  # one name, one meaning: score is the model's mean


def test_a_detector_pickles_and_its_copy_answers_the_same():
    import pickle

    rng = np.random.default_rng(22)
    detector = warmed(rng)
    copy = pickle.loads(pickle.dumps(detector))
    batch = np.concatenate([clusters(rng, 200), [[30.0, -30.0, 30.0]]])
    np.testing.assert_array_equal(copy.outlier_scores(batch), detector.outlier_scores(batch))
    ours, theirs = detector.process(batch), copy.process(batch)
    np.testing.assert_array_equal(theirs.score, ours.score)
    np.testing.assert_array_equal(theirs.is_outlier, ours.is_outlier)
