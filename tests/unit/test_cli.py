"""The ``streamgmm`` command on files: check-config, score, inspect, plot."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from streamgmm.cli import main

CONFIG = """\
source: {kind: file}
features: {fields: [m.a, b, c], key: host}
model: {warmup: 200, random_state: 0}
checkpoint: {path: null}
log: {level: WARNING}
"""


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(1500):
        x = rng.normal(size=3) + (6.0 if i % 2 else 0.0)
        lines.append(json.dumps({"host": f"h{i % 4}", "m": {"a": x[0]}, "b": x[1], "c": x[2]}))
    lines.append(json.dumps({"host": "odd", "m": {"a": 40.0}, "b": -40.0, "c": 40.0}))
    lines.append("this is not json")
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    rows = ["a,b,c"] + [",".join(map(str, rng.normal(size=3))) for _ in range(600)]
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    (tmp_path / "csv.yaml").write_text(CONFIG.replace("m.a, b, c], key: host", "a, b, c]"))
    return tmp_path


def test_check_config_accepts_a_good_file(files, capsys):
    assert main(["check-config", str(files / "cfg.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_names_every_bad_key(files, capsys):
    bad = files / "bad.yaml"
    bad.write_text("features: {fields: [a]}\nmodel: {covariance_type: ful, warmupp: 3}\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.warmupp: unknown key; did you mean 'warmup'?" in err
    assert "model.covariance_type: must be one of full, diag, spherical, got 'ful'" in err


def test_the_reference_config_checks(capsys):
    assert main(["check-config", "config/streamgmm.yaml"]) == 0


def test_score_writes_one_record_per_usable_event(files):
    out, outliers = files / "scored.jsonl", files / "outliers.jsonl"
    code = main(
        [
            "score",
            "-c",
            str(files / "cfg.yaml"),
            str(files / "events.jsonl"),
            "-o",
            str(out),
            "--outliers",
            str(outliers),
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1501  # the line that is not JSON is a dead letter
    assert [r["offset"] for r in records] == list(range(1501))
    last = records[-1]
    assert last["key"] == "odd" and last["outlier"] and last["score"] > last["threshold"]
    assert sum(r["outlier"] for r in records[200:]) <= 10
    flagged = [json.loads(line) for line in outliers.read_text().splitlines()]
    assert any(r["key"] == "odd" and r["contributions"]["b"] < -10 for r in flagged)


def test_score_reads_csv(files):
    out = files / "scored.jsonl"
    assert (
        main(["score", "-c", str(files / "csv.yaml"), str(files / "events.csv"), "-o", str(out)])
        == 0
    )
    assert len(out.read_text().splitlines()) == 600


def test_score_then_inspect_and_plot_the_checkpoint(files, capsys):
    checkpoint = files / "model.npz"
    assert (
        main(
            [
                "score",
                "-c",
                str(files / "cfg.yaml"),
                str(files / "events.jsonl"),
                "-o",
                str(files / "scored.jsonl"),
                "--checkpoint",
                str(checkpoint),
            ]
        )
        == 0
    )
    assert main(["inspect", str(checkpoint)]) == 0
    text = capsys.readouterr().out
    assert "format version 1" in text and "events seen: 1501" in text
    assert main(["inspect", "--json", str(checkpoint)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fields"] == ["m.a", "b", "c"] and len(info["components"]) >= 2
    assert info["offsets"]["events.jsonl"] == {"0": 1502}
    assert main(["plot", str(checkpoint), "-o", str(files / "model.png")]) == 0
    assert (files / "model.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_a_scored_file(files):
    png = files / "events.png"
    assert (
        main(
            [
                "plot",
                str(files / "events.jsonl"),
                "-c",
                str(files / "cfg.yaml"),
                "-o",
                str(png),
                "--x",
                "m.a",
                "--y",
                "c",
            ]
        )
        == 0
    )
    assert png.stat().st_size > 10_000


def test_inspect_refuses_a_damaged_file(files, capsys):
    broken = files / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 garbage")
    assert main(["inspect", str(broken)]) == 2
    assert "damaged" in capsys.readouterr().err


def test_version_and_help_exit_zero():
    for argv in (["--version"], ["--help"], ["run", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "streamgmm.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "streamgmm" in done.stdout


def test_python_dash_m_streamgmm_is_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "streamgmm", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: streamgmm") and "check-config" in done.stdout


# ---------------------------------------------------------------------------
# checkpoint.path in a directory that does not exist


def run_config(files, checkpoint: str) -> str:
    path = files / "run.yaml"
    path.write_text(
        CONFIG.replace(
            "source: {kind: file}", f"source: {{kind: file, file: {{path: {files}/events.jsonl}}}}"
        ).replace(
            "checkpoint: {path: null}",
            f"checkpoint: {{path: '{checkpoint}'}}\nmetrics: {{port: 0}}\n"
            f"sink: {{kind: file, file: {{path: {files}/outliers.jsonl, "
            f"dead_letter_path: {files}/dead.jsonl}}}}",
        )
    )
    return str(path)


def test_run_creates_the_missing_checkpoint_directory_private(files):
    checkpoint = files / "fresh" / "state" / "model.npz"
    done = subprocess.run(
        [sys.executable, "-m", "streamgmm", "run", "-c", run_config(files, str(checkpoint))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert checkpoint.is_file() and "cannot write the checkpoint" not in done.stderr
    for directory in (files / "fresh", files / "fresh" / "state"):
        assert directory.stat().st_mode & 0o777 == 0o700
    assert main(["inspect", "--json", str(checkpoint)]) == 0


def test_run_refuses_a_checkpoint_path_it_cannot_create_naming_the_key(files):
    (files / "plain").write_text("a file, not a directory\n")
    done = subprocess.run(
        [sys.executable, "-m", "streamgmm", "run", "-c",
         run_config(files, str(files / "plain" / "state" / "model.npz"))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "checkpoint.path: cannot use" in done.stderr and "it is a file" in done.stderr
    assert "not started" in done.stderr


def test_check_config_checks_the_checkpoint_directory_without_creating_it(files, capsys):
    missing = files / "fresh" / "model.npz"
    assert main(["check-config", run_config(files, str(missing))]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint.path: {files / 'fresh'} does not exist: `run` creates it" in out
    assert not (files / "fresh").exists()
    (files / "plain").write_text("")
    assert main(["check-config", run_config(files, str(files / "plain" / "model.npz"))]) == 0
    err = capsys.readouterr().err
    assert "warning: checkpoint.path: cannot use" in err and "would refuse to start" in err


def test_score_creates_the_directory_of_its_checkpoint(files):
    checkpoint = files / "new" / "model.npz"
    argv = ["score", "-c", str(files / "cfg.yaml"), str(files / "events.jsonl"), "-o", os.devnull]
    assert main([*argv, "--checkpoint", str(checkpoint)]) == 0
    assert checkpoint.is_file()


# ---------------------------------------------------------------------------
# score without a configuration file; the progress line


def test_score_without_a_configuration_file(files):
    out = files / "scored.jsonl"
    argv = ["score", str(files / "events.csv"), "--fields", "a,b,c", "-o", str(out)]
    assert main(argv) == 0
    assert len(out.read_text().splitlines()) == 600
    argv = ["score", str(files / "events.jsonl"), "--fields", "m.a, b,c", "--key", "host"]
    assert main([*argv, "-o", str(files / "keyed.jsonl")]) == 0
    records = [json.loads(line) for line in (files / "keyed.jsonl").read_text().splitlines()]
    assert len(records) == 1501 and records[-1]["key"] == "odd" and records[-1]["outlier"]


def test_score_needs_fields_or_a_configuration(files, capsys):
    assert main(["score", str(files / "events.csv")]) == 2
    assert "--fields a,b,c" in capsys.readouterr().err
    assert main(["score", str(files / "events.csv"), "--fields", "a,,a"]) == 2
    assert "--fields/--key" in capsys.readouterr().err  # validated as a file's keys are


def test_fields_given_with_a_configuration_replace_its_own(files):
    out = files / "scored.jsonl"
    argv = ["score", "-c", str(files / "cfg.yaml"), str(files / "events.csv"), "-o", str(out)]
    assert main([*argv, "--fields", "a,b,c"]) == 0  # cfg.yaml reads m.a, not in the CSV
    assert len(out.read_text().splitlines()) == 600


@pytest.mark.parametrize("with_config", [False, True], ids=["--fields", "-c"])
def test_progress_on_a_terminal_for_a_file_in_both_modes(files, capsys, monkeypatch, with_config):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    source = ["-c", str(files / "csv.yaml")] if with_config else ["--fields", "a,b,c"]
    argv = ["score", *source, "-o", os.devnull]
    assert main([*argv, str(files / "events.csv")]) == 0
    assert "scored 600 events 100.0%" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", open(files / "events.csv"))  # noqa: SIM115
    assert main([*argv, "--format", "csv", "-"]) == 0
    assert "scored" not in capsys.readouterr().err, "no progress line for standard input"


# ---------------------------------------------------------------------------
# evaluate


@pytest.fixture
def labelled(tmp_path):
    """2,000 events, 40 labelled anomalies after the warm-up (500): CSV and JSONL."""
    rng = np.random.default_rng(21)
    X = rng.normal(size=(2000, 3))
    y = np.zeros(2000, dtype=int)
    at = rng.choice(np.r_[600:1500, 1501:1600, 1601:2000], 40, replace=False)
    X[at] += rng.choice([-5.0, 5.0], size=(40, 3))
    y[at] = 1
    y[[10, 20]] = 1  # two anomalies in the warm-up: reported apart
    y[1500] = 1  # one a normal event, labelled anomaly
    rows = ["a,b,c,label", *(f"{a},{b},{c},{label}" for (a, b, c), label in zip(X, y, strict=True))]
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    lines = [json.dumps({"a": a, "b": b, "c": c, "host": "h", "anomaly": bool(label)})
             for (a, b, c), label in zip(X.tolist(), y, strict=True)]  # fmt: skip
    lines[7] = "not json"
    lines[1600] = json.dumps({"a": 0.0, "b": 0.0, "c": 0.0, "anomaly": "maybe"})
    (tmp_path / "labelled.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "cfg.yaml").write_text(
        "source: {kind: file}\nfeatures: {fields: [a, b, c], key: host}\n"
        "model: {random_state: 0}\ncheckpoint: {path: null}\nlog: {level: WARNING}\n"
    )
    return tmp_path


def test_evaluate_prints_a_table_on_a_labelled_csv(labelled, capsys):
    argv = ["evaluate", str(labelled / "labelled.csv"), "--fields", "a,b,c", "--label", "label"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    lines = dict(line.split("  ", 1) for line in table.splitlines())
    assert lines["warm-up (not measured)"].strip() == "500 events, 2 anomalies"
    assert lines["scored"].strip() == "1,500 events, 41 anomalies"
    for name in ("ROC-AUC", "average precision", "precision at the threshold (quantile)",
                 "recall at the threshold"):  # fmt: skip
        assert name in table


def test_evaluate_json_measures_on_a_labelled_jsonl(labelled, capsys):
    argv = ["evaluate", "-c", str(labelled / "cfg.yaml"), str(labelled / "labelled.jsonl"),
            "--label", "anomaly", "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == 2000 and report["unusable"] == 1 and report["unlabelled"] == 1
    assert report["warmup"] == {"events": 500, "anomalies": 2}
    scored = report["scored"]
    assert scored["events"] == 2000 - 1 - 500 - 1 and scored["anomalies"] == 41
    assert report["roc_auc"] > 0.97 and report["average_precision"] > 0.9
    assert report["recall"] == scored["true_positives"] / 41 >= 0.9
    assert report["precision"] == scored["true_positives"] / scored["flagged"]


def test_evaluate_refuses_a_label_among_the_features(labelled, capsys):
    argv = ["evaluate", str(labelled / "labelled.csv"), "--fields", "a,b,label"]
    assert main([*argv, "--label", "label"]) == 2
    assert "the label 'label' is one of the features" in capsys.readouterr().err
