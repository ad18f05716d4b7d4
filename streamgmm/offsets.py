"""Where the model is in each partition: the daemon's offsets bookkeeping.

:class:`Offsets` holds, per partition, the next offset to read after the
events the model has learnt, and the cluster id of each topic they were read
in. The daemon moves it forward after each batch, writes it into every
checkpoint, and asks it where an assigned partition resumes and which offsets
to commit; it does no I/O and calls no source.

Examples
--------
>>> from streamgmm.sources import TopicPartition as TP
>>> offsets = Offsets({TP("events", 0): 120})
>>> offsets.advance({TP("events", 0): 180, TP("events", 1): 40})
>>> offsets.resume_at([TP("events", 0), TP("events", 1)], {TP("events", 1): 75})
{TopicPartition(topic='events', partition=0): 180, TopicPartition(topic='events', partition=1): 75}
>>> offsets.replaced({"events": "id-1"}), offsets.replaced({"events": "id-2"})
(set(), {'events'})
>>> offsets.positions
{}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .sources import TopicPartition

__all__ = ["Offsets"]

log = logging.getLogger("streamgmm.daemon")


class Offsets:
    """The next offset to read per partition, as far as the model has learnt, and topic ids.

    Parameters
    ----------
    positions : mapping of TopicPartition to int, optional
        The next offset to read in each partition (last learnt + 1).
    topic_ids : mapping of str to str, optional
        The cluster's id of each topic the positions were read in.
    """

    def __init__(
        self,
        positions: Mapping[TopicPartition, int] | None = None,
        topic_ids: Mapping[str, str] | None = None,
    ) -> None:
        self.positions: dict[TopicPartition, int] = dict(positions or {})
        self.topic_ids: dict[str, str] = dict(topic_ids or {})

    # -- a checkpoint's part ------------------------------------------------------

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Offsets:
        """The offsets of a checkpoint's state (its ``offsets`` and ``topic_ids`` keys)."""
        positions = {
            TopicPartition(topic, int(partition)): int(offset)
            for topic, partitions in state["offsets"].items()
            for partition, offset in partitions.items()
        }
        return cls(positions, {str(t): str(i) for t, i in state["topic_ids"].items()})

    def to_state(self) -> dict[str, Any]:
        """The ``offsets`` (topic -> partition as text -> offset) and ``topic_ids`` keys."""
        offsets: dict[str, dict[str, int]] = {}
        for (topic, partition), offset in self.positions.items():
            offsets.setdefault(topic, {})[str(partition)] = int(offset)
        return {"offsets": offsets, "topic_ids": dict(self.topic_ids)}

    # -- the loop's side ----------------------------------------------------------

    def advance(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """A batch was learnt: each of its partitions continues at ``next_offsets``."""
        self.positions.update(next_offsets)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions revoked (their offsets committed): another member reads them now."""
        for tp in partitions:
            self.positions.pop(tp, None)

    def resume_at(
        self, partitions: Iterable[TopicPartition], committed: Mapping[TopicPartition, int | None]
    ) -> dict[TopicPartition, int]:
        """Where each assigned partition is read from: the larger of ours and the group's.

        Ours may be further (nothing could be committed since); the group's may
        be further (another member read on after a rebalance). A partition
        with neither is left out (the source's ``auto_offset_reset`` decides).
        """
        targets: dict[TopicPartition, int] = {}
        for tp in partitions:
            known = [o for o in (self.positions.get(tp), committed.get(tp)) if o is not None]
            if known:
                targets[tp] = max(known)
        return targets

    def committable(self, assignment: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The offsets of the partitions in ``assignment``: what a commit may send."""
        assigned = set(assignment)
        return {tp: o for tp, o in self.positions.items() if tp in assigned}

    def replaced(self, current_ids: Mapping[str, str | None]) -> set[str]:
        """Topics whose cluster id changed since their offsets were read; forget those offsets.

        ``current_ids`` maps each topic to its id now (None: unknown, nothing
        concluded). A topic deleted and created again, or brokers restarted
        without their storage, give a new, shorter log under the same name:
        the offsets of the old one would skip its first events (or point past
        its end), so they are dropped and the topic is to be read from its
        beginning.
        """
        replaced = set()
        for topic, current in current_ids.items():
            if current is None:
                continue
            known = self.topic_ids.get(topic)
            if known is not None and known != current:
                replaced.add(topic)
                stale = {tp: o for tp, o in self.positions.items() if tp.topic == topic}
                self.forget(stale)
                log.error(
                    "topic %s was deleted and created again, or its brokers lost their data "
                    "(topic id %s, now %s): the offsets read so far belong to the old topic; "
                    "reading the new one from its beginning",
                    topic,
                    known,
                    current,
                    extra={
                        "fields": {"old_offsets": {str(tp.partition): o for tp, o in stale.items()}}
                    },
                )
            self.topic_ids[topic] = current
        return replaced

    def __len__(self) -> int:
        return len(self.positions)

    def __repr__(self) -> str:
        return f"Offsets({self.positions!r}, topic_ids={self.topic_ids!r})"
