"""YAML configuration: one schema, validated into frozen, typed dataclasses.

Every key is spelled once, as a field of one of the dataclasses below; the
field's metadata (built by :func:`_key`) carries its type, default and
description. That single table drives validation (:func:`parse_config`),
the generated reference (:func:`reference_markdown`) and redacted dumps for
logging (:func:`redacted`).

Rules, so that a typo never passes silently:

* unknown keys at any level are errors (with a "did you mean" hint);
* wrong types and out-of-range values are errors (``true`` is not a number,
  ``"9108"`` is not an integer);
* every error message names the full key path and says what to do;
* all errors of a file are reported at once.

``${VAR}`` and ``${VAR:-default}`` in string values are replaced by the
environment variable (the default is used when the variable is unset or
empty); ``$${`` writes a literal ``${``. A value made only of references is
parsed as a YAML scalar when the key wants a number or a boolean, so
``port: ${METRICS_PORT}`` works. A variable that is unset and has no default
is an error naming the key.

Examples
--------
>>> cfg = parse_config({"features": {"fields": ["cpu", "mem"]},
...                     "model": {"n_components": 3}})
>>> cfg.model.n_components, cfg.model.covariance_type, cfg.threshold.quantile
(3, 'diag', 0.999)
>>> cfg.source.kafka.bootstrap_servers
('localhost:9092',)
>>> parse_config({"features": {"fields": ["cpu"]}, "model": {"covariance_type": "ful"}})
Traceback (most recent call last):
...
streamgmm.config.ConfigError: invalid configuration:
  - model.covariance_type: must be one of full, diag, spherical, got 'ful'
"""

# ruff: noqa: RUF009  (the schema's fields are declared with _key(), a dataclasses.field wrapper)
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from .defaults import MIN_WARMUP, MODEL_DEFAULTS

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "FeaturesConfig",
    "FileSinkConfig",
    "FileSourceConfig",
    "KafkaSinkConfig",
    "KafkaSourceConfig",
    "LogConfig",
    "MetricsConfig",
    "ModelConfig",
    "SinkConfig",
    "SourceConfig",
    "ThresholdConfig",
    "as_dict",
    "iter_keys",
    "load_config",
    "parse_config",
    "redacted",
    "reference_markdown",
]


class ConfigError(ValueError):
    """The configuration cannot be used; :attr:`errors` lists every problem.

    Each entry starts with the full key path (``model.warmup: ...``) and says
    what to do about it.
    """

    def __init__(self, errors: Sequence[str], source: str | None = None) -> None:
        self.errors = tuple(errors)
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(
            f"invalid configuration{where}:\n" + "\n".join(f"  - {e}" for e in self.errors)
        )


# ---------------------------------------------------------------------------
# value kinds: what a key accepts, how it is described


