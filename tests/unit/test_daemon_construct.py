"""Daemon.from_config does the I/O of a start (the checkpoint's directory and file, the
clients, the metrics server: tests/integration/test_daemon.py); the constructor does none."""

from __future__ import annotations

import io
import json

from streamgmm.config import parse_config
from streamgmm.daemon import Daemon, build_detector
from streamgmm.offsets import Offsets
from streamgmm.sinks import FileSink
from streamgmm.sources import FileSource, TopicPartition


def config_for(tmp_path, events):
    return parse_config(
        {
            "source": {"kind": "file", "file": {"path": str(events)}},
            "features": {"fields": ["a", "b"]},
            "model": {"warmup": 20, "random_state": 0},
            "sink": {"kind": "file"},
            "checkpoint": {"path": str(tmp_path / "state" / "model.npz"), "interval_s": 3600},
            "metrics": {"port": 0},
        },
        env={},
    )


def write_events(path, n):
    path.write_text("".join(json.dumps({"a": i % 7, "b": i % 5}) + "\n" for i in range(n)))


def test_the_constructor_touches_no_file_and_serves_nothing(tmp_path):
    events = tmp_path / "events.jsonl"
    write_events(events, 30)
    config = config_for(tmp_path, events)
    daemon = Daemon(
        config,
        detector=build_detector(config),
        source=FileSource(str(events)),
        sink=FileSink(stdout=io.BytesIO(), stderr=io.BytesIO()),
        offsets=Offsets({TopicPartition("events.jsonl", 0): 10}),
    )
    assert not (tmp_path / "state").exists()  # not even the checkpoint's directory
    assert daemon.server is None
    (tmp_path / "state").mkdir()  # from_config's job (restore() creates it)
    assert daemon.run() == 0
    assert daemon.detector.n_seen == 20  # resumed at line 11, as the offsets said
    assert (tmp_path / "state" / "model.npz").exists()  # the shutdown checkpoint


def test_from_config_creates_the_directory_and_resumes_from_the_checkpoint(tmp_path):
    events = tmp_path / "events.jsonl"
    write_events(events, 30)
    config = config_for(tmp_path, events)
    first = Daemon.from_config(config, sink=FileSink(stdout=io.BytesIO(), stderr=io.BytesIO()))
    assert (tmp_path / "state").is_dir()
    assert first.run() == 0
    write_events(events, 50)
    again = Daemon.from_config(
        config, sink=FileSink(stdout=io.BytesIO(), stderr=io.BytesIO()), serve_metrics=False
    )
    assert again.offsets.positions == {TopicPartition("events.jsonl", 0): 30}
    assert again.detector.n_seen == 30
    assert again.run() == 0
    assert again.detector.n_seen == 50  # the 20 new lines only
