"""The benchmarks' core functions on tiny inputs, so the scripts cannot rot.

Seconds in all, no shared data needed: every input is synthetic. Each test
checks a result, not only that the code runs.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


bench_common = _load("bench_common")
online_vs_batch = _load("online_vs_batch")
speed = _load("speed")
detection = _load("detection")
drift = _load("drift")
run_all = _load("run_all")
end_to_end = _load("end_to_end")
trust = _load("trust")


def test_online_one_pass_matches_batch_em_on_an_easy_mixture():
    result = online_vs_batch.compare(
        d=2, K=2, covariance_type="full", seed=0, n_train=4_000, n_test=2_000, batch_size=500
    )
    assert abs(result.difference) < 0.1
    assert result.online > result.oracle - 0.1
    assert abs(result.polished - result.online) < 0.1


def test_concentric_rings_are_recovered_where_kmeans_fails(tmp_path):
    case = online_vs_batch.concentric(seed=0, n_per_ring=2_000)
    assert (case.errors() <= online_vs_batch.RADIUS_TOLERANCE).all(), case.radii
    assert case.ari_gmm > case.ari_kmeans + 0.3

    picture = tmp_path / "concentric.png"
    online_vs_batch.plot_concentric(case, picture, n_points=500)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.stat().st_size < 200_000


def test_speed_batch_timings_are_interleaved_and_positive():
    timing = speed.time_batches(
        "full", batch_size=200, n_train_batches=5, n_timed_batches=3, rounds=2, blas_limit=1
    )
    assert len(timing.online) == len(timing.sklearn) == len(timing.online_score) == 6
    assert min(timing.online + timing.sklearn) > 0
    assert np.isfinite(timing.ratio) and timing.ratio > 0


def test_speed_river_path_measures_both_models_on_the_same_stream():
    timing = speed.time_events(n_events=700, chunk=350, repeats=2)
    assert len(timing.gmm_chunks) == len(timing.hst_chunks) == 4
    assert len(timing.gmm_score) == len(timing.hst_learn) == 2
    assert timing.gmm_rate > 0 and timing.hst_rate > 0
    row = speed.event_rows([timing])[0]
    assert float(row[3]) == pytest.approx(timing.ratio, abs=0.01)


def _labelled_set(n: int = 2_000, share: float = 0.02, seed: int = 0):
    """Two Gaussian clusters in 3-D, and far-away anomalies after the warm-up."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0]])
    X = centres[rng.integers(2, size=n)] + rng.normal(size=(n, 3))
    y = np.zeros(n, dtype=np.int64)
    anomalies = rng.choice(np.arange(700, n), size=int(share * n), replace=False)
    directions = rng.normal(size=(len(anomalies), 3))
    X[anomalies] = 2.0 + 10.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    y[anomalies] = 1
    return X, y


def test_detection_auc_is_high_on_an_easy_synthetic_set():
    X, y = _labelled_set()
    result = detection.evaluate_set("easy", X, y, seeds=(0,), chunk=500)
    assert result.auc[detection.DEFAULT] > 0.9
    assert result.auc["GMMDetector(random_state=0)"] > 0.9
    assert 0.0 <= result.auc[detection.HST] <= 1.0
    assert set(result.non_finite.values()) == {0}
    assert result.rate[detection.DEFAULT] > 0

    summary, targets = detection.summarise([result])
    assert "GMMDetector()" in summary
    assert [t.met for t in targets][:2] == [
        result.difference >= detection.MEAN_MARGIN,
        result.difference >= -detection.WORST_GAP,
    ]


def test_detection_reads_npz_sets_and_says_when_data_is_missing(tmp_path):
    X, y = _labelled_set(n=800)
    np.savez(tmp_path / "tiny.npz", X=X, y=y)
    assert [p.stem for p in detection.list_sets(tmp_path)] == ["tiny"]
    X_read, y_read = detection.load_set(tmp_path / "tiny.npz", max_rows=100)
    assert X_read.shape == (100, 3) and y_read.shape == (100,)

    report = detection.main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path)])
    assert report.targets == []
    assert "Data not found" in (tmp_path / "detection.md").read_text()


