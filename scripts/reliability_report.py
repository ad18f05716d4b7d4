#!/usr/bin/env python3
"""Render docs/reliability.md from the figures the reliability and soak tests measured.

The tests (tests/integration/test_reliability_*.py, test_security.py,
tests/soak/) write one JSON line per measurement into
docs/reliability/figures/<name>.json when STREAMGMM_FIGURES names that
directory (``make soak`` does; see tests/figures.py). This script turns the
latest lines into the report; a figure that was not measured says so.

    python scripts/reliability_report.py [--figures DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(directory: Path) -> dict[str, list[dict]]:
    figures: dict[str, list[dict]] = {}
    for path in sorted(directory.glob("*.json")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        figures[path.stem] = lines
    return figures


def pick(lines: list[dict], **match) -> dict | None:
    """The last figure whose fields match (the latest run)."""
    found = [f for f in lines if all(f.get(k) == v for k, v in match.items())]
    return found[-1] if found else None


def num(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def span(values: list[float], unit: str = " s") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.1f}{unit}" if abs(high - low) < 0.05 else f"{low:.1f}-{high:.1f}{unit}"


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


NOT_MEASURED = "_not measured in this run_"


# ---------------------------------------------------------------------------
# sections


def summary(f: dict[str, list[dict]]) -> str:
    rows = []
    for variant in ("slow", "fast"):
        crash = pick(f.get("crash", []), variant=variant)
        if crash:
            where = ", ".join(f"{v} {k}" for k, v in crash["kills_by_moment"].items())
            restart = num(crash["median_restart_to_assigned_s"])
            rows.append(
                [
                    f"daemon SIGKILLed {crash['kills']} times ({where})",
                    f"{num(crash['events'])} numbered events at {crash['rate_events_per_s']}/s",
                    "nothing: each event learnt once, scored or dead-lettered; "
                    "every anomaly published",
                    f"restart to partitions assigned: median {restart} s",
                    f"crash ({variant})",
                ]
            )
            break
    for variant in ("slow", "fast"):
        pause = pick(f.get("broker_pause", []), variant=variant)
        if pause:
            cycles = pause["cycles"]
            rows.append([
                f"broker frozen (SIGSTOP) {len(cycles)}x, {span([c['pause_s'] for c in cycles])}",
                f"{num(pause['events'])} events, outliers in flight at each freeze",
                f"nothing (outliers lost: {pause['outliers_lost']})",
                f"not ready after {span([c['not_ready_after_s'] for c in cycles])}; ready "
                f"{span([c['ready_after_resume_s'] for c in cycles])} and held outliers "
                f"published {span([c['held_outliers_published_after_resume_s'] for c in cycles])}"
                " after resume",
                f"broker_pause ({variant})",
            ])  # fmt: skip
            break
    for variant in ("slow", "fast"):
        restart = pick(f.get("broker_restart_empty", []), variant=variant)
        if restart:
            cycles = restart["restarts_while_running"]
            rows.append([
                f"broker killed and restarted empty {len(cycles)}x under the daemon, "
                "once while stopped",
                f"{num(restart['events'])} events",
                f"nothing (skipped: {restart['events_skipped']}); the replaced topic is read "
                "from its start",
                f"ready {span([c['ready_after_restart_s'] for c in cycles])}, caught up "
                f"{span([c['caught_up_after_restart_s'] for c in cycles])} after the restart",
                f"broker_restart_empty ({variant})",
            ])  # fmt: skip
            break
    stop = pick(f.get("broker_frozen_stop", []))
    if stop:
        rows.append([
            "SIGTERM while the broker is frozen, outliers unacknowledged", "-",
            "nothing: the last good checkpoint stands, the outliers are re-sent after restart",
            f"exit {stop['exit_code']} after {num(stop['stopped_after_s'])} s "
            f"(systemd allows {stop['stop_timeout_s']} s)", "broker_frozen_stop",
        ])  # fmt: skip
    kept = pick(f.get("broker_restart_kept_data", []))
    if kept:
        rows.append([
            "broker restarted with its data (noida-db)", f"{num(kept['events'])} events",
            "nothing", f"ready {num(kept['ready_after_restart_s'])} s after the restart",
            "broker_restart_kept_data",
        ])  # fmt: skip
    bad = pick(f.get("bad_input", []))
    if bad:
        rows.append([
            f"{bad['inputs_corpus']} malformed events of the corpus + "
            f"{bad['inputs_generated']} generated",
            "only bad events after the warm-up", "nothing; the model unchanged by them",
            "the daemon never stopped", "bad_input",
        ])  # fmt: skip
    state = pick(f.get("state_write_faults", []))
    if state:
        rows.append([
            "checkpoint writes failing: " + ", ".join(x["fault"] for x in state["faults"]),
            "events streaming meanwhile", "nothing; offsets not committed while failing",
            f"checkpoints resume {span([x['resumed_after_clear_s'] for x in state['faults']])} "
            "after the fault is cleared", "state_write_faults",
        ])  # fmt: skip
    model = pick(f.get("soak_model", []))
    if model:
        rows.append([
            "none (soak)", f"{num(model['events'])} events through the detector",
            "-", f"RSS +{num(model['rss_growth_after_first_segment_mib'])} MiB after the first "
            f"segment; {num(model['events_per_s'], 0)} events/s; no NaN", "soak_model",
        ])  # fmt: skip
    daemon = pick(f.get("soak_daemon", []))
    if daemon:
        rows.append([
            "none (soak)", f"{num(daemon['events'])} events through the daemon process",
            "nothing", f"{num(daemon['events_per_s'], 0)} events/s; RSS "
            f"{num(daemon['rss_mib_at_25pct'])}-{num(daemon['rss_mib_max'])} MiB", "soak_daemon",
        ])  # fmt: skip
    if not rows:
        return NOT_MEASURED
    return table(
        ["Fault injected", "Load held", "What was lost", "Recovery / figures", "Figure"], rows
    )


def crash_section(f) -> str:
    rows = []
    for c in f.get("crash", []):
        where = ", ".join(f"{k}: {v}" for k, v in c["kills_by_moment"].items())
        rows.append([
            c["variant"], c["kills"], where,
            num(c["events"]), num(c["valid_events"]), num(c["invalid_events"]),
            c["injected_anomalies"], c["anomalies_published_more_than_once"],
            num(c["events_scored_more_than_once"]), num(c["events_learnt"]),
            num(c["median_restart_to_assigned_s"]), c["temp_files_left_by_kills"], num(c["wall_s"]),
        ])  # fmt: skip
    if not rows:
        return NOT_MEASURED
    return table(
        ["run", "kills", "where", "events", "valid", "invalid", "anomalies",
         "published twice", "scored twice", "learnt", "restart to assigned (s)",
         "temp files a kill left", "wall (s)"],
        rows,
    )  # fmt: skip


def pause_section(f) -> str:
    rows = []
    for run in f.get("broker_pause", []):
        for c in run["cycles"]:
            held = num(c["held_outliers_published_after_resume_s"], 2)
            rows.append([
                run["variant"], num(c["pause_s"]), num(c["not_ready_after_s"], 2),
                num(c["ready_after_resume_s"], 2), held,
                num(c["new_outliers_flowing_after_resume_s"], 2), num(c["producer_rebuilds"], 0),
            ])  # fmt: skip
    if not rows:
        return NOT_MEASURED
    return table(
        ["run", "freeze (s)", "not ready after (s)", "ready after resume (s)",
         "held outliers published after (s)", "new outliers flowing after (s)",
         "producer rebuilds"],
        rows,
    )  # fmt: skip


def restart_section(f) -> str:
    rows = []
    for run in f.get("broker_restart_empty", []):
        for c in run["restarts_while_running"]:
            rows.append([
                f"Tansu, empty ({run['variant']})", "running", num(c["not_ready_after_stop_s"], 2),
                num(c["ready_after_restart_s"], 2), num(c["caught_up_after_restart_s"], 2),
            ])  # fmt: skip
        rows.append([
            f"Tansu, empty ({run['variant']})", "stopped", "-", "-",
            num(run["cold_start_caught_up_s"], 2),
        ])  # fmt: skip
    for run in f.get("broker_restart_kept_data", []):
        rows.append([
            "noida-db, data kept", "running", num(run["not_ready_after_stop_s"], 2),
            num(run["ready_after_restart_s"], 2), num(run["caught_up_after_restart_s"], 2),
        ])  # fmt: skip
    if not rows:
        return NOT_MEASURED
    return table(
        ["broker", "daemon during the restart", "not ready after the stop (s)",
         "ready after the restart (s)", "all events learnt after (s)"],
        rows,
    )  # fmt: skip


def bad_input_section(f) -> str:
    bad = pick(f.get("bad_input", []))
    if not bad:
        return NOT_MEASURED
    rows = [[reason, num(count)] for reason, count in bad["reasons"].items()]
    return (
        f"{bad['inputs_corpus']} corpus events and {bad['inputs_generated']} generated ones, "
        f"nothing else, after the warm-up: {num(bad['dead_letters'])} dead letters, the "
        f"checkpointed model {'changed' if bad['model_changed_by_bad_events'] else 'unchanged'}, "
        f"then {bad['odd_but_valid_events']} odd but valid events learnt and their outliers "
        "published.\n\n" + table(["reason", "dead letters"], rows)
    )


def state_section(f) -> str:
    state = pick(f.get("state_write_faults", []))
    if not state:
        return NOT_MEASURED
    rows = [
        [x["fault"], num(x["checkpoint_failures"], 0), "no", num(x["resumed_after_clear_s"], 2)]
        for x in state["faults"]
    ]
    skipped = state.get("skipped") or []
    note = f"\n\nNot possible on this machine: {', '.join(skipped)}." if skipped else ""
    header = [
        "fault",
        "checkpoint failures counted",
        "offsets committed meanwhile",
        "checkpoints resumed after clearing (s)",
    ]
    return table(header, rows) + note


def soak_section(f) -> str:
    parts = []
    model = pick(f.get("soak_model", []))
    if model:
        rows = [
            [num(s["events"]), num(s["events_per_s"], 0), num(s["events_per_cpu_s"], 0),
             num(s["rss_mib"]), s["components"]]
            for s in model["segments"]
        ]  # fmt: skip
        growth = num(model["rss_growth_after_first_segment_mib"])
        header = ["events", "events/s (wall)", "events/s (CPU)", "RSS (MiB)", "components"]
        parts.append(
            f"**Model**: {num(model['events'])} events in {model['batch']}-event batches in "
            f"{num(model['wall_s'])} s ({num(model['events_per_s'], 0)} events/s); resident "
            f"memory {num(model['rss_first_segment_mib'])} MiB after the first segment, "
            f"{num(model['rss_max_mib'])} MiB at most (+{growth} MiB); no NaN or infinity in "
            f"any parameter or score; {num(model['injected_flagged'])} of "
            f"{num(model['injected_anomalies'])} injected anomalies flagged, "
            f"{model['flagged_share'] * 100:.2f} % of all events flagged.\n\n" + table(header, rows)
        )
    daemon = pick(f.get("soak_daemon", []))
    if daemon:
        samples = ", ".join(f"{t:.0f} s: {m:.0f}" for t, m in daemon["rss_samples"])
        parts.append(
            f"**Daemon process**: {num(daemon['events'])} events on {daemon['partitions']} "
            f"partitions, produced in {num(daemon['producer_s'])} s while it read them; drained "
            f"in {num(daemon['drained_s'])} s ({num(daemon['events_per_s'], 0)} events/s on "
            f"average, {num(daemon['peak_events_per_s'], 0)} at the peak, sharing 2 cores with the "
            f"producer and the broker); RSS {num(daemon['rss_mib_start'])} MiB at start, "
            f"{num(daemon['rss_mib_at_25pct'])} MiB at 25 %, {num(daemon['rss_mib_max'])} MiB at "
            f"most, {num(daemon['rss_mib_end'])} MiB at the end; "
            f"{num(daemon['outliers_published'])} outliers published, "
            f"{daemon['injected_published']} of {daemon['injected_anomalies']} "
            f"injected anomalies among them; lag {daemon['lag_at_end']} at the end; "
            f"{num(daemon['events_learnt'])} events learnt.\n\nRSS over time (MiB): {samples}."
        )
    return "\n\n".join(parts) or NOT_MEASURED


def security_section(f) -> str:
    lines = f.get("security", [])
    if not lines:
        return NOT_MEASURED
    out = []
    bind = pick(lines, check="metrics bind address")
    if bind:
        out.append(
            f"- /metrics listens on {', '.join(bind['live_listening'])} by default (config default "
            f"`{bind['default']}`, the shipped examples too); not reachable from "
            f"{bind['checked_from']}."
        )
    sasl = pick(lines, check="SASL options on the wire, secret from ${ENV}")
    if sasl:
        out.append(
            f"- SASL options from the YAML reach kafka-python ({sasl['handshake']}); a password "
            f"given as `${{ENV}}` appeared in none of {sasl['log_lines']} DEBUG log lines, "
            "/metrics, or `check-config --print`."
        )
    out.append(
        "- No pickle anywhere in the package: no pickle-like module, every `np.load` with "
        "`allow_pickle=False`, YAML through a SafeLoader subclass, no eval/exec "
        "(tests/integration/test_security.py)."
    )
    return "\n".join(out)


HEADER = """# Reliability report

