"""The daemon's offsets bookkeeping (streamgmm.offsets), without a daemon or a source."""

from __future__ import annotations

import logging

from streamgmm.offsets import Offsets
from streamgmm.sources import TopicPartition as TP

A0, A1, B0 = TP("a", 0), TP("a", 1), TP("b", 0)


def test_a_partition_resumes_at_the_larger_of_ours_and_the_groups():
    offsets = Offsets({A0: 500, A1: 20})
    committed = {A0: 100, A1: 80, B0: None}
    # ours is further on a0 (nothing could be committed), the group's on a1 (another
    # member read on); b0 has neither: left to auto_offset_reset
    assert offsets.resume_at([A0, A1, B0], committed) == {A0: 500, A1: 80}
    assert offsets.resume_at([A0], {}) == {A0: 500}


def test_advance_forget_and_what_may_be_committed():
    offsets = Offsets()
    offsets.advance({A0: 10, B0: 3})
    offsets.advance({A0: 25})
    assert offsets.committable({A0, A1}) == {A0: 25}  # b0 is not assigned: not ours to commit
    offsets.forget({A0})
    assert offsets.positions == {B0: 3} and len(offsets) == 1


def test_a_topic_created_anew_loses_its_offsets_and_is_logged(caplog):
    offsets = Offsets({A0: 40, A1: 41, B0: 7}, topic_ids={"a": "id-1"})
    assert offsets.replaced({"a": None, "b": "id-b"}) == set()  # unknown ids: nothing concluded
    with caplog.at_level(logging.ERROR, logger="streamgmm.daemon"):
        assert offsets.replaced({"a": "id-2", "b": "id-b"}) == {"a"}
    assert offsets.positions == {B0: 7}
    assert offsets.topic_ids == {"a": "id-2", "b": "id-b"}
    [logged] = caplog.records
    assert "topic a was deleted and created again" in logged.getMessage()
    assert logged.fields["old_offsets"] == {"0": 40, "1": 41}
    assert offsets.replaced({"a": "id-2"}) == set()  # the new id is now the known one


def test_the_checkpoint_layout_round_trips():
    offsets = Offsets({A0: 40, A1: 41, B0: 7}, topic_ids={"a": "id-1"})
    state = offsets.to_state()
    assert state == {
        "offsets": {"a": {"0": 40, "1": 41}, "b": {"0": 7}},
        "topic_ids": {"a": "id-1"},
    }
    again = Offsets.from_state(state)
    assert again.positions == offsets.positions and again.topic_ids == offsets.topic_ids