class _Invalid(Exception):
    """One value is wrong; the message completes ``"<key path><suffix>: "``.

    ``suffix`` locates the culprit inside the value (``"[2]"``, ``".user"``).
    """

    def __init__(self, message: str, suffix: str = "") -> None:
        super().__init__(message)
        self.suffix = suffix


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class _Kind:
    """Base of the value kinds; ``convert`` returns the typed value or raises."""

    text = "value"
    #: whether a string produced by ${VAR} expansion is parsed as a YAML scalar first
    parse_env = True

    def convert(self, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return self.text


class _Str(_Kind):
    parse_env = False

    def __init__(self, pattern: str | None = None, hint: str = "", allow_empty: bool = False):
        self.pattern = re.compile(pattern) if pattern else None
        self.hint = hint
        self.allow_empty = allow_empty
        self.text = "string"

    def convert(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, got {_show(value)}; quote it in the YAML")
        if not value and not self.allow_empty:
            raise _Invalid("must not be empty")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise _Invalid(f"{value!r} is not valid: {self.hint}")
        return value


class _Number(_Kind):
    def __init__(self, integer: bool, ge=None, gt=None, le=None, lt=None):
        self.integer, self.ge, self.gt, self.le, self.lt = integer, ge, gt, le, lt

    def describe(self) -> str:
        text = "integer" if self.integer else "number"
        bounds = []
        if self.gt is not None:
            bounds.append(f"> {self.gt}")
        if self.ge is not None:
            bounds.append(f">= {self.ge}")
        if self.lt is not None:
            bounds.append(f"< {self.lt}")
        if self.le is not None:
            bounds.append(f"<= {self.le}")
        return f"{text} {', '.join(bounds)}" if bounds else text

    def convert(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            want = "an integer" if self.integer else "a number"
            raise _Invalid(f"must be {want}, got {_show(value)}")
        if self.integer and not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise _Invalid(f"must be an integer, got {_show(value)}")
        if not self.integer:
            value = float(value)
            if not math.isfinite(value):
                raise _Invalid(f"must be a finite number, got {_show(value)}")
        for bound, ok, word in (
            (self.gt, lambda b: value > b, ">"),
            (self.ge, lambda b: value >= b, ">="),
            (self.lt, lambda b: value < b, "<"),
            (self.le, lambda b: value <= b, "<="),
        ):
            if bound is not None and not ok(bound):
                raise _Invalid(f"must be {word} {bound}, got {_show(value)}")
        return value


class _Bool(_Kind):
    text = "boolean"

    def convert(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(f"must be true or false, got {_show(value)}")
        return value


class _Choice(_Kind):
    def __init__(self, *choices: str, upper: bool = False):
        self.choices = choices
        self.upper = upper

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def convert(self, value: Any) -> str:
        candidate = value.upper() if self.upper and isinstance(value, str) else value
        if not isinstance(candidate, str) or candidate not in self.choices:
            raise _Invalid(f"must be one of {', '.join(self.choices)}, got {_show(value)}")
        return candidate


class _IntOrAuto(_Number):
    def __init__(self, ge: int):
        super().__init__(integer=True, ge=ge)

    def describe(self) -> str:
        return f'integer >= {self.ge}, or "auto"'

    def convert(self, value: Any) -> int | str:
        if value == "auto":
            return "auto"
        try:
            return super().convert(value)
        except _Invalid:
            raise _Invalid(
                f'must be an integer >= {self.ge} or "auto", got {_show(value)}'
            ) from None


class _StrList(_Kind):
    """A non-empty list of strings; a comma-separated string is accepted too."""

    parse_env = False

    def __init__(self, item: _Str, min_items: int = 1, unique: bool = False):
        self.item, self.min_items, self.unique = item, min_items, unique

    def describe(self) -> str:
        return "list of strings (or one comma-separated string)"

    def convert(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise _Invalid(f"must be a list of strings, got {_show(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(self.item.convert(item))
            except _Invalid as exc:
                raise _Invalid(str(exc), f"[{i}]") from None
        if len(out) < self.min_items:
            raise _Invalid(f"must list at least {self.min_items} item(s)")
        if self.unique:
            seen = set()
            for i, item in enumerate(out):
                if item in seen:
                    raise _Invalid(f"{item!r} is listed twice; list each once", f"[{i}]")
                seen.add(item)
        return tuple(out)


class _Mapping(_Kind):
    """A free mapping (client options), checked later by its section's validator."""

    text = "mapping"
    parse_env = False

    def convert(self, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise _Invalid(f"must be a mapping (key: value lines), got {_show(value)}")
        for name in value:
            if not isinstance(name, str):
                raise _Invalid(f"keys must be strings, got {name!r}")
        return types.MappingProxyType(dict(value))


class _Section(_Kind):
    parse_env = False

    def __init__(self, cls: type):
        self.cls = cls
        self.text = "section"


_REQUIRED = object()


def _key(
    kind: _Kind, default: Any, doc: str, *, nullable: bool = False, required: bool = False
) -> Any:
    """Declare one config key: its kind, default and description (the schema table)."""
    meta = {
        "kind": kind,
        "default": default,
        "doc": doc,
        "nullable": nullable,
        "required": required,
    }
    if isinstance(kind, _Section):
        return field(default_factory=kind.cls, metadata=meta)
    if isinstance(default, Mapping):
        return field(default_factory=lambda: types.MappingProxyType(dict(default)), metadata=meta)
    if isinstance(default, list):
        raise TypeError("use tuples / None for container defaults")
    return field(default=None if required else default, metadata=meta)


_PATH = r"[^.\s]+(\.[^.\s]+)*"
_PATH_HINT = "a field name or dotted path like 'a.b.c' (no empty parts, no spaces)"
_TOPIC = r"[A-Za-z0-9._-]{1,249}"
_TOPIC_HINT = "Kafka topic names use only letters, digits, '.', '_' and '-' (at most 249)"
_HOSTPORT = _Str(r"\[?[^\s,]+\]?:\d{1,5}", "write host:port, e.g. 'localhost:9092'")


# ---------------------------------------------------------------------------
# the schema


@dataclass(frozen=True)
class KafkaSourceConfig:
    """``source.kafka``: the Kafka consumer."""

    bootstrap_servers: tuple[str, ...] = _key(
        _StrList(_HOSTPORT),
        ("localhost:9092",),
        "Brokers to bootstrap from, as host:port (a list, or one comma-separated string).",
    )
    topic: str = _key(_Str(_TOPIC, _TOPIC_HINT), "events", "Topic to read events from.")
    group_id: str = _key(
        _Str(),
        "streamgmm",
        "Consumer group; instances sharing it split the topic's partitions between them.",
    )
    auto_offset_reset: str = _key(
        _Choice("earliest", "latest"),
        "earliest",
        "Where to start when neither the checkpoint nor the group has an offset: earliest "
        "learns from the topic's history, latest only from new events.",
    )
    max_poll_records: int = _key(
        _Number(True, ge=1, le=1_000_000),
        2000,
        "Events per poll; one poll is decoded, scored and learnt as one batch.",
    )
    max_message_bytes: int = _key(
        _Number(True, ge=1),
        1_048_576,
        "Events larger than this go to the dead-letter sink (reason 'oversize') unparsed.",
    )
    client: Mapping[str, Any] = _key(
        _Mapping(),
        types.MappingProxyType({}),
        "Extra kafka-python KafkaConsumer options (security_protocol, sasl_*, ssl_*, "
        "session_timeout_ms, ...). Options streamgmm manages itself are refused.",
    )


@dataclass(frozen=True)
class FileSourceConfig:
    """``source.file``: newline-delimited JSON from a file or standard input."""

    path: str = _key(_Str(), "-", 'JSONL file to read; "-" reads standard input.')
    format: str = _key(_Choice("jsonl"), "jsonl", "Input format: one JSON object per line.")


@dataclass(frozen=True)
class SourceConfig:
    """``source``: where events come from."""

    kind: str = _key(_Choice("kafka", "file"), "kafka", "kafka, or file (JSONL).")
    kafka: KafkaSourceConfig = _key(_Section(KafkaSourceConfig), None, "Kafka consumer.")
    file: FileSourceConfig = _key(_Section(FileSourceConfig), None, "File input.")


@dataclass(frozen=True)
class FeaturesConfig:
    """``features``: which numbers of each JSON event the model sees."""

    fields: tuple[str, ...] = _key(
        _StrList(_Str(_PATH, _PATH_HINT), unique=True),
        None,
        "Numeric fields, in order, as dotted paths into each JSON event (a.b.c). "
        "Values must be JSON numbers: strings, booleans and null are rejected.",
        required=True,
    )
    key: str | None = _key(
        _Str(_PATH, _PATH_HINT),
        None,
        "Optional field (dotted path) copied into outlier records as their key.",
        nullable=True,
    )
    decode_process: bool | None = _key(
        _Bool(),
        None,
        "Decode large batches of JSON in a child process while the loop reads the next "
        "(uses a second CPU; about 1.2x the events/s). null: when the process may use "
        "two CPUs or more.",
        nullable=True,
    )


@dataclass(frozen=True)
class ModelConfig:
    """``model``: the online Gaussian mixture."""

    n_components: int | str = _key(
        _IntOrAuto(ge=1),
        MODEL_DEFAULTS.n_components,
        'Number of mixture components, or "auto" to choose 1..max_components by BIC '
        "on the warm-up events.",
    )
    max_components: int = _key(
        _Number(True, ge=1, le=256),
        MODEL_DEFAULTS.max_components,
        'Largest number of components tried by "auto".',
    )
    covariance_type: str = _key(
        _Choice("full", "diag", "spherical"),
        MODEL_DEFAULTS.covariance_type,
        "Shape of each component: diag (independent fields within a component; the "
        "default, as it detects best on real data: correlations are carried by several "
        "components), full (correlated fields, more parameters to learn from the "
        "warm-up), spherical (one variance per component).",
    )
    warmup: int = _key(
        _Number(True, ge=MIN_WARMUP),
        MODEL_DEFAULTS.warmup,
        "The first events, scored one by one by a running Gaussian (after 50, one far "
        "out even for it is flagged and left out), then fitted by batch EM; counted as "
        "warm-up.",
    )
    standardize: bool = _key(
        _Bool(),
        MODEL_DEFAULTS.standardize,
        "Scale each field by its warm-up mean and standard deviation (then fixed), so "
        "fields in different units weigh alike.",
    )
    learn_from_outliers: bool = _key(
        _Bool(),
        MODEL_DEFAULTS.learn_from_outliers,
        "Also learn from flagged events. Off, an attack cannot teach the model that it is normal.",
    )
    reg_covar: float = _key(
        _Number(False, gt=0),
        MODEL_DEFAULTS.reg_covar,
        "Covariance floor added to each component, in standardised units: keeps "
        "components from collapsing onto repeated values.",
    )
    half_life: int | None = _key(
        _Number(True, gt=0),
        MODEL_DEFAULTS.half_life,
        "Forgetting: events after which an event's weight in the model halves, for "
        "drifting streams; null never forgets.",
        nullable=True,
    )
    n_init: int = _key(
        _Number(True, ge=1, le=100),
        MODEL_DEFAULTS.n_init,
        "k-means++ starts of each batch fit (the warm-up, a new regime); the best "
        "wins. More make the first mixture depend less on the seed, once, at a cost.",
    )
    random_state: int | None = _key(
        _Number(True, ge=0),
        MODEL_DEFAULTS.random_state,
        "Seed for initialisation; null for a random one.",
        nullable=True,
    )


@dataclass(frozen=True)
class ThresholdConfig:
    """``threshold``: when an event is an outlier."""

    kind: str = _key(
        _Choice("quantile", "loglik", "chi2"),
        "quantile",
        "quantile: score above a streaming quantile of recent inlier scores; loglik: "
        "log-likelihood below a fixed floor; chi2: squared Mahalanobis distance to the "
        "best component above the chi-square quantile.",
    )
    quantile: float = _key(
        _Number(False, gt=0, lt=1),
        0.999,
        "For kind quantile: the inlier score quantile to flag above (0.999 flags about "
        "1 event in 1000 on a stationary stream).",
    )
    loglik: float | None = _key(
        _Number(False),
        None,
        "For kind loglik (required there): flag events whose log-likelihood is below it.",
        nullable=True,
    )
    probability: float = _key(
        _Number(False, gt=0, lt=1),
        0.9999,
        "For kind chi2: the chi-square probability (with as many degrees of freedom as "
        "fields) to flag above.",
    )


@dataclass(frozen=True)
class KafkaSinkConfig:
    """``sink.kafka``: the Kafka producer."""

    bootstrap_servers: tuple[str, ...] | None = _key(
        _StrList(_HOSTPORT),
        None,
        "Brokers for the output topics; null uses source.kafka.bootstrap_servers.",
        nullable=True,
    )
    topic: str = _key(
        _Str(_TOPIC, _TOPIC_HINT), "outliers", "Topic outlier records are written to."
    )
    dead_letter_topic: str = _key(
        _Str(_TOPIC, _TOPIC_HINT),
        "streamgmm-dead-letter",
        "Topic for events that cannot be used, with the reason.",
    )
    scores_topic: str | None = _key(
        _Str(_TOPIC, _TOPIC_HINT),
        None,
        "Optional topic receiving every event's log-likelihood and soft membership (the "
        "clustering view of the stream); null disables it.",
        nullable=True,
    )
    client: Mapping[str, Any] = _key(
        _Mapping(),
        types.MappingProxyType({}),
        "Extra kafka-python KafkaProducer options (security_protocol, sasl_*, ssl_*, "
        "delivery_timeout_ms, compression_type, ...). acks is always all.",
    )


@dataclass(frozen=True)
class FileSinkConfig:
    """``sink.file``: JSONL output files."""

    path: str = _key(_Str(), "-", 'Outlier records, one JSON per line; "-" is standard output.')
    dead_letter_path: str | None = _key(
        _Str(),
        None,
        "Dead-letter records; null writes them to standard error.",
        nullable=True,
    )
    scores_path: str | None = _key(
        _Str(),
        None,
        "Optional file for every event's score record; null disables it.",
        nullable=True,
    )


@dataclass(frozen=True)
class SinkConfig:
    """``sink``: where records go."""

    kind: str = _key(_Choice("kafka", "file"), "kafka", "kafka, or file (JSONL).")
    kafka: KafkaSinkConfig = _key(_Section(KafkaSinkConfig), None, "Kafka producer.")
    file: FileSinkConfig = _key(_Section(FileSinkConfig), None, "File output.")


@dataclass(frozen=True)
class CheckpointConfig:
    """``checkpoint``: the model and offsets, saved atomically."""

    path: str | None = _key(
        _Str(),
        "/var/lib/streamgmm/model.npz",
        "Checkpoint file (.npz, written atomically); null disables checkpoints, so a "
        "restart starts a new model.",
        nullable=True,
    )
    interval_s: float = _key(
        _Number(False, gt=0),
        10.0,
        "Seconds between checkpoints; offsets are committed right after each one.",
    )
    on_mismatch: str = _key(
        _Choice("refuse", "fresh"),
        "refuse",
        "A checkpoint written for another configuration: refuse to start, or start a "
        "fresh model (logged loudly).",
    )
    on_corrupt: str = _key(
        _Choice("refuse", "fresh"),
        "refuse",
        "A damaged checkpoint: refuse to start, or start a fresh model (logged loudly).",
    )


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics``: the Prometheus /metrics, /healthz and /readyz HTTP server."""

    host: str = _key(
        _Str(),
        "127.0.0.1",
        "Address to listen on; loopback by default, 0.0.0.0 exposes it to the network.",
    )
    port: int = _key(_Number(True, ge=0, le=65535), 9108, "TCP port; 0 disables the server.")


@dataclass(frozen=True)
class LogConfig:
    """``log``: logging to standard error."""

    level: str = _key(
        _Choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True),
        "INFO",
        "Least severe level written.",
    )
    format: str = _key(
        _Choice("auto", "json", "text"),
        "auto",
        "json (one object per line, for log shippers), text, or auto: text on a "
        "terminal, json otherwise.",
    )


@dataclass(frozen=True)
class Config:
    """The whole streamgmm configuration (see ``config/streamgmm.yaml``)."""

    source: SourceConfig = _key(_Section(SourceConfig), None, "Where events come from.")
    features: FeaturesConfig = _key(
        _Section(FeaturesConfig), None, "Which fields of each event are scored."
    )
    model: ModelConfig = _key(_Section(ModelConfig), None, "The online Gaussian mixture.")
    threshold: ThresholdConfig = _key(
        _Section(ThresholdConfig), None, "When an event is an outlier."
    )
    sink: SinkConfig = _key(_Section(SinkConfig), None, "Where records go.")
    checkpoint: CheckpointConfig = _key(
        _Section(CheckpointConfig), None, "Model and offsets saved atomically."
    )
    metrics: MetricsConfig = _key(_Section(MetricsConfig), None, "Prometheus HTTP server.")
    log: LogConfig = _key(_Section(LogConfig), None, "Logging.")


# ---------------------------------------------------------------------------
# environment expansion

_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VAR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.S)


def _expand(text: str, suffix: str, env: Mapping[str, str]) -> tuple[str, bool]:
    """Expand ``${VAR}`` / ``${VAR:-default}``; return (text, whether any was expanded)."""
    if "$" not in text:
        return text, False
    expanded = False

    def replace(match: re.Match) -> str:
        nonlocal expanded
        if match.group(0) == "$${":
            return "${"
        inner = match.group(1)
        ref = _VAR.fullmatch(inner)
        if ref is None:
            raise _Invalid(
                f"${{{inner}}} is not a valid reference; write ${{NAME}} or "
                "${NAME:-default} (NAME: letters, digits, _), or $${ for a literal ${",
                suffix,
            )
        name, default = ref.group(1), ref.group(2)
        expanded = True
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is not None:  # set but empty, no default
            return value
        raise _Invalid(
            f"environment variable {name} is not set; export it, or write "
            f"${{{name}:-default}} to give a default",
            suffix,
        )

    return _REF.sub(replace, text), expanded


def _expand_tree(value: Any, suffix: str, env: Mapping[str, str]) -> tuple[Any, bool]:
    """Expand references in every string of ``value``; ``suffix`` locates it for errors."""
    if isinstance(value, str):
        return _expand(value, suffix, env)
    if isinstance(value, list):
        items = [_expand_tree(v, f"{suffix}[{i}]", env) for i, v in enumerate(value)]
        return [v for v, _ in items], any(e for _, e in items)
    if isinstance(value, dict):
        out = {}
        any_expanded = False
        for k, v in value.items():
            out[k], e = _expand_tree(v, f"{suffix}.{k}", env)
            any_expanded = any_expanded or e
        return out, any_expanded
    return value, False


def _scalar_from_env(text: str) -> Any:
    """Parse an expanded string as a YAML scalar (``"8"`` -> 8, ``"true"`` -> True)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else text


# ---------------------------------------------------------------------------
# building the dataclasses


def _fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def _build(cls: type, raw: Any, path: str, env: Mapping[str, str], errors: list[str]) -> Any:
    where = path or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be a mapping of keys, got {_show(raw)}")
        raw = {}
    known = {f.name: f for f in _fields(cls)}
    for name in raw:
        if name not in known:
            full = f"{path}.{name}" if path else str(name)
            close = difflib.get_close_matches(str(name), list(known), n=1)
            hint = (f"did you mean {close[0]!r}? " if close else "") + (
                f"valid keys here: {', '.join(known)}"
            )
            errors.append(f"{full}: unknown key; {hint}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        meta = f.metadata
        kind: _Kind = meta["kind"]
        full = f"{path}.{name}" if path else name
        if isinstance(kind, _Section):
            values[name] = _build(kind.cls, raw.get(name), full, env, errors)
            continue
        if name not in raw:
            if meta["required"]:
                errors.append(f"{full}: is required; {meta['doc']}")
            values[name] = meta["default"]
            continue
        value = raw[name]
        try:
            from_env = False
            if not isinstance(kind, _Mapping):  # free mappings are expanded by their checker
                value, from_env = _expand_tree(value, "", env)
            if from_env and kind.parse_env and isinstance(value, str):
                value = _scalar_from_env(value)
            if value is None:
                if not meta["nullable"]:
                    raise _Invalid(f"must not be null; {kind.describe()} expected")
                values[name] = None
                continue
            values[name] = kind.convert(value)
        except _Invalid as exc:
            errors.append(f"{full}{exc.suffix}: {exc}")
            values[name] = meta["default"]
    return cls(**values)


# ---------------------------------------------------------------------------
# cross-key checks


def _kafka_defaults(role: str) -> dict[str, Any]:
    if role == "consumer":
        from kafka import KafkaConsumer

        return dict(KafkaConsumer.DEFAULT_CONFIG)
    from kafka import KafkaProducer

    return dict(KafkaProducer.DEFAULT_CONFIG)


#: kafka-python options that streamgmm sets itself, with the key to use instead.
_MANAGED = {
    "consumer": {
        "bootstrap_servers": "set source.kafka.bootstrap_servers instead",
        "group_id": "set source.kafka.group_id instead",
        "auto_offset_reset": "set source.kafka.auto_offset_reset instead",
        "max_poll_records": "set source.kafka.max_poll_records instead",
        "enable_auto_commit": "streamgmm commits offsets itself, after each checkpoint",
        "key_deserializer": "streamgmm reads raw bytes",
        "value_deserializer": "streamgmm reads raw bytes",
    },
    "producer": {
        "bootstrap_servers": "set sink.kafka.bootstrap_servers instead",
        "acks": "streamgmm always uses acks=all so that a flushed record is durable",
        "key_serializer": "streamgmm sends raw bytes",
        "value_serializer": "streamgmm sends raw bytes",
        "transactional_id": "streamgmm does not use transactions",
    },
}
#: options whose values are Python objects, impossible to give in YAML
_OBJECTS = {
    "selector",
    "kafka_client",
    "partitioner",
    "metric_reporters",
    "ssl_context",
    "sasl_oauth_token_provider",
    "default_offset_commit_callback",
    "partition_assignment_strategy",
    "socket_options",
}


def _check_client(
    client: Mapping[str, Any], path: str, role: str, env: Mapping[str, str], errors: list[str]
) -> Mapping[str, Any]:
    """Validate kafka-python passthrough options against the library's own defaults."""
    if not client:
        return types.MappingProxyType({})
    defaults = _kafka_defaults(role)
    out: dict[str, Any] = {}
    cls = "KafkaConsumer" if role == "consumer" else "KafkaProducer"
    for name, value in client.items():
        full = f"{path}.{name}"
        if name in _MANAGED[role]:
            errors.append(f"{full}: cannot be set here; {_MANAGED[role][name]}")
            continue
        if name in _OBJECTS:
            errors.append(f"{full}: takes a Python object, which a YAML file cannot give")
            continue
        if name not in defaults:
            close = difflib.get_close_matches(name, list(defaults), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(f"{full}: not a kafka-python {cls} option{hint}")
            continue
        try:
            value, from_env = _expand_tree(value, "", env)
        except _Invalid as exc:
            errors.append(f"{full}{exc.suffix}: {exc}")
            continue
        default = defaults[name]
        if (
            from_env
            and isinstance(value, str)
            and not isinstance(default, str)
            and (default is not None)
        ):
            value = _scalar_from_env(value)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            want = "true or false"
        elif isinstance(default, int) or (isinstance(default, float) and math.isinf(default)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            want = "a number"
        elif isinstance(default, str):
            ok = isinstance(value, str)
            want = "a string"
        else:
            ok = value is None or isinstance(value, (str, int, float, bool, list))
            want = "a scalar or a list"
        if not ok:
            errors.append(f"{full}: must be {want}, got {_show(value)}")
            continue
        out[name] = value
    return types.MappingProxyType(out)


def _cross_checks(cfg: Config, env: Mapping[str, str], errors: list[str]) -> Config:
    model, thr = cfg.model, cfg.threshold
    if thr.kind == "loglik" and thr.loglik is None:
        errors.append(
            "threshold.loglik: is required when threshold.kind is loglik; give the "
            "log-likelihood below which an event is an outlier (e.g. -25.0)"
        )
    if isinstance(model.n_components, int):
        if model.warmup < model.n_components:
            errors.append(
                f"model.warmup: must be at least model.n_components ({model.n_components}) "
                f"to fit them, got {model.warmup}; raise warmup (hundreds of events are "
                "better) or lower n_components"
            )
    elif model.warmup < model.max_components:
        errors.append(
            f"model.warmup: must be at least model.max_components ({model.max_components}) "
            f'for n_components "auto", got {model.warmup}; raise warmup or lower '
            "max_components"
        )
    source = cfg.source
    sink = cfg.sink
    source_kafka = source.kafka
    sink_kafka = sink.kafka
    source_kafka = dataclasses.replace(
        source_kafka,
        client=_check_client(source_kafka.client, "source.kafka.client", "consumer", env, errors),
    )
    sink_kafka = dataclasses.replace(
        sink_kafka,
        client=_check_client(sink_kafka.client, "sink.kafka.client", "producer", env, errors),
    )
    client = source_kafka.client
    if "session_timeout_ms" in client or "heartbeat_interval_ms" in client:
        defaults = _kafka_defaults("consumer")
        session = client.get("session_timeout_ms", defaults["session_timeout_ms"])
        heartbeat = client.get("heartbeat_interval_ms", defaults["heartbeat_interval_ms"])
        numbers = isinstance(session, (int, float)) and isinstance(heartbeat, (int, float))
        if numbers and heartbeat >= session:
            errors.append(
                f"source.kafka.client.session_timeout_ms: must be greater than "
                f"heartbeat_interval_ms ({heartbeat}); set heartbeat_interval_ms to about "
                "a third of the session timeout"
            )
    if sink.kind == "kafka":
        outputs = {
            "sink.kafka.topic": sink_kafka.topic,
            "sink.kafka.dead_letter_topic": sink_kafka.dead_letter_topic,
            "sink.kafka.scores_topic": sink_kafka.scores_topic,
        }
        seen: dict[str, str] = {}
        for key, topic in outputs.items():
            if topic is None:
                continue
            if topic in seen:
                errors.append(
                    f"{key}: {topic!r} is also {seen[topic]}; give each output its own topic"
                )
            seen.setdefault(topic, key)
        same_cluster = sink_kafka.bootstrap_servers in (None, source_kafka.bootstrap_servers)
        if source.kind == "kafka" and same_cluster and source_kafka.topic in seen:
            errors.append(
                f"{seen[source_kafka.topic]}: {source_kafka.topic!r} is the input topic "
                "(source.kafka.topic); records written there would be scored again; "
                "pick another topic"
            )
    if sink.kind == "file":
        paths = {
            "sink.file.path": sink.file.path,
            "sink.file.dead_letter_path": sink.file.dead_letter_path,
            "sink.file.scores_path": sink.file.scores_path,
        }
        seen_paths: dict[str, str] = {}
        for key, p in paths.items():
            if p is None or p == "-":
                continue
            if p in seen_paths:
                errors.append(
                    f"{key}: {p!r} is also {seen_paths[p]}; give each output its own file"
                )
            seen_paths.setdefault(p, key)
    return dataclasses.replace(
        cfg,
        source=dataclasses.replace(source, kafka=source_kafka),
        sink=dataclasses.replace(sink, kafka=sink_kafka),
    )


# ---------------------------------------------------------------------------
# public entry points


def parse_config(
    raw: Mapping[str, Any] | None,
    *,
    env: Mapping[str, str] | None = None,
    source: str | None = None,
) -> Config:
    """Validate a configuration mapping (as read from YAML) into a :class:`Config`.

    Parameters
    ----------
    raw
        The parsed YAML document.
    env
        Environment for ``${VAR}`` expansion; defaults to ``os.environ``.
    source
        Where the mapping came from (a file name), for error messages.

    Raises
    ------
    ConfigError
        Listing every problem, each naming its full key path.
    """
    env = os.environ if env is None else env
    errors: list[str] = []
    if raw is None:
        raise ConfigError(
            ["the configuration is empty; at least features.fields is required"], source
        )
    cfg = _build(Config, dict(raw) if isinstance(raw, Mapping) else raw, "", env, errors)
    cfg = _cross_checks(cfg, env, errors)
    if errors:
        raise ConfigError(errors, source)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key]}); keep one",
                    key_node.start_mark,
                )
            seen[key] = line
        except TypeError:
            pass
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str | os.PathLike, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML configuration file.

    Raises
    ------
    ConfigError
        The file cannot be read, is not valid YAML, or fails validation.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"the file is not UTF-8 text ({exc})"], path) from exc
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], path) from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {_show(raw)}"], path)
    return parse_config(raw, env=env, source=path)


# ---------------------------------------------------------------------------
# dumping and the reference

_SECRET = re.compile(r"password|secret|token|sasl_plain_password|ssl_.*key.*", re.I)
REDACTED = "***"


def as_dict(cfg: Any, *, redact: bool = False) -> dict[str, Any]:
    """The configuration as plain YAML-able data (tuples become lists).

    With ``redact=True``, values of keys that look secret (password, secret,
    token, ssl_*key*) are replaced by ``"***"``.

    >>> cfg = parse_config({"features": {"fields": ["x"]},
    ...     "source": {"kafka": {"client": {"sasl_plain_password": "hunter2"}}}})
    >>> as_dict(cfg, redact=True)["source"]["kafka"]["client"]
    {'sasl_plain_password': '***'}
    """

    def plain(value: Any, name: str) -> Any:
        if redact and _SECRET.search(name) and value is not None:
            return REDACTED
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name), f.name) for f in _fields(type(value))}
        if isinstance(value, Mapping):
            return {k: plain(v, k) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(v, "") for v in value]
        return value

    return plain(cfg, "")