Generated by `scripts/reliability_report.py` from the figures in
`docs/reliability/figures/*.json`, which the reliability and soak tests write
when run by `make soak` (`STREAMGMM_FIGURES=docs/reliability/figures`). Do not
edit by hand: run `make soak`. Every figure comes from the real daemon
process, a real Kafka-protocol broker (Tansu; noida-db for the restart that
keeps data) and real faults (SIGKILL, SIGSTOP, a broker killed and
restarted, an immutable or full checkpoint directory, damaged files); no
mock. The machine: {cpus} cores; figures recorded {when}.

The guarantees checked (DESIGN.md section 3): the model learns each event
once, outliers are published at least once, nothing is silently lost, a
broker that cannot be reached is retried while /readyz says so, and the
process never exits on a transient error.
"""

FINDINGS = """## Found by these tests

Fixed (each with the test that failed before it; `git log` has the details):

- /readyz said ready for the whole of a broker freeze, and a checkpoint could
  block the loop 30 s in a commit (past the systemd watchdog's period).
- After a broker restart without its data (or a topic deleted and created
  again), the checkpoint's offsets were applied to the new topic: its first
  events were skipped (4,005 of 5,005), or read at stale positions and
  learnt twice. Topic ids are now checkpointed and compared; fetching waits
  for confirmed group membership and fresh metadata.
- Partitions lost to the group (eviction) forgot the position the model was
  at; given back, they were read again from the older committed offset
  (3,005 events learnt twice after a noida-db crash).
- A daemon killed inside a checkpoint write left its temporary file for good.
- Detector warm-up: one anomaly among a fresh model's first 50 events, which
  nothing can judge yet, won a mixture component of its own, and its kind
  was never flagged again (d=8: 5 of 5 later copies passed). Components
  holding under 2% of the warm-up are now dropped with their events and the
  warm-up refitted (`Detector(min_component_share=0.02)`).
- Poison pills that stopped the daemon, and came back on every restart: an
  outlier carrying an escaped lone surrogate (`"\\ud800"`), and a side or key
  field nested 1,000-1,023 levels deep (accepted by orjson, too deep for the
  encoder). Events are now limited to 512 levels, and records escape
  surrogates.
- A SIGTERM while the brokers were unreachable took 97 s to 120 s and more
  (three 30 s flushes in a row), past systemd's TimeoutStopSec=60.
- A checkpoint that could not be read (permissions, a directory) was called
  damaged, so `on_corrupt: fresh` would replace a good model; refusals did
  not name `checkpoint.path` nor the way out, and numpy's hint to load a
  foreign file "unsafely" with pickle reached the operator.

Open (reported, not changed here):

- Detector warm-up: anomalies among a fresh model's first 50 events (before
  anything can judge them) still pass unflagged. Since the fix above they no
  longer blind the model, unless they are more than 2% of the warm-up (10
  of 500 events), which cannot be told from a small regime. Which events
  fill the warm-up depends on the order in which partitions are read; the
  crash test therefore starts from an established daemon.
