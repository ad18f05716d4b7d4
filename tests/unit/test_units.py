"""streamgmm.units: one model per input partition, or one shared; a batch split by
partition and put back in its order."""

from __future__ import annotations

import numpy as np

from streamgmm.detector import Detector
from streamgmm.sources import TopicPartition
from streamgmm.units import Units, merge_results


def detector() -> Detector:
    return Detector(n_components=2, warmup=50, random_state=0)


def test_each_partitions_rows_go_to_its_own_model_and_come_back_in_order():
    rng = np.random.default_rng(0)
    n = 900
    partitions = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 2)) + partitions[:, None] * 10.0  # one level per partition
    units = Units.per_partition(detector)
    for p in range(3):
        units.add(TopicPartition("events", p), units.build())
    pieces = []
    for tp, rows in units.split("events", partitions):
        assert (partitions[rows] == tp.partition).all()
        assert (np.diff(rows) > 0).all(), "stable: the batch's order within a partition"
        pieces.append((rows, units.get(tp).detector.process(X[rows])))
    merged = merge_results(pieces, n)

    for p in range(3):  # each model saw its partition's rows, in order, as alone
        alone = detector().process(X[partitions == p])
        np.testing.assert_array_equal(merged.score[partitions == p], alone.score)
        np.testing.assert_array_equal(merged.is_outlier[partitions == p], alone.is_outlier)
        assert units.get(TopicPartition("events", p)).detector.n_seen == (partitions == p).sum()
    assert units.n_seen == n


def test_one_shared_model_takes_every_row_whatever_the_partition():
    shared = Units.shared(detector())
    partitions = np.array([4, 1, 4, 0])
    [(key, rows)] = shared.split("events", partitions)
    assert key is None and rows.tolist() == [0, 1, 2, 3]
    assert shared.get(TopicPartition("events", 9)) is shared.get(None)
    assert shared.drop([TopicPartition("events", 4)]) == [] and len(shared) == 1


def test_responsibilities_of_models_with_different_component_counts_are_padded():
    a, b = Detector(n_components=1, warmup=20), Detector(n_components=3, warmup=20)
    rng = np.random.default_rng(1)
    for d in (a, b):
        d.process(rng.normal(size=(60, 2)))
    rows_a, rows_b = np.array([1, 3]), np.array([0, 2, 4])
    merged = merge_results(
        [
            (rows_a, a.process(rng.normal(size=(2, 2)))),
            (rows_b, b.process(rng.normal(size=(3, 2)))),
        ],
        5,
    )
    assert merged.responsibilities.shape == (5, 3)
    np.testing.assert_array_equal(merged.responsibilities[rows_a, 1:], 0.0)


def test_dropped_partitions_forget_their_models_and_pending_restores():
    units = Units.per_partition(detector)
    tp0, tp1 = TopicPartition("events", 0), TopicPartition("events", 1)
    units.add(tp0, units.build())
    units.to_restore.add(tp1)
    assert units.drop([tp0, tp1]) == [tp0]
    assert len(units) == 0 and not units.to_restore
    assert not units.is_warmed_up and units.n_seen == 0
