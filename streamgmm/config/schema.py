"""The schema: every configuration key, as a field of a frozen dataclass.

This is the module a contributor edits to add or change a key: one
:func:`~streamgmm.config.kinds._key` per key gives its kind (what it accepts),
its default and its description, and that single table drives validation,
the generated reference (docs/configuration.md) and the dumps.

To add a key, add a field to its section's dataclass::

    max_poll_records: int = _key(
        Int(ge=1, le=1_000_000),
        2000,
        "Events per poll; one poll is decoded, scored and learnt as one batch.",
    )

then regenerate docs/configuration.md (``reference_markdown()``) and add the
key, with a comment, to config/streamgmm.yaml: tests check both. A rule that
involves two keys goes to :mod:`~streamgmm.config.checks`.
"""

# ruff: noqa: RUF009  (the schema's fields are declared with _key(), a dataclasses.field wrapper)
from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..defaults import ENTITY_DEFAULTS, MIN_WARMUP, MODEL_DEFAULTS
from .kinds import (
    Bool,
    Choice,
    Float,
    FreeMapping,
    Int,
    IntOrAuto,
    Section,
    Str,
    StrList,
    _key,
)

_PATH = Str(
    pattern=r"[^.\s]+(\.[^.\s]+)*",
    hint="a field name or dotted path like 'a.b.c' (no empty parts, no spaces)",
)
_TOPIC = Str(
    pattern=r"[A-Za-z0-9._-]{1,249}",
    hint="Kafka topic names use only letters, digits, '.', '_' and '-' (at most 249)",
)
_HOSTPORT = Str(pattern=r"\[?[^\s,]+\]?:\d{1,5}", hint="write host:port, e.g. 'localhost:9092'")


# ---------------------------------------------------------------------------
# the schema


@dataclass(frozen=True)
class KafkaSourceConfig:
    """``source.kafka``: the Kafka consumer."""

    bootstrap_servers: tuple[str, ...] = _key(
        StrList(item=_HOSTPORT),
        ("localhost:9092",),
        "Brokers to bootstrap from, as host:port (a list, or one comma-separated string).",
    )
    topic: str = _key(_TOPIC, "events", "Topic to read events from.")
    group_id: str = _key(
        Str(),
        "streamgmm",
        "Consumer group; instances sharing it split the topic's partitions between them.",
    )
    auto_offset_reset: str = _key(
        Choice(values=("earliest", "latest")),
        "earliest",
        "Where to start when neither the checkpoint nor the group has an offset: earliest "
        "learns from the topic's history, latest only from new events.",
    )
    max_poll_records: int = _key(
        Int(ge=1, le=1_000_000),
        2000,
        "Events per poll; one poll is decoded, scored and learnt as one batch.",
    )
    max_message_bytes: int = _key(
        Int(ge=1),
        1_048_576,
        "Events larger than this go to the dead-letter sink (reason 'oversize') unparsed.",
    )
    client: Mapping[str, Any] = _key(
        FreeMapping(),
        types.MappingProxyType({}),
        "Extra kafka-python KafkaConsumer options (security_protocol, sasl_*, ssl_*, "
        "session_timeout_ms, ...). Options streamgmm manages itself are refused.",
    )


@dataclass(frozen=True)
class FileSourceConfig:
    """``source.file``: newline-delimited JSON from a file or standard input."""

    path: str = _key(Str(), "-", 'JSONL file to read; "-" reads standard input.')
    format: str = _key(
        Choice(values=("jsonl",)), "jsonl", "Input format: one JSON object per line."
    )


@dataclass(frozen=True)
class SourceConfig:
    """``source``: where events come from."""

    kind: str = _key(Choice(values=("kafka", "file")), "kafka", "kafka, or file (JSONL).")
    kafka: KafkaSourceConfig = _key(Section(cls=KafkaSourceConfig), None, "Kafka consumer.")
    file: FileSourceConfig = _key(Section(cls=FileSourceConfig), None, "File input.")


@dataclass(frozen=True)
class FeaturesConfig:
    """``features``: which numbers of each JSON event the model sees."""

    fields: tuple[str, ...] = _key(
        StrList(item=_PATH, unique=True),
        None,
        "Numeric fields, in order, as dotted paths into each JSON event (a.b.c). "
        "Values must be JSON numbers: strings, booleans and null are rejected.",
        required=True,
    )
    key: str | None = _key(
        _PATH,
        None,
        "Optional field (dotted path) copied into outlier records as their key.",
        nullable=True,
    )
    decode_process: bool | None = _key(
        Bool(),
        None,
        "Decode large batches of JSON in a child process while the loop reads the next "
        "(it uses a second CPU; the gain is measured in README.md). null: when the "
        "process may use two CPUs or more.",
        nullable=True,
    )


