"""The models the daemon scores with: one per input partition, or one shared by all.

With ``checkpoint.topic`` the state unit is one input partition (DESIGN.md
section 7): each assigned partition has its own :class:`~streamgmm.detector.Detector`,
restored from the state topic when the partition is assigned and written back
to it at every checkpoint, so a unit moves with its partition between the
instances of a group. Without it, one detector serves every partition, as
before. Both are a :class:`Units`: the daemon splits each batch by partition
(:meth:`Units.split`) and calls ``process`` once per unit, with one code path.

:class:`Units` does no I/O: the daemon restores and writes the units.

Examples
--------
>>> import numpy as np
>>> from streamgmm.detector import Detector
>>> from streamgmm.sources import TopicPartition as TP
>>> units = Units.per_partition(lambda: Detector(n_components=1, warmup=10))
>>> for p in (0, 3):
...     _ = units.add(TP("events", p), units.build())
>>> parts = np.array([3, 0, 3, 3, 0])
>>> [(tp.partition, rows.tolist()) for tp, rows in units.split("events", parts)]
[(0, [1, 4]), (3, [0, 2, 3])]
>>> shared = Units.shared(Detector(n_components=1, warmup=10))
>>> [(tp, rows.tolist()) for tp, rows in shared.split("events", parts)]
[(None, [0, 1, 2, 3, 4])]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from .detector import BatchResult, Detector
from .sources import TopicPartition

__all__ = ["Unit", "Units", "merge_results"]


@dataclass
class Unit:
    """One model and what the daemon reports and writes about it.

    Attributes
    ----------
    detector : Detector
    dirty : bool
        Events processed since its state was last written.
    evicted : dict
        Entity evictions already counted in the metrics, by reason.
    reseeds : int
        Component reseeds already counted in the metrics.
    """

    detector: Detector
    dirty: bool = False
    evicted: dict[str, int] = field(default_factory=dict)
    reseeds: int = 0

    def __post_init__(self) -> None:
        self.evicted = dict(self.detector.entities.n_evicted)
        self.reseeds = self.detector.model.n_reseeds_


class Units:
    """The units the daemon holds: one shared (``key None``), or one per partition.

    Build with :meth:`shared` or :meth:`per_partition`.

    Parameters
    ----------
    build : callable
        A fresh detector (``build_detector(config)``).
    shared : Detector or None
        The one detector of every partition; None: one per partition.
    """

    def __init__(self, build: Callable[[], Detector], shared: Detector | None = None) -> None:
        self.build = build
        self.units: dict[TopicPartition | None, Unit] = {}
        if shared is not None:
            self.units[None] = Unit(shared)
        self.is_shared = shared is not None
        #: partitions assigned whose unit is still to be restored (paused meanwhile)
        self.to_restore: set[TopicPartition] = set()
        #: partitions whose state must not be written (our generation was lost)
        self.fenced: set[TopicPartition] = set()
        #: units of partitions revoked in an (eager) rebalance, with the position they
        #: were written at: reused when the same partition comes back unmoved
        self.retained: dict[TopicPartition, tuple[Unit, int | None]] = {}
        self._template: Detector | None = None

    @classmethod
    def shared(cls, detector: Detector) -> Units:
        """One detector for every partition (no state topic)."""
        return cls(lambda: detector, detector)

    @classmethod
    def per_partition(cls, build: Callable[[], Detector]) -> Units:
        """One detector per input partition, added as partitions are restored."""
        return cls(build)

    # -- membership ---------------------------------------------------------------

    def add(self, tp: TopicPartition, detector: Detector) -> Unit:
        """Hold ``detector`` as the unit of ``tp`` (replacing any)."""
        unit = self.units[tp] = Unit(detector)
        self.to_restore.discard(tp)
        return unit

    def drop(self, partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Forget the units of ``partitions`` (revoked or lost); the ones dropped."""
        dropped = []
        for tp in partitions:
            self.to_restore.discard(tp)
            if not self.is_shared and self.units.pop(tp, None) is not None:
                dropped.append(tp)
        return dropped

    def owned(self) -> list[tuple[TopicPartition, Unit]]:
        """The per-partition units, by partition (empty when shared)."""
        return sorted(((tp, u) for tp, u in self.units.items() if tp is not None), key=_order)

    def get(self, tp: TopicPartition | None) -> Unit | None:
        return self.units.get(None if self.is_shared else tp)

    def __iter__(self) -> Iterator[Unit]:
        return iter(list(self.units.values()))

    def __len__(self) -> int:
        return len(self.units)

    # -- a batch --------------------------------------------------------------------

    def split(
        self, topic: str, partitions: np.ndarray
    ) -> list[tuple[TopicPartition | None, np.ndarray]]:
        """The rows of each unit in a batch, in the batch's order within each.

        Parameters
        ----------
        topic : str
            The batch's topic (one per source).
        partitions : array of shape (n,), int
            The partition of each row.

        Returns
        -------
        list of (TopicPartition or None, array of row indexes)
            One entry per partition in the batch, by partition; ``None`` and every
            row when shared.
        """
        n = len(partitions)
        if self.is_shared:
            return [(None, np.arange(n))]
        order = np.argsort(partitions, kind="stable")
        ids, starts = np.unique(partitions[order], return_index=True)
        return [
            (TopicPartition(topic, int(p)), rows)
            for p, rows in zip(ids.tolist(), np.split(order, starts[1:]), strict=True)
        ]

    # -- totals for the status line and the metrics --------------------------------

    @property
    def n_seen(self) -> int:
        return sum(u.detector.n_seen for u in self)

    @property
    def n_outliers(self) -> int:
        return sum(u.detector.n_outliers for u in self)

    @property
    def is_warmed_up(self) -> bool:
        """Some unit scores (a partition with few events may still warm up)."""
        return any(u.detector.is_warmed_up for u in self)

    @property
    def warmup(self) -> int:
        return self.leader().warmup

    def entities_held(self) -> int:
        return sum(len(u.detector.entities) for u in self)

    def leader(self) -> Detector:
        """The unit that has seen the most events: its threshold and components are
        the ones exported (one shared model: that one). Before any partition is
        restored, a fresh detector, built once, stands for them."""
        units = list(self)
        if units:
            return max(units, key=lambda u: u.detector.n_seen).detector
        if self._template is None:
            self._template = self.build()
        return self._template