def redacted(cfg: Config) -> dict[str, Any]:
    """:func:`as_dict` with secrets replaced by ``"***"``: safe to log."""
    return as_dict(cfg, redact=True)


def iter_keys(cls: type = Config, prefix: str = ""):
    """Yield ``(path, field)`` for every leaf key of the schema, in order."""
    for f in _fields(cls):
        path = f"{prefix}{f.name}"
        kind = f.metadata["kind"]
        if isinstance(kind, _Section):
            yield from iter_keys(kind.cls, path + ".")
        else:
            yield path, f


def _yaml_value(value: Any) -> str:
    if isinstance(value, Mapping):
        value = dict(value)
    if isinstance(value, tuple):
        value = list(value)
    return (
        yaml.safe_dump(value, default_flow_style=True, width=1000)
        .strip()
        .removesuffix("\n...")
        .strip()
    )


def reference_markdown() -> str:
    """Every key, its type, default and description, as Markdown (docs/configuration.md).

    >>> print(reference_markdown().splitlines()[0])
    # streamgmm configuration reference
    """
    lines = [
        "# streamgmm configuration reference",
        "",
        "Generated from `streamgmm/config.py` by `streamgmm.config.reference_markdown()`; "
        "do not edit by hand. `config/streamgmm.yaml` is the annotated example.",
        "",
        "Unknown keys are errors. `${VAR}` and `${VAR:-default}` in string values are "
        "replaced by environment variables (`$${` is a literal `${`).",
    ]

    def section(cls: type, prefix: str) -> None:
        leaves = [f for f in _fields(cls) if not isinstance(f.metadata["kind"], _Section)]
        if leaves:
            lines.extend(["", f"## `{prefix.rstrip('.')}`", "", (cls.__doc__ or "").strip(), ""])
            lines.append("| key | type | default | description |")
            lines.append("| --- | --- | --- | --- |")
            for f in leaves:
                meta = f.metadata
                kind_text = meta["kind"].describe() + (", or null" if meta["nullable"] else "")
                default = "*required*" if meta["required"] else f"`{_yaml_value(meta['default'])}`"
                doc = meta["doc"].replace("|", "\\|")
                lines.append(f"| `{prefix}{f.name}` | {kind_text} | {default} | {doc} |")
        for f in _fields(cls):
            if isinstance(f.metadata["kind"], _Section):
                section(f.metadata["kind"].cls, f"{prefix}{f.name}.")

    section(Config, "")
    return "\n".join(lines) + "\n"