@dataclass(frozen=True)
class EntityConfig:
    """``model.entity``: one adapted model per entity (``features.key``)."""

    enabled: bool = _key(
        Bool(),
        False,
        "true: each entity (the value of features.key) gets its own model, adapted from the "
        "population mixture (GMM-UBM), so what is odd for one host is found even when it "
        "is normal for the population. Needs features.key.",
    )
    min_events: int = _key(
        Int(ge=1),
        ENTITY_DEFAULTS.min_events,
        "Events of an entity before its own model scores it (at least sqrt(8 d) for d "
        "fields: a young model's variances bias its scores by about d / n nats); before "
        "that, the population model does (a brand-new entity is judged from its first "
        "event).",
    )
    relevance: float = _key(
        Float(gt=0),
        ENTITY_DEFAULTS.relevance,
        "MAP relevance factor r: a component's statistics of an entity weigh n / (n + r) "
        "against the population's. Smaller adapts sooner, larger trusts the population longer.",
    )
    max_entities: int = _key(
        Int(ge=1),
        ENTITY_DEFAULTS.max_entities,
        "Entities held per model (per input partition with checkpoint.topic); past it, "
        "the least active (decayed activity, so a burst of one-off keys cannot push out "
        "busy entities) are evicted and start again from the population if they return.",
    )
    idle_ttl_s: float | None = _key(
        Float(gt=0),
        ENTITY_DEFAULTS.idle_ttl_s,
        "Seconds without an event after which an entity is dropped; null keeps it until "
        "the cap evicts it.",
        nullable=True,
    )


@dataclass(frozen=True)
class ModelConfig:
    """``model``: the online Gaussian mixture."""

    n_components: int | str = _key(
        IntOrAuto(ge=1),
        MODEL_DEFAULTS.n_components,
        'Number of mixture components, or "auto" to choose 1..max_components by BIC '
        "on the warm-up events.",
    )
    max_components: int = _key(
        Int(ge=1, le=256),
        MODEL_DEFAULTS.max_components,
        'Largest number of components tried by "auto".',
    )
    covariance_type: str = _key(
        Choice(values=("full", "diag", "spherical")),
        MODEL_DEFAULTS.covariance_type,
        "Shape of each component: diag (independent fields within a component; the "
        "default, as it detects best on real data: correlations are carried by several "
        "components), full (correlated fields, more parameters to learn from the "
        "warm-up), spherical (one variance per component).",
    )
    warmup: int = _key(
        Int(ge=MIN_WARMUP),
        MODEL_DEFAULTS.warmup,
        "The first events, scored one by one by a Gaussian KDE of the kept events before "
        "each (flagged, after 50, when far out even for their running Gaussian, and left "
        "out), then fitted by batch EM; counted as warm-up.",
    )
    standardize: bool = _key(
        Bool(),
        MODEL_DEFAULTS.standardize,
        "Scale each field by its warm-up mean and standard deviation (then fixed), so "
        "fields in different units weigh alike.",
    )
    learn_from_outliers: bool = _key(
        Bool(),
        MODEL_DEFAULTS.learn_from_outliers,
        "Also learn from flagged events. Off, an attack cannot teach the model that it is normal.",
    )
    reg_covar: float = _key(
        Float(gt=0),
        MODEL_DEFAULTS.reg_covar,
        "Covariance floor added to each component, in standardised units: keeps "
        "components from collapsing onto repeated values.",
    )
    half_life: int | None = _key(
        Int(gt=0),
        MODEL_DEFAULTS.half_life,
        "Forgetting: events after which an event's weight in the model halves, for "
        "drifting streams; null never forgets.",
        nullable=True,
    )
    n_init: int = _key(
        Int(ge=1, le=100),
        MODEL_DEFAULTS.n_init,
        "k-means++ starts of each batch fit (the warm-up, a new regime); the best "
        "wins. More make the first mixture depend less on the seed, once, at a cost.",
    )
    random_state: int | None = _key(
        Int(ge=0),
        MODEL_DEFAULTS.random_state,
        "Seed for initialisation; null for a random one.",
        nullable=True,
    )
    entity: EntityConfig = _key(
        Section(cls=EntityConfig), None, "Per-entity models adapted from the population."
    )


@dataclass(frozen=True)
class ThresholdConfig:
    """``threshold``: when an event is an outlier."""

    kind: str = _key(
        Choice(values=("quantile", "loglik", "chi2")),
        "quantile",
        "quantile: score above a streaming quantile of recent inlier scores; loglik: "
        "log-likelihood below a fixed floor; chi2: squared Mahalanobis distance to the "
        "best component above the chi-square quantile.",
    )
    quantile: float = _key(
        Float(gt=0, lt=1),
        0.999,
        "For kind quantile: the inlier score quantile to flag above (0.999 flags about "
        "1 event in 1000 on a stationary stream).",
    )
    loglik: float | None = _key(
        Float(),
        None,
        "For kind loglik (required there): flag events whose log-likelihood is below it.",
        nullable=True,
    )
    probability: float = _key(
        Float(gt=0, lt=1),
        0.9999,
        "For kind chi2: the chi-square probability (with as many degrees of freedom as "
        "fields) to flag above.",
    )


