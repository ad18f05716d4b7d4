"""Defects a first user met in the real ``streamgmm run`` on the real broker, held fixed.

- ``checkpoint.path`` in a directory that does not exist: created (0700), checkpoints
  written and offsets committed (it used to log a write error every interval, for ever);
"""

from __future__ import annotations

import numpy as np
import pytest

from .daemon_process import DaemonProcess, encode, normal_events, write_config
from .faults import committed_offsets, read_checkpoint, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(broker, unique):
    names = {"events": unique("events"), "outliers": unique("outliers"), "dead": unique("dead")}
    broker.create_topics(list(names.values()), partitions=1)
    return names


def start(tmp_path, broker, topics, group, name="daemon.log", **overrides) -> DaemonProcess:
    path, port = write_config(tmp_path, broker.bootstrap, topics, group, **overrides)
    return DaemonProcess(path, port, tmp_path / name)


def test_a_checkpoint_directory_that_does_not_exist_is_created(
    tmp_path, broker, topics, unique, produce
):
    checkpoint = tmp_path / "not" / "yet" / "model.npz"
    produce(topics["events"], encode(normal_events(np.random.default_rng(11), 700)))
    group = unique("g")
    daemon = start(tmp_path, broker, topics, group, checkpoint__path=str(checkpoint))
    daemon.wait_until(lambda: daemon.scored() >= 700, what="every event counted")
    wait_for(
        lambda: committed_offsets(broker.bootstrap, group, topics["events"], 1) == {0: 700},
        20, "the offsets committed after a checkpoint", daemon,
    )  # fmt: skip
    assert daemon.terminate() == 0
    state = read_checkpoint(checkpoint)
    assert state is not None and state["offsets"][topics["events"]] == {"0": 700}
    assert (tmp_path / "not").stat().st_mode & 0o777 == 0o700
    assert not [r for r in daemon.log_records() if "cannot write the checkpoint" in r["message"]]
