"""Per-entity models (``Detector.process(X, keys=...)``, streamgmm/entities.py), on
generated host streams (tests/support/hosts.py)."""

import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from streamgmm.detector import Detector
from streamgmm.entities import EntityTable
from tests.support.hosts import host_stream


@pytest.fixture(scope="module")
def hosts():
    return host_stream(80_000, n_hosts=400, d=4, seed=11)


@pytest.fixture(scope="module")
def keyed_and_keyless(hosts):
    keyed = Detector(random_state=0)
    keyless = Detector(random_state=0)
    return keyed, keyed.process(hosts.X, keys=hosts.keys), keyless.process(hosts.X)


def judged(hosts):
    """After the first quarter (the hosts have an own model), gross anomalies apart."""
    return (np.arange(len(hosts.X)) >= len(hosts.X) // 4) & (hosts.kind != 2)


def test_keyed_scores_find_host_anomalies_the_population_misses(hosts, keyed_and_keyless):
    _, keyed, keyless = keyed_and_keyless
    sel = judged(hosts)
    truth = hosts.kind[sel] == 1
    auc_keyed = roc_auc_score(truth, keyed.score[sel])
    auc_keyless = roc_auc_score(truth, keyless.score[sel])
    assert auc_keyed >= 0.97, auc_keyed
    assert auc_keyed >= auc_keyless + 0.15, (auc_keyed, auc_keyless)
    assert keyed.is_outlier[sel][truth].mean() >= 0.80
    assert keyed.is_outlier[sel][~truth].mean() <= 0.005
    # the entities' rows say what their own model expected: near the host's level
    assert np.isfinite(keyed.surprise).all() and np.isfinite(keyed.expected).all()


def test_gross_anomalies_of_new_hosts_are_flagged_from_their_first_event(keyed_and_keyless):
    detector = keyed_and_keyless[0]
    new = host_stream(2_000, n_hosts=400, d=4, gross_rate=0.1, seed=12, key_prefix="new")
    result = detector.process(new.X, keys=new.keys)
    first = (new.position < 5) & (new.kind == 2)
    assert first.sum() >= 50
    assert result.is_outlier[first].mean() >= 0.9
    normal = new.kind == 0
    assert result.is_outlier[normal].mean() <= 0.02


def small(seed=0, n=3000, hosts=40):
    return host_stream(n, n_hosts=hosts, d=3, seed=seed, host_anomaly_rate=0.01)


def test_no_keys_and_none_keys_are_the_population_exactly():
    s = small()
    plain = Detector(warmup=200, random_state=0).process(s.X)
    nones = Detector(warmup=200, random_state=0).process(s.X, keys=[None] * len(s.X))
    np.testing.assert_array_equal(plain.score, nones.score)
    np.testing.assert_array_equal(plain.is_outlier, nones.is_outlier)


def test_a_key_that_is_none_or_empty_is_scored_by_the_population_and_not_held():
    s = small()
    keys = list(s.keys)
    keys[::3] = [None] * len(keys[::3])
    keys[1::7] = [""] * len(keys[1::7])  # an empty id names no entity either
    detector = Detector(warmup=200, random_state=0, min_entity_events=5)
    result = detector.process(s.X, keys=keys)
    assert len(detector.entities) == len({k for k in keys if k})
    assert "" not in detector.entities and "None" not in detector.entities
    assert np.isfinite(result.score).all()


@pytest.mark.parametrize("covariance_type", ["diag", "full", "spherical"])
def test_keyed_scores_do_not_depend_on_the_cut(covariance_type):
    s = small(seed=1)
    offsets = np.arange(len(s.X))

    def run(cut):
        detector = Detector(
            warmup=200, random_state=0, min_entity_events=5, covariance_type=covariance_type
        )
        parts = [
            detector.process(
                s.X[i : i + cut], keys=s.keys[i : i + cut], offsets=offsets[i : i + cut]
            )
            for i in range(0, len(s.X), cut)
        ]
        return (
            detector,
            np.concatenate([p.score for p in parts]),
            np.concatenate([p.is_outlier for p in parts]),
        )

    reference, scores, flags = run(len(s.X))
    assert reference.entities.count.sum() > 0
    for cut in (1, 7, 64, 500):
        detector, other_scores, other_flags = run(cut)
        # the warm-up's running sums differ in the last bit with the cut, as without keys
        np.testing.assert_allclose(other_scores, scores, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(other_flags, flags)
        np.testing.assert_allclose(detector.entities.n, reference.entities.n, rtol=1e-5)


def test_a_burst_of_one_off_keys_keeps_the_busy_entities_and_memory_flat():
    rng = np.random.default_rng(0)
    s = host_stream(6_000, n_hosts=50, d=3, seed=2, host_anomaly_rate=0.0, gross_rate=0.0)
    detector = Detector(warmup=200, random_state=0, max_entities=2_000)
    detector.process(s.X, keys=s.keys)
    busy = set(s.keys)
    n_burst, chunk = 100_000, 20_000
    tracemalloc.start()
    peaks = []
    for start in range(0, n_burst, chunk):
        # half the traffic: one-off keys; the other half: the busy hosts, as before
        host = rng.integers(0, len(s.X), chunk)
        X = np.concatenate([s.X[host], s.X[host]])
        keys = [s.keys[h] for h in host] + [f"once-{start + i}" for i in range(chunk)]
        order = rng.permutation(2 * chunk)
        detector.process(X[order], keys=[keys[i] for i in order])
        peaks.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    table = detector.entities
    assert busy <= set(table.index), busy - set(table.index)
    assert len(table) <= 2_000
    assert table.n_evicted["cap"] >= n_burst - 2_000
    assert table.capacity <= 4_096
    assert peaks[-1] < peaks[1] * 1.2 + 1e6  # flat: no growth with the keys seen


def test_idle_entities_expire():
    s = small()
    detector = Detector(warmup=200, random_state=0, idle_ttl_s=60.0)
    detector.process(s.X[:1992], keys=s.keys[:1992], now=1000.0)  # whole micro-batches
    held = len(detector.entities)
    detector.mark_entities_saved()  # in a store: their removal is to be written
    detector.process(s.X[1992:2248], keys=["late"] * 256, now=1100.0)
    assert detector.expire_idle(now=1100.0) == held
    assert set(detector.entities.index) == {"late"}
    assert detector.entities.n_evicted == {"cap": 0, "idle": held}
    changed, removed = detector.entity_changes()
    assert len(removed) == held and set(changed) == {"late"}


def test_rows_looked_up_when_scoring_are_looked_up_again_after_an_eviction():
    """A micro-batch's rows, found when its first events were scored, are not trusted
    when it is learnt if entities were dropped in between: a freed row may be reused."""
    s = small()
    detector = Detector(warmup=200, random_state=0, idle_ttl_s=60.0)
    detector.process(s.X[:1992], keys=s.keys[:1992], now=1000.0)  # whole micro-batches
    host = s.keys[0]
    own = np.array([i for i in range(1992) if s.keys[i] == host])
    X = s.X[np.resize(own, 100)]
    first = detector.process(X, keys=[host] * 100, now=1100.0)  # scored, not learnt yet
    assert first.threshold[0] == detector.entity_threshold.value  # by its own model
    assert detector.expire_idle(now=1100.0) == 40  # every host, this one included
    second = detector.process(s.X[2092:2248], keys=["late"] * 156, now=1100.0)
    table = detector.entities
    assert set(table.index) == {host, "late"}
    assert all(table.keys[row] == key for key, row in table.index.items())
    assert table.count[table.index[host]] == (~first.is_outlier).sum() > 90
    assert table.count[table.index["late"]] == (~second.is_outlier).sum() > 140
    assert not table.stats[table._free].any()  # freed rows hold nothing


def test_statistics_decay_with_the_half_life():
    table = EntityTable(n_components=1, n_features=1)
    rows = table.rows_for(np.array(["a"]), insert=True)
    z = np.ones((10, 1))

    def learn():
        table.learn(
            np.repeat(rows, 10),
            z,
            np.ones((10, 1)),
            np.ones(10, bool),
            np.zeros(10, bool),
            half_life=100,
            regime_share=0.25,
            now=0.0,
        )

    learn()
    assert table.n[0, 0] == 10
    table.clock += 200  # two half-lives
    np.testing.assert_allclose(table.decay_factor(rows, 100), [0.25])
    learn()
    np.testing.assert_allclose(table.n[0, 0], 10 * 0.25 + 10)
    np.testing.assert_allclose(table.m1[0, 0, 0], 10 * 0.25 + 10)


@pytest.mark.parametrize("d", [5, 40])  # K d under and over _DENSE_SUMS_MAX: both sums
def test_learn_sums_each_entitys_events_as_one_at_a_time_would(d):
    """A hot entity with half the micro-batch, entities of one event, an event too large
    to square that is not learnt: the grouped sums equal a loop over the events."""
    rng = np.random.default_rng(3)
    K, n = 3, 256
    table = EntityTable(n_components=K, n_features=d)
    keys = np.array(["hot"] * 128 + [f"k{i}" for i in rng.integers(0, 90, n - 128)])
    keys = keys[rng.permutation(n)]
    rows = table.rows_for(keys, insert=True)
    Z = rng.normal(size=(n, d))
    Z[7] = 1e200
    resp = rng.dirichlet(np.ones(K), size=n)
    learn = rng.random(n) < 0.9
    learn[7] = False
    flagged = ~learn
    table.learn(rows, Z, resp, learn, flagged, None, regime_share=2.0, now=5.0)
    n_ref = np.zeros((table.capacity, K))
    m1_ref = np.zeros((table.capacity, K, d))
    m2_ref = np.zeros((table.capacity, K, d))
    for i in np.flatnonzero(learn):
        n_ref[rows[i]] += resp[i]
        m1_ref[rows[i]] += resp[i][:, None] * Z[i]
        m2_ref[rows[i]] += resp[i][:, None] * Z[i] ** 2
    np.testing.assert_allclose(table.n, n_ref, rtol=1e-6)
    np.testing.assert_allclose(table.m1, m1_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(table.m2, m2_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(table.count, np.bincount(rows[learn], minlength=table.capacity))
    hot = table.index["hot"]
    assert table.activity[hot] == 128 and table.last_seen[hot] == 5.0
    assert np.isfinite(table.stats).all()


def test_a_detector_with_half_life_forgets_entity_statistics():
    s = small(n=4000)
    detector = Detector(warmup=200, random_state=0, half_life=500)
    detector.process(s.X, keys=s.keys)
    table = detector.entities
    assert table.n.sum() < 0.5 * table.count.sum()  # older events weigh less


def test_save_and_load_round_trip_with_entities(tmp_path):
    s = small(seed=3)
    detector = Detector(warmup=200, random_state=0, min_entity_events=5)
    detector.process(s.X[:2100], keys=s.keys[:2100])  # ends inside a micro-batch
    path = tmp_path / "state.npz"
    detector.save(path)
    loaded = Detector.load(path)
    assert set(loaded.entities.index) == set(detector.entities.index)
    a = detector.process(s.X[2100:], keys=s.keys[2100:])
    b = loaded.process(s.X[2100:], keys=s.keys[2100:])
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.is_outlier, b.is_outlier)


def test_entity_records_round_trip_and_learn_from():
    s = small(seed=4)
    detector = Detector(warmup=200, random_state=0, min_entity_events=5)
    detector.process(s.X[:1992], keys=s.keys[:1992])  # whole micro-batches
    changed, removed = detector.entity_changes()
    assert set(changed) == set(detector.entities.index) and removed == []
    for state in changed.values():
        assert all(np.asarray(v).dtype.kind in "biuf" for v in state.values())
    detector.mark_entities_saved()
    assert detector.entity_changes() == ({}, [])
    head = Detector.from_state(detector.get_state(entities=False))
    assert len(head.entities) == 0
    key = s.keys[1992]
    head.load_entities(changed, learn_from={key: 10**9})
    assert set(head.entities.index) == set(changed)
    before = head.entities.count[head.entities.index[key]]
    n = 512
    head.process(s.X[1992 : 1992 + n], keys=s.keys[1992 : 1992 + n], offsets=np.arange(n))
    assert head.entities.count[head.entities.index[key]] == before  # learnt nothing
    assert head.heaviest_entities(3)[0][1] >= head.heaviest_entities(3)[2][1]


def test_a_host_whose_level_moves_for_good_is_not_locked_out():
    rng = np.random.default_rng(5)
    s = host_stream(60_000, n_hosts=100, d=4, seed=5, host_anomaly_rate=0.0, gross_rate=0.0)
    X = s.X.copy()
    mine = np.flatnonzero(s.host == 0)
    shift_at = mine[len(mine) // 2]
    moved = mine[mine >= shift_at]
    # host 0 takes another host's level of the population: normal for it, new for host 0
    other = np.flatnonzero(s.host == 1)[0]
    X[moved] = X[other] + 0.02 * np.abs(X[other]) * rng.normal(size=(len(moved), 4))
    detector = Detector(random_state=0)
    result = detector.process(X, keys=s.keys)
    flagged = result.is_outlier[moved]
    assert flagged[:20].mean() >= 0.5  # the shift itself is found
    assert flagged.sum() <= detector.min_entity_events + 100
    assert not flagged[-100:].any()


def test_a_host_unusual_for_the_population_from_its_first_event_is_not_locked_out():
    """Its events are all flagged by the population, which scores it while it is young:
    not learnt, it never became old enough for its own model (measured on a generated
    seed: two such hosts flagged on every event, 0.58% of normal events flagged)."""
    s = host_stream(40_000, n_hosts=100, d=4, seed=7, host_anomaly_rate=0.0, gross_rate=0.0)
    X, keys = s.X.copy(), list(s.keys)
    odd = np.flatnonzero(s.host == 0)
    X[odd, 2] *= 6.0  # its level far from every kind's on one field (its noise as large)
    X[odd, 2] -= 5.0 * (X[odd, 2] / 6.0 - s.X[odd, 2].mean())
    detector = Detector(random_state=0)
    flagged = detector.process(X, keys=keys).is_outlier[odd]
    assert flagged[:10].all()  # unusual it is, and said so
    assert flagged.sum() <= 100
    assert not flagged[-100:].any()
    others = np.flatnonzero(s.host != 0)
    assert (
        detector.process(
            X[others[-5000:]], keys=[keys[i] for i in others[-5000:]]
        ).is_outlier.mean()
        < 0.005
    )


def test_a_burst_of_gross_anomalies_from_one_host_is_flagged_then_forgotten():
    rng = np.random.default_rng(8)
    s = host_stream(40_000, n_hosts=100, d=4, seed=8, host_anomaly_rate=0.0, gross_rate=0.0)
    X = s.X.copy()
    mine = np.flatnonzero(s.host == 0)
    burst = mine[200:240]  # 40 events of garbage, then the host is itself again
    X[burst] = rng.uniform(-1e3, 1e3, size=(len(burst), 4))
    detector = Detector(random_state=0)
    flagged = detector.process(X, keys=s.keys).is_outlier
    assert flagged[burst[:20]].all()
    after = mine[240:]
    assert flagged[after].sum() <= 60
    assert not flagged[after[-100:]].any()


@pytest.mark.parametrize("d", [30, 300])
def test_wide_events_are_not_flagged_while_the_entities_are_young(d):
    """50 keys of one population (each key's events spread over its three clusters): a
    young model's variances, from n events, bias its scores up by about d / n nats (with
    neither fix, at d = 300, 20% of the stream was flagged until the entities had about
    100 events; at d = 30, 4% for a while). The own models wait for sqrt(8 d) events and
    their variances are unbiased for the squared distances."""
    rng = np.random.default_rng(0)
    n = 6000
    X = rng.normal(size=(n, d)) + rng.integers(0, 3, n)[:, None] * 3.0
    keys = [f"h{i}" for i in rng.integers(0, 50, n)]
    detector = Detector(random_state=0)
    assert detector.own_model_events == detector.min_entity_events  # before any event
    flagged = detector.process(X, keys=keys).is_outlier
    assert detector.own_model_events == max(
        detector.min_entity_events, int(np.ceil(np.sqrt(8 * d)))
    )
    assert max(flagged[i : i + 1000].mean() for i in range(1000, n, 1000)) < 0.02
    assert flagged[1000:].mean() < 0.01
    table = detector.entities
    rows = table.rows_for(np.array(sorted(set(keys))))
    assert (table.count[rows] >= detector.own_model_events).all()  # their own models score


def test_values_too_large_are_outliers_never_learnt():
    s = small()
    detector = Detector(warmup=200, random_state=0, min_entity_events=5)
    detector.process(s.X[:1992], keys=s.keys[:1992])  # whole micro-batches
    row = detector.entities.index[s.keys[0]]
    n_before = detector.entities.n[row].copy()
    huge = np.tile(s.X[:1], (10, 1))  # too few to reset the entity (see the level shift)
    # past float64's squares, past float32's (the entities score in float32), past 1e4 sd
    huge[:, 0] = [1e308, -1e308, 1e101, 1e30, -1e30, 3e19, 1e12, 5e5, 2e4, 1e300]
    rest = s.X[1992:2238]  # the micro-batch completed by events without a key
    result = detector.process(
        np.concatenate([huge, rest]), keys=[s.keys[0]] * 10 + [None] * len(rest)
    )
    assert result.is_outlier[:10].all()
    assert np.isfinite(result.score).all() and (result.score[:10] > result.threshold[:10]).all()
    assert np.isfinite(result.surprise).all() and (result.surprise[:10].argmax(axis=1) == 0).all()
    assert detector.n_pending == 0
    np.testing.assert_array_equal(detector.entities.n[row], n_before)
    assert np.isfinite(detector.entities.m2).all()


def test_entity_arrays_follow_new_components():
    table = EntityTable(n_components=3, n_features=2)
    rows = table.rows_for(np.array(["a", "b"]), insert=True)
    table.n[rows] = [[1, 2, 3], [4, 5, 6]]
    table.grow_components(np.array([0, 2]), 2)
    assert table.n_components == 4
    np.testing.assert_array_equal(table.n[rows], [[1, 3, 0, 0], [4, 6, 0, 0]])
    assert table.m1.shape[1:] == (4, 2)


def test_a_regime_change_with_keys_keeps_scoring():
    s = small(n=4000)
    detector = Detector(warmup=200, random_state=0, patience=1000, min_entity_events=5)
    detector.process(s.X[:3000], keys=s.keys[:3000])
    k = detector.model.n_components_
    X = s.X[3000:] + 50.0 * s.X.std(axis=0)  # the whole traffic moves: a new regime
    result = detector.process(np.concatenate([X, X]), keys=s.keys[3000:] * 2)
    assert detector.n_regime_changes >= 1
    assert detector.entities.n.shape[1] == detector.model.n_components_ >= k
    assert np.isfinite(result.score).all()


def test_score_per_entity_and_inspect_the_entities(tmp_path, capsys):
    import json

    from streamgmm.cli import main

    s = host_stream(12_000, n_hosts=40, d=3, seed=6)
    events = tmp_path / "hosts.jsonl"
    with events.open("w") as f:
        for key, x in zip(s.keys, s.X.tolist(), strict=True):
            f.write(json.dumps({"host": key, "a": x[0], "b": x[1], "c": x[2]}) + "\n")
    outputs = {}
    for flag in ([], ["--entities"]):
        out = tmp_path / f"scored{len(flag)}.jsonl"
        checkpoint = tmp_path / f"model{len(flag)}.npz"
        argv = ["score", str(events), "--fields", "a,b,c", "--key", "host", "-o", str(out)]
        assert main([*argv, *flag, "--checkpoint", str(checkpoint)]) == 0
        outputs[bool(flag)] = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    keyed, keyless = np.array(outputs[True]), np.array(outputs[False])
    assert len(keyed) == len(keyless) == len(s.X)
    late = (np.arange(len(s.X)) > 3000) & (s.kind != 2)
    truth = s.kind[late] == 1
    assert roc_auc_score(truth, keyed[late]) > roc_auc_score(truth, keyless[late]) + 0.15
    assert main(["inspect", str(tmp_path / "model1.npz")]) == 0
    text = capsys.readouterr().out
    assert "entities: 40  evicted: 0 (cap), 0 (idle)" in text and "host-" in text
    assert main(["inspect", "--json", str(tmp_path / "model0.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["entities"] == 0
    bad = ["score", str(events), "--fields", "a,b,c", "--entities"]
    assert main(bad) == 2
    assert "--key" in capsys.readouterr().err


def test_the_population_learns_exactly_as_without_keys():
    s = small(seed=7, n=4000)
    keyed = Detector(warmup=200, random_state=0, min_entity_events=5)
    keyless = Detector(warmup=200, random_state=0)
    keyed_result = keyed.process(s.X, keys=s.keys)
    keyless.process(s.X)
    np.testing.assert_array_equal(keyed.model.means_, keyless.model.means_)
    np.testing.assert_array_equal(keyed.model.covariances_, keyless.model.covariances_)
    assert keyed.threshold.value == keyless.threshold.value
    # while the entities' own threshold sits far below the population's
    assert keyed.entity_threshold.value < keyed.threshold.value
    assert (keyed_result.threshold[-100:] == keyed.entity_threshold.value).any()


def test_the_warmup_events_teach_their_entities():
    """A partition's first ``warmup`` events are not lost to its entities: those of the
    warm-up are learnt by their hosts when it ends."""
    s = host_stream(n_events=3000, n_hosts=100, d=4, seed=7, host_anomaly_rate=0, gross_rate=0)
    detector = Detector(warmup=2500, random_state=0, min_entity_events=20)
    result = detector.process(s.X, keys=s.keys)
    hosts = sorted(set(s.keys))
    learnt = detector.entities.count[[detector.entities.index[k] for k in hosts]]
    in_warmup = np.array([s.keys[:2500].count(k) for k in hosts])
    assert (learnt >= in_warmup).all()  # every warm-up event taught its host, and more since
    learnt_so_far = len(s.X) - detector.n_pending  # all but the micro-batch in hand
    assert learnt.sum() == (~result.is_outlier[:learnt_so_far]).sum()
    keyless = Detector(warmup=2500, random_state=0)
    keyless.process(s.X)
    assert keyless.model.n_seen_ == detector.model.n_seen_  # the population learns the same


def test_a_checkpoint_inside_the_warmup_keeps_its_keys(tmp_path):
    s = small(seed=4)
    whole = Detector(warmup=400, random_state=0, min_entity_events=5)
    expected = whole.process(s.X, keys=s.keys)
    detector = Detector(warmup=400, random_state=0, min_entity_events=5)
    first = detector.process(s.X[:150], keys=s.keys[:150])  # inside the warm-up
    path = tmp_path / "warm.npz"
    detector.save(path)
    rest = Detector.load(path).process(s.X[150:], keys=s.keys[150:])
    np.testing.assert_allclose(
        np.concatenate([first.score, rest.score]), expected.score, rtol=1e-9, atol=1e-9
    )
    np.testing.assert_array_equal(
        np.concatenate([first.is_outlier, rest.is_outlier]), expected.is_outlier
    )


def test_host_anomalies_right_after_the_warmup_are_judged_by_the_hosts():
    """The first micro-batch after the warm-up: its entities' threshold is in force (it
    starts from the population's anchored one), and their models know the warm-up."""
    s = host_stream(n_events=3000, n_hosts=20, d=4, seed=8, host_anomaly_rate=0, gross_rate=0)
    detector = Detector(warmup=2000, random_state=0, min_entity_events=20)
    detector.process(s.X[:2000], keys=s.keys[:2000])
    # started from the hosts' own models' scores of the warm-up, below the population's
    assert detector.entity_threshold.value < detector.threshold.value
    levels = {k: s.X[:2000][np.array(s.keys[:2000]) == k].mean(axis=0) for k in set(s.keys)}
    odd = np.array([levels[k] for k in s.keys[2000:2100]])
    spread = s.X[:2000].std(axis=0)
    odd[:, 0] += 0.5 * spread[0]  # normal for the population, far for the host
    result = detector.process(odd, keys=s.keys[2000:2100])
    assert result.is_outlier.mean() >= 0.9