def _order(item: tuple[TopicPartition, Unit]) -> tuple[str, int]:
    return item[0].topic, item[0].partition


def merge_results(parts: Sequence[tuple[np.ndarray, BatchResult]], n: int) -> BatchResult:
    """One :class:`BatchResult` of n rows, in the batch's order, from each unit's rows and
    result (``responsibilities`` padded with zeros to the widest unit's K).

    >>> import numpy as np
    >>> from streamgmm.detector import Detector
    >>> d = Detector(n_components=1, warmup=10)
    >>> X = np.arange(12.0).reshape(6, 2)
    >>> a, b = np.array([0, 2, 4]), np.array([1, 3, 5])
    >>> merged = merge_results([(a, d.process(X[a])), (b, d.process(X[b]))], 6)
    >>> merged.is_warmup.tolist(), len(merged)
    ([True, True, True, True, True, True], 6)
    """
    if len(parts) == 1 and len(parts[0][0]) == n:
        rows, result = parts[0]
        if np.array_equal(rows, np.arange(n)):
            return result
    width = max(r.responsibilities.shape[1] for _, r in parts)
    merged = {}
    for f in fields(BatchResult):
        pieces = [getattr(r, f.name) for _, r in parts]
        if f.name == "responsibilities":
            pieces = [np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in pieces]
        first = pieces[0]
        out = np.empty((n, *first.shape[1:]), dtype=np.result_type(*pieces))
        for (rows, _), piece in zip(parts, pieces, strict=True):
            out[rows] = piece
        merged[f.name] = out
    return BatchResult(**merged)