def test_auc_is_undefined_with_one_class_and_survives_infinite_scores():
    assert np.isnan(detection.auc(np.zeros(5, dtype=int), np.arange(5.0)))
    scores = np.array([0.0, 1.0, np.inf, 2.0])
    assert detection.auc(np.array([0, 0, 1, 0]), scores) == 1.0


def test_drift_detector_recovers_within_the_target_after_a_shift():
    X = drift.shifted_stream(before=6_000, after=4_000)
    run = drift.run_detector(X, shift_at=6_000, half_life=1_000)
    assert run.log_likelihood[6_000:6_100].mean() < run.level - 10  # the shift is visible
    events = run.recovery()
    assert events is not None and events <= drift.TARGET_EVENTS
    assert run.share_within_after_recovery() > 0.9


def test_markdown_tables_escape_pipes_and_summary_collects_targets():
    table = bench_common.markdown_table(["a", "b"], [["x | y", "1.5"]])
    assert "x \\| y" in table and table.splitlines()[1] == "|---|---:|"
    report = bench_common.Report(
        "demo", "Demo", "## Part\n\ntext", [bench_common.Target("goal", True, "ok")]
    )
    text = run_all.summary([report], {"broken": "ValueError: x"}, quick=True)
    assert "| demo | goal | met | ok |" in text
    assert "| broken | benchmark | FAILED | ValueError: x |" in text
    assert "### Part" in text


@pytest.mark.parametrize("spread", ["wide", "tight"])
def test_synthetic_mixtures_have_the_requested_shape(spread):
    rng = np.random.default_rng(0)
    mixture = bench_common.rotated_ellipses(3, 4, rng, mean_spread=spread)
    X, labels = mixture.sample(1_000, rng)
    assert X.shape == (1_000, 3) and set(np.unique(labels)) <= set(range(4))
    assert np.isclose(mixture.weights.sum(), 1.0)
    assert np.all(np.linalg.eigvalsh(mixture.covariances) > 0)
    assert np.isfinite(mixture.log_likelihood(X)).all()


def test_delay_quantiles_interpolate_within_buckets_as_prometheus_does():
    buckets = np.array([[0.01, 10.0], [0.05, 60.0], [0.1, 100.0], [np.inf, 100.0]])
    assert end_to_end.histogram_quantile(0.5, buckets) == pytest.approx(0.042)
    assert end_to_end.histogram_quantile(0.99, buckets) == pytest.approx(0.09875)
    assert end_to_end.histogram_quantile(0.05, buckets) == pytest.approx(0.005)
    beyond = np.array([[0.1, 90.0], [np.inf, 100.0]])  # the last finite bound, as Prometheus
    assert end_to_end.histogram_quantile(0.99, beyond) == 0.1


def test_end_to_end_reports_the_median_and_range_of_its_turns():
    assert end_to_end.spread([0.7, 0.62, 0.81], ".2f") == "0.70 (0.62-0.81)"
    assert end_to_end.spread([123456.0], ",.0f") == "123,456"


def test_trust_stream_scores_covers_every_row_whatever_the_cut():
    X, y = _labelled_set(n=1_200)
    params = {"warmup": 200}
    for cut in (8, 500, 5_000, "river"):
        scores = trust.stream_scores(trust.factory(params, 0, cut), X, cut)
        assert scores.shape == (1_200,)
        assert np.isfinite(scores).all()
        assert trust.auc(y, scores) > 0.9, cut
    # a plain Detector is driven through GMMDetector on the river path
    from streamgmm.detector import Detector

    wrapped = trust.stream_scores(lambda: Detector(warmup=200, random_state=0), X, "river")
    direct = trust.stream_scores(trust.factory(params, 0, "river"), X, "river")
    np.testing.assert_allclose(wrapped, direct)
    with pytest.raises(ValueError, match="positive"):
        trust.stream_scores(lambda: Detector(), X, 0)