@dataclass(frozen=True)
class KafkaSinkConfig:
    """``sink.kafka``: the Kafka producer."""

    bootstrap_servers: tuple[str, ...] | None = _key(
        StrList(item=_HOSTPORT),
        None,
        "Brokers for the output topics; null uses source.kafka.bootstrap_servers.",
        nullable=True,
    )
    topic: str = _key(_TOPIC, "outliers", "Topic outlier records are written to.")
    dead_letter_topic: str = _key(
        _TOPIC,
        "streamgmm-dead-letter",
        "Topic for events that cannot be used, with the reason.",
    )
    scores_topic: str | None = _key(
        _TOPIC,
        None,
        "Optional topic receiving every event's log-likelihood and soft membership (the "
        "clustering view of the stream); null disables it.",
        nullable=True,
    )
    client: Mapping[str, Any] = _key(
        FreeMapping(),
        types.MappingProxyType({}),
        "Extra kafka-python KafkaProducer options (security_protocol, sasl_*, ssl_*, "
        "delivery_timeout_ms, compression_type, ...). acks is always all.",
    )


@dataclass(frozen=True)
class FileSinkConfig:
    """``sink.file``: JSONL output files."""

    path: str = _key(Str(), "-", 'Outlier records, one JSON per line; "-" is standard output.')
    dead_letter_path: str | None = _key(
        Str(),
        None,
        "Dead-letter records; null writes them to standard error.",
        nullable=True,
    )
    scores_path: str | None = _key(
        Str(),
        None,
        "Optional file for every event's score record; null disables it.",
        nullable=True,
    )


@dataclass(frozen=True)
class SinkConfig:
    """``sink``: where records go."""

    kind: str = _key(Choice(values=("kafka", "file")), "kafka", "kafka, or file (JSONL).")
    kafka: KafkaSinkConfig = _key(Section(cls=KafkaSinkConfig), None, "Kafka producer.")
    file: FileSinkConfig = _key(Section(cls=FileSinkConfig), None, "File output.")


@dataclass(frozen=True)
class CheckpointConfig:
    """``checkpoint``: the model and offsets, saved atomically."""

    path: str | None = _key(
        Str(),
        "/var/lib/streamgmm/model.npz",
        "Checkpoint file (.npz, written atomically) for one process; null disables "
        "it (a restart then starts a new model, unless topic is set).",
        nullable=True,
    )
    topic: str | None = _key(
        _TOPIC,
        None,
        "Compacted Kafka topic holding the state per input partition (model, threshold, "
        "entities, next offset); the state follows the partitions, so several instances "
        "in one group split the work. Created if missing. Exclusive with path (set path: "
        "null); Kafka source only.",
        nullable=True,
    )
    interval_s: float = _key(
        Float(gt=0),
        10.0,
        "Seconds between checkpoints; offsets are committed right after each one.",
    )
    on_mismatch: str = _key(
        Choice(values=("refuse", "fresh")),
        "refuse",
        "A checkpoint written for another configuration: refuse to start, or start a "
        "fresh model (logged loudly).",
    )
    on_corrupt: str = _key(
        Choice(values=("refuse", "fresh")),
        "refuse",
        "A damaged checkpoint: refuse to start, or start a fresh model (logged loudly).",
    )


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics``: the Prometheus /metrics, /healthz and /readyz HTTP server."""

    host: str = _key(
        Str(),
        "127.0.0.1",
        "Address to listen on; loopback by default, 0.0.0.0 exposes it to the network.",
    )
    port: int = _key(Int(ge=0, le=65535), 9108, "TCP port; 0 disables the server.")


@dataclass(frozen=True)
class LogConfig:
    """``log``: logging to standard error."""

    level: str = _key(
        Choice(values=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), upper=True),
        "INFO",
        "Least severe level written.",
    )
    format: str = _key(
        Choice(values=("auto", "json", "text")),
        "auto",
        "json (one object per line, for log shippers), text, or auto: text on a "
        "terminal, json otherwise.",
    )


@dataclass(frozen=True)
class Config:
    """The whole streamgmm configuration (see ``config/streamgmm.yaml``)."""

    source: SourceConfig = _key(Section(cls=SourceConfig), None, "Where events come from.")
    features: FeaturesConfig = _key(
        Section(cls=FeaturesConfig), None, "Which fields of each event are scored."
    )
    model: ModelConfig = _key(Section(cls=ModelConfig), None, "The online Gaussian mixture.")
    threshold: ThresholdConfig = _key(
        Section(cls=ThresholdConfig), None, "When an event is an outlier."
    )
    sink: SinkConfig = _key(Section(cls=SinkConfig), None, "Where records go.")
    checkpoint: CheckpointConfig = _key(
        Section(cls=CheckpointConfig), None, "Model and offsets saved atomically."
    )
    metrics: MetricsConfig = _key(Section(cls=MetricsConfig), None, "Prometheus HTTP server.")
    log: LogConfig = _key(Section(cls=LogConfig), None, "Logging.")