- A broker refusing the group configuration (noida-db: session timeout under
  6 s, `InvalidSessionTimeoutError`) is retried forever and reported as "no
  connection to the brokers".
- Recovery after a broker restart includes the daemon's reconnect backoff
  (0.5 s doubling to 10 s while the broker is away): 5-10 s here.
"""

LIMITS = """## What these runs do not show

- Throughput figures share two cores between the daemon, the broker, the
  producer and the test; they are floors, not capacity numbers
  (`benchmarks/` measures capacity).
- Outliers are published at least once: after a crash the events since the
  last checkpoint are scored again and their outliers published again (the
  "published twice" columns); consumers of the outlier topic deduplicate on
  (topic, partition, offset).
- A broker that acknowledges writes before they reach its disk loses them
  when it crashes: noida-db lost the last second of acknowledged records on
  SIGKILL (10 of 310 in a probe), so its restart test stops it with SIGTERM.
  No client can make up for that.
- The noida-db variant is skipped where `noida-db` is not installed
  (`pip install noida-db`); the disk-full fault where tmpfs cannot be
  mounted; the immutable-directory fault where `chattr +i` is not supported.
- Tansu answers ListOffsets(latest) with the last batch's base offset + 1,
  not the end of the log: tests take end offsets from the producer's
  acknowledgements and fetch high watermarks.
