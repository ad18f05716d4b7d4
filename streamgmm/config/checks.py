"""The cross-key checks: rules that no single key's kind can enforce.

A threshold kind that needs another key, a warm-up long enough for the
components, kafka-python passthrough options checked against the library's
own defaults, output topics and files distinct from each other and from the
input. Each check appends its messages to the list of errors, so that a file
gets every error at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Mapping
from typing import Any

from .env import _expand_tree, _scalar_from_env
from .kinds import _Invalid, _show
from .schema import Config


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
    _check_state(cfg, errors)
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


def _check_state(cfg: Config, errors: list[str]) -> None:
    """Where the state goes (one file, or the compacted topic) and per-entity models."""
    checkpoint, source, sink = cfg.checkpoint, cfg.source, cfg.sink
    if cfg.model.entity.enabled and cfg.features.key is None:
        errors.append(
            "model.entity.enabled: per-entity models need the entity id; set features.key "
            "to the field that names the entity (e.g. host), or set enabled: false"
        )
    topic = checkpoint.topic
    if topic is None:
        return
    if checkpoint.path is not None:
        errors.append(
            "checkpoint.topic: is exclusive with checkpoint.path (one file for one process, "
            "or the compacted topic for a group); set checkpoint.path: null to keep the "
            "state in the topic"
        )
    if source.kind != "kafka":
        errors.append(
            "checkpoint.topic: the state topic follows the partitions of a Kafka source; "
            "with source.kind file, use checkpoint.path instead"
        )
        return
    others = {"source.kafka.topic": source.kafka.topic}
    if sink.kind == "kafka":
        others |= {
            "sink.kafka.topic": sink.kafka.topic,
            "sink.kafka.dead_letter_topic": sink.kafka.dead_letter_topic,
            "sink.kafka.scores_topic": sink.kafka.scores_topic,
        }
    for key, other in others.items():
        if other == topic:
            errors.append(
                f"checkpoint.topic: {topic!r} is also {key}; give the state its own topic"
            )
