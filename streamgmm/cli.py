"""The ``streamgmm`` command.

::

    streamgmm run -c FILE          the daemon
    streamgmm demo                 embedded broker + synthetic stream + the daemon
    streamgmm score -c FILE IN     offline: JSONL/CSV in, scored JSONL out
    streamgmm score IN --fields a,b,c        the same without a configuration file
    streamgmm evaluate -c FILE IN --label y  ROC-AUC, AP, precision and recall on labels
    streamgmm check-config FILE    validate a configuration
    streamgmm inspect CHECKPOINT   components, weights, events seen
    streamgmm plot CHECKPOINT|IN   PNG of the mixture's ellipses (and outliers)

Exit codes: 0 success, 1 runtime failure, 2 bad configuration, input or checkpoint.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("streamgmm.cli")


def _fail(message: str, code: int = 2) -> int:
    print(f"streamgmm: {message}", file=sys.stderr)
    return code


def _load(path: str):
    from .config import ConfigError, load_config

    try:
        return load_config(path), None
    except ConfigError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"


# ---------------------------------------------------------------------------
# run


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon, FatalError
    from .logs import configure
    from .metrics import MetricsServerError

    config, error = _load(args.config)
    if error:
        return _fail(error)
    configure(config.log.level, config.log.format)
    try:
        daemon = Daemon.from_config(config)
    except (FatalError, MetricsServerError) as exc:
        logging.getLogger("streamgmm").error("%s", exc)
        return 2
    except Exception as exc:  # a sink or source refused its options
        logging.getLogger("streamgmm").error("cannot start: %s", exc)
        return 2
    daemon.install_signal_handlers()
    # What exists now (modules, model, clients) lives as long as the process: out of
    # the collector's sight, the collections that kafka-python's many short-lived
    # per-record objects trigger stay cheap (figures: benchmarks/README.md, "Daemon
    # settings chosen by measurement").
    gc.freeze()
    return daemon.run()


# ---------------------------------------------------------------------------
# check-config


def cmd_check_config(args: argparse.Namespace) -> int:
    from .checkpoint import prepare_directory
    from .config import redacted

    config, error = _load(args.file)
    if error:
        return _fail(error)
    # The file is valid whatever this machine is like; the checkpoint's directory is checked
    # here, as this user, without creating anything (`run` creates what is missing, 0700),
    # and only warned about: the file may be meant for another machine or a container.
    path = config.checkpoint.path
    problem = None if path is None else prepare_directory(path, create=False)
    if problem is not None:
        print(
            f"streamgmm: warning: checkpoint.path: {problem} (checked on this machine as this "
            "user: `streamgmm run` here would refuse to start)",
            file=sys.stderr,
        )
    if args.print:
        json.dump(redacted(config), sys.stdout, indent=2, default=str)
        print()
    else:
        source = config.source
        where = source.kafka.topic if source.kind == "kafka" else source.file.path
        print(
            f"{args.file}: OK ({source.kind} source {where!r}, "
            f"{len(config.features.fields)} fields, threshold {config.threshold.kind})"
        )
        directory = os.path.dirname(os.path.abspath(path)) if path is not None else None
        if problem is None and directory is not None and not os.path.isdir(directory):
            print(f"  checkpoint.path: {directory} does not exist: `run` creates it (mode 0700)")
    return 0


# ---------------------------------------------------------------------------
# inspect

HEAVIEST_SHOWN = 10  # entities listed by `inspect`, the most active first


def describe_checkpoint(path: str) -> dict[str, Any]:
    """What a checkpoint or model file holds, as plain JSON-able data."""
    import numpy as np

    from .checkpoint import load_state, read_fingerprint
    from .detector import Detector
    from .gmm import OnlineGaussianMixture

    header = read_fingerprint(path)
    state = load_state(path, kind=header["kind"])
    info: dict[str, Any] = {"path": path, **header}
    detector_state = state.get("detector") if "detector" in state else None
    if header["kind"] == "Detector":
        detector_state = state
    if detector_state is not None:
        detector = Detector.from_state(detector_state)
        model = detector.model
        info.update(
            events_seen=detector.n_seen,
            outliers=detector.n_outliers,
            warmed_up=detector.is_warmed_up,
            threshold={"kind": detector.threshold.kind, "value": detector.threshold.value},
            regime_changes=detector.n_regime_changes,
            entities=len(detector.entities),
            entities_evicted=dict(detector.entities.n_evicted),
            heaviest_entities=[
                {"key": key, "activity": activity}
                for key, activity in detector.heaviest_entities(HEAVIEST_SHOWN)
            ],
        )
        if detector.standardizer is not None:
            info["standardizer"] = {
                "mean": detector.standardizer.mean.tolist(),
                "scale": detector.standardizer.scale.tolist(),
            }
    else:
        model = OnlineGaussianMixture.from_state(state)
    info["model_events_learnt"] = model.n_seen_
    info["reseeds"] = model.n_reseeds_
    if model.is_fitted:
        info["components"] = [
            {"weight": float(w), "mean": np.asarray(m).tolist()}
            for w, m in zip(model.weights_, model.means_, strict=True)
        ]
    if "offsets" in state:
        info["offsets"] = state["offsets"]
    if "written_at" in state:
        info["written_at"] = state["written_at"]
    return info


def cmd_inspect(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError

    try:
        info = describe_checkpoint(args.checkpoint)
    except FileNotFoundError:
        return _fail(f"no file at {args.checkpoint}")
    except CheckpointError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot read {args.checkpoint}: {exc.strerror or exc}")
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=float)
        print()
        return 0
    print(f"{info['path']}: {info['kind']} state, format version {info['format_version']}")
    fingerprint = {
        k: v
        for k, v in info.items()
        if k in ("n_components", "covariance_type", "standardize", "fields", "n_features")
    }
    print(f"  fingerprint: {json.dumps(fingerprint)}")
    if "events_seen" in info:
        print(
            f"  events seen: {info['events_seen']}  outliers: {info['outliers']}  "
            f"warmed up: {info['warmed_up']}"
        )
        threshold = info["threshold"]
        print(f"  threshold: {threshold['kind']} {threshold['value']:.4g}")
        evicted = info["entities_evicted"]
        print(
            f"  entities: {info['entities']}  evicted: {evicted['cap']} (cap), "
            f"{evicted['idle']} (idle)"
        )
        for entity in info["heaviest_entities"]:
            print(f"    {entity['key']}: {entity['activity']:.1f} events (decayed)")
    print(
        f"  events learnt by the mixture: {info['model_events_learnt']}  "
        f"re-seeds: {info['reseeds']}"
    )
    for k, component in enumerate(info.get("components", [])):
        mean = ", ".join(f"{v:.3g}" for v in component["mean"])
        print(f"  component {k}: weight {component['weight']:.4f}  mean [{mean}]")
    for topic, partitions in info.get("offsets", {}).items():
        print(f"  offsets {topic}: {partitions}")
    return 0


# ---------------------------------------------------------------------------
# score


def _file_config(args: argparse.Namespace):
    """The configuration of ``score`` and ``evaluate``: ``-c FILE``, ``--fields``, or both
    (``--fields`` and ``--key`` then replace the file's features); (config, error)."""
    from dataclasses import replace

    from .config import ConfigError, parse_config

    if args.config is None and args.fields is None:
        return None, "give the fields to read (--fields a,b,c) or a configuration (-c FILE)"
    config = None
    if args.config is not None:
        config, error = _load(args.config)
        if error:
            return None, error
    if args.fields is None:
        return _with_entities(config, args)
    features = {"fields": [f.strip() for f in args.fields.split(",") if f.strip()]}
    if args.key is not None:
        features["key"] = args.key
    try:  # validated as a file's features are
        flags = parse_config(
            {"source": {"kind": "file"}, "features": features, "checkpoint": {"path": None},
             "metrics": {"port": 0}, "log": {"level": "WARNING"}},
            source="--fields/--key",
        )  # fmt: skip
    except ConfigError as exc:
        return None, str(exc)
    if config is None:
        return _with_entities(flags, args)
    key = config.features.key if args.key is None else flags.features.key
    return _with_entities(replace(config, features=replace(config.features,
                          fields=flags.features.fields, key=key)), args)  # fmt: skip


def _with_entities(config, args: argparse.Namespace):
    """``--entities``: one adapted model per value of features.key; (config, error)."""
    from dataclasses import replace

    if not getattr(args, "entities", False) or config.model.entity.enabled:
        return config, None
    if config.features.key is None:
        return None, "--entities scores each entity under its own model: give --key FIELD too"
    entity = replace(config.model.entity, enabled=True)
    return replace(config, model=replace(config.model, entity=entity)), None


def _offline_config(args: argparse.Namespace) -> Config | int:
    """The configuration of ``score`` or ``evaluate`` with logging set up, or the exit code."""
    config, error = _file_config(args)
    if error:
        return _fail(error)
    from .logs import configure

    configure(config.log.level, "text" if sys.stderr.isatty() else config.log.format)
    return config


def _progress(input_path: str) -> bool:
    """A progress line on standard error: when it is a terminal and the input a file."""
    return sys.stderr.isatty() and input_path != "-" and os.path.isfile(input_path)


def cmd_score(args: argparse.Namespace) -> int:
    from .offline import score_file

    config = _offline_config(args)
    if isinstance(config, int):
        return config
    try:
        return score_file(
            config,
            args.input,
            args.output,
            args.outliers,
            args.format,
            checkpoint=args.checkpoint,
            progress=_progress(args.input),
        )
    except (OSError, ValueError) as exc:
        return _fail(str(exc))


# ---------------------------------------------------------------------------
# evaluate


def _nan_as_null(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_as_null(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .offline import evaluate_file, format_evaluation

    config = _offline_config(args)
    if isinstance(config, int):
        return config
    try:
        report = evaluate_file(
            config, args.input, args.label, args.format, progress=_progress(args.input)
        )
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(str(exc))
    if args.json:
        # NaN (a measure without both classes) as null: strict JSON for machines
        json.dump(_nan_as_null(report), sys.stdout, indent=2, allow_nan=False)
        print()
    else:
        print(format_evaluation(report))
    if report["scored"]["events"] == 0:
        return _fail("no labelled event was scored (all in the warm-up?): nothing measured", 1)
    return 0


# ---------------------------------------------------------------------------
# plot


def cmd_plot(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError
    from .plot import plot_checkpoint, plot_scored_file

    try:
        if args.config:
            config, error = _load(args.config)
            if error:
                return _fail(error)
            plot_scored_file(config, args.target, args.output, args.x, args.y)
        else:
            plot_checkpoint(args.target, args.output, args.x, args.y)
    except (CheckpointError, OSError, ValueError) as exc:
        return _fail(str(exc))
    except ImportError:
        return _fail("plot needs matplotlib: pip install 'streamgmm[plot]'")
    print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        duration=args.duration,
        rate=args.rate,
        metrics_port=args.metrics_port,
        anomaly_every=args.anomaly_every,
    )


# ---------------------------------------------------------------------------


def _file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", default=None, help="YAML configuration file (or give --fields)"
    )
    parser.add_argument("input", help="JSONL or CSV file, or - for standard input")
    parser.add_argument(
        "--fields",
        default=None,
        help="comma-separated numeric fields (dotted paths), instead of features.fields",
    )
    parser.add_argument(
        "--key", default=None, help="field copied into the records as their key (features.key)"
    )
    parser.add_argument(
        "--entities",
        action="store_true",
        help="score each entity (the --key field) under its own adapted model "
        "(model.entity.enabled)",
    )
    parser.add_argument("--format", choices=("auto", "jsonl", "csv"), default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamgmm",
        description="Streaming anomaly detection with an online Gaussian mixture model.",
    )
    parser.add_argument("--version", action="version", version=f"streamgmm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", required=True, help="YAML configuration file")
    run.set_defaults(func=cmd_run)

    demo = commands.add_parser(
        "demo", help="embedded broker + synthetic stream with anomalies + the daemon"
    )
    demo.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)"
    )
    demo.add_argument("--rate", type=float, default=2000.0, help="events per second")
    demo.add_argument(
        "--anomaly-every", type=int, default=400, help="inject one anomaly every N events"
    )
    demo.add_argument(
        "--metrics-port",
        type=int,
        default=9108,
        help="port of the demo daemon's /metrics (0: any free port)",
    )
    demo.set_defaults(func=cmd_demo)

    score = commands.add_parser(
        "score",
        help="score a JSONL or CSV file offline",
        description="Score a JSONL or CSV file as the daemon would: one scored JSONL record "
        "per event. The fields come from -c FILE, or --fields without one; a progress line "
        "goes to standard error when it is a terminal and the input is a file.",
    )
    _file_options(score)
    score.add_argument(
        "-o",
        "--output",
        default="-",
        help="scored JSONL, one record per event (default: standard output)",
    )
    score.add_argument("--outliers", default=None, help="also write outlier records here")
    score.add_argument(
        "--checkpoint",
        default=None,
        help="start from this model checkpoint and save the result back to it",
    )
    score.set_defaults(func=cmd_score)

    evaluate = commands.add_parser(
        "evaluate",
        help="ROC-AUC, average precision, precision and recall on a labelled file",
        description="Run the detector over a labelled JSONL or CSV file, as `score` does, and "
        "compare with the labels (1/0, true/false, yes/no, anomaly/normal): ROC-AUC and "
        "average precision of the scores, precision and recall of the outlier flag at the "
        "configured threshold. Over the scored events only: the warm-up ones are counted "
        "apart. Exit 1 when no labelled event was scored.",
    )
    _file_options(evaluate)
    evaluate.add_argument(
        "--label", required=True, help="the column (top-level key) holding the labels"
    )
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(func=cmd_evaluate)

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a configuration file (exit 2 naming every bad key); also warn "
        "when checkpoint.path's directory could not be created or written on this machine by "
        "this user (nothing is created: `run` creates missing directories, mode 0700).",
    )
    check.add_argument("file")
    check.add_argument(
        "--print", action="store_true", help="print the resolved configuration (secrets redacted)"
    )
    check.set_defaults(func=cmd_check_config)

    inspect = commands.add_parser("inspect", help="show what a checkpoint holds")
    inspect.add_argument("checkpoint")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=cmd_inspect)

    plot = commands.add_parser("plot", help="PNG of the mixture's ellipses and outliers")
    plot.add_argument("target", help="a checkpoint, or an input file (with -c)")
    plot.add_argument(
        "-c", "--config", default=None, help="score the input file with this configuration first"
    )
    plot.add_argument("-o", "--output", default="streamgmm.png")
    plot.add_argument("--x", default=None, help="field on the x axis (default: the first)")
    plot.add_argument("--y", default=None, help="field on the y axis (default: the second)")
    plot.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # the daemon works batch by batch on one thread: BLAS threads only fight each other
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