"""


def render(figures: dict[str, list[dict]]) -> str:
    every = [line for lines in figures.values() for line in lines]
    when = max((x.get("recorded_at", "") for x in every), default="never")
    cpus = max((x.get("cpus") or 0 for x in every), default=0) or "?"
    sections = [
        HEADER.format(cpus=cpus, when=when),
        "## Summary\n\n" + summary(figures),
        "## Crashes (tests/integration/test_reliability_crash.py)\n\n"
        "SIGKILL at random moments and inside the checkpoint: after the temporary file "
        "is written but before the rename (`written`), and after the rename before the "
        "commit (`renamed`). After every kill the checkpoint loaded, and its model had "
        "learnt exactly the valid events before its offsets.\n\n" + crash_section(figures),
        "## Broker frozen (tests/integration/test_reliability_broker.py)\n\n"
        "SIGSTOP right after outliers were counted, while the producer still held them; "
        "session and delivery timeouts of 3 s.\n\n" + pause_section(figures),
        "## Broker restarted\n\n" + restart_section(figures),
        "## Bad input (tests/unit/test_bad_input_codec.py, "
        "tests/integration/test_reliability_bad_input.py)\n\n" + bad_input_section(figures),
        "## Checkpoint faults (tests/integration/test_reliability_state.py, "
        "tests/unit/test_daemon_restore.py)\n\n"
        "Write faults under a running daemon; damaged, foreign and unreadable checkpoints "
        "refuse the start (exit 2, naming checkpoint.path and the way out) or, with "
        "`fresh`, start a new model loudly and keep the file aside.\n\n" + state_section(figures),
        "## Soak (tests/soak/test_soak.py)\n\n" + soak_section(figures),
        "## Security (tests/integration/test_security.py)\n\n" + security_section(figures),
        FINDINGS,
        LIMITS,
    ]
    return "\n\n".join(s.rstrip() for s in sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "reliability" / "figures")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args(argv)
    if not args.figures.is_dir():
        print(f"no figures in {args.figures}: run `make soak` first", file=sys.stderr)
        return 1
    args.out.write_text(render(load(args.figures)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