def test_trust_cut_table_spreads_and_targets():
    X, y = _labelled_set(n=1_000)
    result = trust.evaluate_cuts("easy", X, y, {"warmup": 200}, seeds=(0, 1), cuts=(64, "river"))
    assert result.auc.shape == (2, 2) and result.defined
    assert np.all(result.auc > 0.9)
    spread = result.auc.max(axis=1) - result.auc.min(axis=1)
    np.testing.assert_allclose(result.cut_spread, spread)
    np.testing.assert_allclose(result.path_means, result.auc.mean(axis=0))

    targets = trust.cut_targets([result])
    assert len(targets) == 3
    assert targets[0].met == bool(spread.max() <= trust.CUT_TOLERANCE)
    assert targets[1].met == bool(result.auc.mean(axis=0).min() >= trust.MEAN_FLOOR)
    assert "| easy | 1 |" in trust.cut_tables([result])

    # the worker processes get one seed each: merged, the same table
    parts = [
        trust.evaluate_cuts("easy", X, y, {"warmup": 200}, seeds=(s,), cuts=(64, "river"))
        for s in (0, 1)
    ]
    (merged,) = trust.merge_seeds(parts)
    assert merged.seeds == (0, 1)
    np.testing.assert_array_equal(merged.auc, result.auc)


def test_trust_pool_flags_a_rare_set_far_below_hst():
    rows = [
        trust.PoolResult(
            "fine", 100, 2, 0.05, ours=0.90, hst=0.85, isolation_forest=0.91, seconds=0
        ),
        trust.PoolResult(
            "bad", 100, 2, 0.05, ours=0.60, hst=0.80, isolation_forest=0.70, seconds=0
        ),
        trust.PoolResult(
            "common", 100, 2, 0.30, ours=0.50, hst=0.80, isolation_forest=0.60, seconds=0
        ),
    ]
    text, targets = trust.pool_table(rows)
    assert [r.name for r in rows if r.below_hst] == ["bad"]
    assert "| bad | 100 | 2 | 5.00% | 0.600 | 0.800 | 0.700 | -0.200 | -0.100 | yes |" in text
    assert targets[0].met is False  # mean 0.667 < 0.737 - 0.02
    assert targets[1].met is False and "bad -0.200" in targets[1].detail

    X, y = _labelled_set(n=800)
    pool = trust.evaluate_pool("easy", X, y, {"warmup": 200})
    assert pool.ours > 0.9 and pool.isolation_forest > 0.9 and 0 <= pool.hst <= 1


def test_trust_main_runs_sets_in_worker_processes(tmp_path):
    X, y = _labelled_set(n=800)
    np.savez(tmp_path / "tiny.npz", X=X, y=y)
    report = trust.main(
        [
            "--data",
            str(tmp_path),
            "--sets",
            "tiny",
            "--cuts",
            "64",
            "river",
            "--seeds",
            "0",
            "--params",
            '{"warmup": 100}',
            "--jobs",
            "2",
            "--out",
            str(tmp_path),
            "--json",
            str(tmp_path / "trust.json"),
        ]
    )
    assert [t.met for t in report.targets].count(None) == 0
    written = (tmp_path / "trust.md").read_text()
    assert "| tiny | 0 |" in written and "## Pool table" in written
    assert '{"warmup": 100}' in written
    saved = json.loads((tmp_path / "trust.json").read_text())
    assert saved["settings"]["params"] == {"warmup": 100}
    assert saved["cut"]["tiny"]["cuts"] == ["64", "river"]
    pool = saved["pool"]["tiny"]
    assert f"| tiny | 800 | 3 | 2.00% | {pool['ours']:.3f} | {pool['hst']:.3f} |" in written
    with pytest.raises(SystemExit, match="unknown set"):
        trust.main(["--data", str(tmp_path), "--sets", "absent", "--out", str(tmp_path)])


def test_decoding_throughput_is_measured_on_every_kind_of_batch():
    codec_throughput = _load("codec_throughput")
    rates = codec_throughput.measure(n=60, repeats=1)
    assert set(rates) == {"clean", "1% bad", "nested", "nested, 1% bad"}
    assert all(rate > 0 for rate in rates.values())
