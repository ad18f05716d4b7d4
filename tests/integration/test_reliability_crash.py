"""Crash safety: the real daemon SIGKILLed again and again while numbered events stream in.

A producer sends numbered events at a steady rate (normal ones, injected
anomalies, invalid ones); the daemon is SIGKILLed at random moments and
inside its checkpoint (the temporary file written but not renamed, and
renamed but the offsets not committed: made deterministic by
checkpoint_pause.py), and started again each time. The guarantees of
DESIGN.md section 3 are then checked on what reached the broker and disk:

- the checkpoint always loads, and the model in it has learnt exactly the
  valid events before its offsets (model updates effectively once);
- at the end the checkpoint's offsets are the end offsets and the model
  has learnt every valid event once;
- every event was scored or dead-lettered at least once (the scores topic
  holds every valid event, the dead-letter topic every invalid one), and
  events_total summed over the runs is at least the number of events;
- every injected anomaly is in the outlier topic at least once.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.support.events import normal_events
from tests.support.faults import (
    PAUSING_LAUNCHER,
    NumberedStream,
    Sent,
    checkpoint_offsets,
    produce_events,
    read_checkpoint,
    read_json,
    temp_files,
    valid_before,
    wait_checkpoint_at,
)
from tests.support.processes import DaemonProcess, write_config
from tests.support.waits import wait_for

from ..figures import record

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

DELAY_S = 0.3  # each side of the checkpoint's rename, in the pausing launcher
WARM_IDS = 10_000_000  # ids of the warm-up events (the numbered stream counts from 0)


def readiness(daemon: DaemonProcess, condition: str) -> bool:
    """Whether /readyz reports ``condition`` met (False while the daemon is not up)."""
    try:
        _, body = daemon.get("/readyz")
    except OSError:
        return False
    return bool(json.loads(body).get("conditions", {}).get(condition))


def assigned(daemon: DaemonProcess) -> bool:
    return readiness(daemon, "assigned")


def warmed_up(daemon: DaemonProcess) -> bool:
    return readiness(daemon, "warmed_up")


def phase(marker: Path) -> str | None:
    try:
        return marker.read_text().split()[0]
    except (OSError, IndexError):
        return None


def campaign(tmp_path, broker, unique, kills: list[str], total: int, rate: float, seed: int):
    """Kill the daemon as ``kills`` says while a stream of at most ``total`` events flows.

    The stream is stopped after the last kill, not before: a kill inside a checkpoint
    needs new events to checkpoint (with none, no checkpoint is written), and how long
    the kills take depends on the machine (each restart waits for the group).
    """
    topics = {
        "events": unique("events"),
        "outliers": unique("outliers"),
        "dead": unique("dead"),
        "scores": unique("scores"),
    }
    broker.create_topics([topics["events"]], partitions=2)
    broker.create_topics([topics["outliers"], topics["dead"], topics["scores"]], partitions=1)
    config, port = write_config(
        tmp_path,
        broker.bootstrap,
        topics,
        unique("g"),
        sink__kafka__scores_topic=topics["scores"],
        checkpoint__interval_s=0.5,
    )
    state_dir = tmp_path / "state"
    checkpoint = state_dir / "model.npz"
    marker = Path(f"{checkpoint}.phase")
    env = {"STREAMGMM_TEST_CHECKPOINT_DELAY_S": str(DELAY_S)}
    rng = random.Random(seed)
    started = time.monotonic()

    # an established daemon: its warm-up done and checkpointed before the crashes begin
    # (anomalies among a fresh model's first 50 events pass unjudged, and which events
    # come first depends on the order the partitions are read in)
    warm_events = normal_events(np.random.default_rng(seed), 1000, start_id=WARM_IDS)
    coords = produce_events(broker.bootstrap, topics["events"], warm_events)
    warm = [Sent(e["id"], "normal", p, o) for e, (p, o) in zip(warm_events, coords, strict=True)]
    daemon = DaemonProcess(config, port, tmp_path / "warm.log")
    wait_checkpoint_at(daemon, checkpoint, topics["events"], NumberedStream.end_offsets(warm), 30)
    warm_counted = daemon.scored()
    assert daemon.terminate() == 0, daemon.log_tail()

    stream = NumberedStream(broker.bootstrap, topics["events"], total, rate, seed=seed).start()
    runs = []
    for n, kind in enumerate(kills):
        marker.unlink(missing_ok=True)
        daemon = DaemonProcess(
            config, port, tmp_path / f"run{n}.log", env=env, launcher=PAUSING_LAUNCHER
        )
        launched = time.monotonic()
        wait_for(lambda d=daemon: assigned(d), 30, f"run {n} to be assigned partitions", daemon)
        assigned_after = time.monotonic() - launched
        if n == 0:
            # crash safety is the subject, not the warm-up: a brand-new model cannot judge
            # its first 50 events, and the partition holding every anomaly may be read first
            wait_for(
                lambda d=daemon: warmed_up(d) and checkpoint.exists(),
                60,
                "the first run to warm up and checkpoint",
                daemon,
            )
        if kind == "random":
            time.sleep(rng.uniform(0.1, 2.5))
        else:  # inside the checkpoint: "written" (before the rename) or "renamed" (after it)
            wait_for(lambda k=kind: phase(marker) == k, 30, f"checkpoint phase {kind!r}", daemon)
        try:
            counted = daemon.scored()  # the loop is blocked in a checkpoint pause, or about to die
        except OSError:
            counted = 0.0
        assert daemon.kill() == -9
        state = read_checkpoint(checkpoint)  # verified whole by streamgmm's loader, or absent
        runs.append(
            {
                "kind": kind,
                "counted": counted,
                "assigned_after_s": round(assigned_after, 2),
                "offsets": checkpoint_offsets(state, topics["events"]),
                "n_seen": None if state is None else int(state["detector"]["n_seen"]),
                "temp_files": temp_files(state_dir),
            }
        )

    stream.stop()
    sent = warm + stream.wait(timeout_s=120)
    ends = NumberedStream.end_offsets(sent)
    before_final = checkpoint_offsets(read_checkpoint(checkpoint), topics["events"])
    left = sum(ends.values()) - sum(before_final.values())  # the final run's share
    daemon = DaemonProcess(config, port, tmp_path / "final.log")
    # up and in the group first: the checkpoint may already hold the end offsets
    wait_for(lambda: assigned(daemon), 60, "the final run to be assigned partitions", daemon)
    wait_for(
        lambda: (
            assigned(daemon)
            and daemon.scored() >= left
            and checkpoint_offsets(read_checkpoint(checkpoint), topics["events"]) == ends
        ),
        90,
        f"the final run to read its {left} events and checkpoint the end offsets {ends}",
        daemon,
        every_s=0.25,
    )
    final_counted = daemon.scored()
    assert daemon.terminate() == 0, daemon.log_tail()
    elapsed = time.monotonic() - started
    final = read_checkpoint(checkpoint)

    # -- the checkpoint after every kill loaded, and its model matches its offsets
    for n, run in enumerate(runs):
        if run["n_seen"] is not None:
            assert run["n_seen"] == valid_before(sent, run["offsets"]), (
                f"after kill {n} ({run['kind']}), the checkpoint's model learnt {run['n_seen']} "
                f"events but its offsets {run['offsets']} cover "
                f"{valid_before(sent, run['offsets'])} valid events"
            )
    # -- the end: every event read, every valid one learnt once
    valid = [s for s in sent if s.kind != "invalid"]
    assert checkpoint_offsets(final, topics["events"]) == ends
    assert int(final["detector"]["n_seen"]) == len(valid), "the model must learn each event once"
    # -- events_total: the final run counted exactly what it had left; all runs cover all
    assert final_counted == left
    assert warm_counted + sum(r["counted"] for r in runs) + final_counted >= len(sent)
    # -- every valid event scored, every invalid one dead-lettered, every anomaly published
    scores = read_json(broker, topics["scores"], 20)
    scored_at = Counter((r["partition"], r["offset"]) for r in scores)
    unscored = [s.id for s in valid if (s.partition, s.offset) not in scored_at]
    assert not unscored, f"{len(unscored)} events never scored, e.g. {unscored[:10]}"
    dead = {(r["partition"], r["offset"]) for r in read_json(broker, topics["dead"], 10)}
    invalid = [s for s in sent if s.kind == "invalid"]
    assert {(s.partition, s.offset) for s in invalid} <= dead
    outliers = read_json(broker, topics["outliers"], 10)
    published = Counter(r["event"]["id"] for r in outliers if r["event"].get("injected"))
    injected = [s.id for s in sent if s.kind == "anomaly"]
    missing = sorted(set(injected) - set(published))
    assert not missing, f"injected anomalies never published: {missing}"
    leftovers = temp_files(state_dir)
    return {
        "kills": len(kills),
        "kills_by_moment": dict(Counter(kills)),
        "events": len(sent),
        "valid_events": len(valid),
        "invalid_events": len(invalid),
        "injected_anomalies": len(injected),
        "anomalies_published_more_than_once": sum(1 for c in published.values() if c > 1),
        "score_records": len(scores),
        "events_scored_more_than_once": sum(1 for c in scored_at.values() if c > 1),
        "events_learnt": int(final["detector"]["n_seen"]),
        "lost": 0,
        "median_restart_to_assigned_s": sorted(r["assigned_after_s"] for r in runs)[len(runs) // 2],
        "temp_files_left_by_kills": max(len(r["temp_files"]) for r in runs),
        "temp_files_at_end": len(leftovers),
        "wall_s": round(elapsed, 1),
        "rate_events_per_s": rate,
    }


def test_sigkill_at_random_moments_and_inside_checkpoints_loses_nothing(tmp_path, broker, unique):
    kills = ["random", "written", "renamed", "random", "written", "renamed"]
    figures = campaign(tmp_path, broker, unique, kills, total=40_000, rate=400, seed=1)
    assert figures["temp_files_at_end"] == 0, "a killed checkpoint write left its temporary file"
    record("crash", variant="fast", **figures)


@pytest.mark.slow
def test_sigkill_campaign_long(tmp_path, broker, unique):
    rng = random.Random(7)
    kills = [rng.choice(["random", "random", "written", "renamed"]) for _ in range(30)]
    figures = campaign(tmp_path, broker, unique, kills, total=200_000, rate=500, seed=2)
    assert figures["temp_files_at_end"] == 0, "a killed checkpoint write left its temporary file"
    record("crash", variant="slow", **figures)
