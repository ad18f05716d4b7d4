"""Config: every key validated, every error names its key and says what to do."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from streamgmm import config as C
from streamgmm.config import ConfigError, load_config, parse_config
from streamgmm.defaults import ENTITY_DEFAULTS

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "config" / "streamgmm.yaml"
MINIMAL = {"features": {"fields": ["cpu", "mem"]}}


def errors_of(raw, env=None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env or {})
    return info.value.errors


def with_(path: str, value, base=None) -> dict:
    """MINIMAL with ``path`` (dotted) set to ``value``."""
    raw = yaml.safe_load(yaml.safe_dump(base or MINIMAL))
    node = raw
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return raw


# ---------------------------------------------------------------------------
# the reference file and defaults


def test_reference_yaml_loads():
    cfg = load_config(REFERENCE, env={})
    assert cfg.features.fields == ("cpu", "mem", "latency_ms")
    assert cfg.features.key == "host"
    assert cfg.source.kafka.topic == "events"


def test_reference_yaml_lists_every_key_with_its_default():
    raw = yaml.safe_load(REFERENCE.read_text())
    for path, f in C.iter_keys():
        node = raw
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"{path} missing from {REFERENCE}"
            node = node[part]
        if f.name == "fields" or path == "features.key":
            continue  # the example's own choice (fields has no default)
        default = f.metadata["default"]
        if isinstance(default, tuple):
            default = list(default)
        if hasattr(default, "items"):
            default = dict(default)
        assert node == default, f"{path}: reference says {node!r}, default is {default!r}"


def test_reference_yaml_comments_every_key():
    lines = REFERENCE.read_text().splitlines()
    for path, _ in C.iter_keys():
        name = path.rsplit(".", 1)[-1]
        idx = [i for i, line in enumerate(lines) if re.match(rf"\s*{name}:", line)]
        assert idx, path
        commented = any(
            "#" in lines[i] or (i > 0 and lines[i - 1].strip().startswith("#")) for i in idx
        )
        assert commented, f"{path} has no comment in {REFERENCE}"


def test_defaults_match_the_design():
    cfg = parse_config(MINIMAL, env={})
    assert cfg.model.n_components == "auto" and cfg.model.max_components == 6
    assert cfg.model.covariance_type == "diag" and cfg.model.warmup == 500
    assert cfg.model.standardize is True and cfg.model.learn_from_outliers is False
    assert cfg.model.reg_covar == 0.05 and cfg.model.half_life is None

    assert cfg.threshold.kind == "quantile" and cfg.threshold.quantile == 0.999
    assert cfg.threshold.probability == 0.9999
    assert cfg.checkpoint.interval_s == 10 and cfg.checkpoint.on_mismatch == "refuse"
    assert cfg.checkpoint.on_corrupt == "refuse"
    assert cfg.metrics.host == "127.0.0.1" and cfg.metrics.port == 9108
    assert cfg.log.level == "INFO" and cfg.log.format == "auto"
    assert cfg.source.kafka.max_message_bytes == 1 << 20
    assert cfg.sink.file.scores_path is None


def test_config_is_frozen():
    cfg = parse_config(MINIMAL, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.warmup = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.source.kafka.client["x"] = 1  # type: ignore[index]


def test_reference_markdown_lists_every_key():
    text = C.reference_markdown()
    for path, _ in C.iter_keys():
        assert f"`{path}`" in text
    assert "*required*" in text


# ---------------------------------------------------------------------------
# every error names the full key path


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("model.covariance_type", "ful", "must be one of full, diag, spherical, got 'ful'"),
        ("model.n_components", 0, 'must be an integer >= 1 or "auto"'),
        ("model.n_components", "many", "or \"auto\", got 'many'"),
        ("model.max_components", 0, "must be >= 1"),
        ("model.warmup", 1, "must be >= 2"),
        ("model.warmup", True, "must be an integer, got true"),
        ("model.warmup", 2.5, "must be an integer"),
        ("model.standardize", "yes please", "must be true or false"),
        ("model.learn_from_outliers", 1, "must be true or false"),
        ("model.reg_covar", 0, "must be > 0"),
        ("model.reg_covar", ".1", "must be a number"),
        ("model.half_life", 0, "must be > 0"),
        ("model.random_state", -1, "must be >= 0"),
        ("threshold.kind", "zscore", "must be one of quantile, loglik, chi2"),
        ("threshold.quantile", 1.0, "must be < 1"),
        ("threshold.quantile", 0, "must be > 0"),
        ("threshold.probability", 1.5, "must be < 1"),
        ("threshold.loglik", "low", "must be a number"),
        ("checkpoint.interval_s", 0, "must be > 0"),
        ("checkpoint.on_mismatch", "ignore", "must be one of refuse, fresh"),
        ("checkpoint.on_corrupt", None, "must not be null"),
        ("metrics.port", 65536, "must be <= 65535"),
        ("metrics.port", "9108", "must be an integer, got '9108'"),
        ("metrics.host", 5, "must be a string"),
        ("log.level", "LOUD", "must be one of DEBUG, INFO"),
        ("log.format", "xml", "must be one of auto, json, text"),
        ("source.kind", "s3", "must be one of kafka, file"),
        ("source.kafka.topic", "bad topic", "Kafka topic names use only"),
        ("source.kafka.topic", "", "must not be empty"),
        ("source.kafka.group_id", None, "must not be null"),
        ("source.kafka.auto_offset_reset", "none", "must be one of earliest, latest"),
        ("source.kafka.max_poll_records", 0, "must be >= 1"),
        ("source.kafka.max_message_bytes", -5, "must be >= 1"),
        ("source.kafka.client", [1], "must be a mapping"),
        ("source.file.format", "csv", "must be one of jsonl"),
        ("sink.kind", "http", "must be one of kafka, file"),
        ("sink.kafka.dead_letter_topic", "a/b", "Kafka topic names use only"),
        ("sink.kafka.scores_topic", 3, "must be a string"),
        ("sink.file.path", None, "must not be null"),
        ("features.fields", [], "must list at least 1 item"),
        ("features.fields", {"a": 1}, "must be a list of strings"),
        ("features.key", "a..b", "not valid"),
        ("model", [1, 2], "must be a mapping of keys"),
    ],
)
def test_bad_value_error_names_the_key(path, value, expected):
    errors = errors_of(with_(path, value))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}: "), errors[0]
    assert expected in errors[0]


def test_bad_list_item_names_its_index():
    (error,) = errors_of(with_("source.kafka.bootstrap_servers", ["a:1", "nohost"]))
    assert error.startswith("source.kafka.bootstrap_servers[1]: ")
    assert "host:port" in error
    (error,) = errors_of(with_("features.fields", ["cpu", 3]))
    assert error.startswith("features.fields[1]: must be a string")
    (error,) = errors_of(with_("features.fields", ["cpu", "mem", "cpu"]))
    assert error.startswith("features.fields[2]: 'cpu' is listed twice")


@pytest.mark.parametrize(
    "path", ["modle", "model.warmpu", "source.kafka.topics", "sink.file.dead_letters", "x"]
)
def test_unknown_key_is_an_error_with_a_hint(path):
    (error,) = errors_of(with_(path, 1))
    assert error.startswith(f"{path}: unknown key; ")
    assert "valid keys here:" in error


def test_unknown_key_suggests_the_close_spelling():
    (error,) = errors_of(with_("model.warmpu", 10))
    assert "did you mean 'warmup'?" in error


def test_missing_fields_is_required():
    (error,) = errors_of({"model": {"warmup": 10}})
    assert error.startswith("features.fields: is required")


def test_empty_config_is_an_error():
    with pytest.raises(ConfigError, match="empty"):
        parse_config(None, env={})


def test_all_errors_are_reported_at_once():
    errors = errors_of(
        {
            "features": {"fields": ["x"]},
            "model": {"warmup": 1, "covariance_type": "x"},
            "metrics": {"port": -1},
        }
    )
    assert [e.split(":")[0] for e in errors] == [
        "model.covariance_type",
        "model.warmup",
        "metrics.port",
    ]


# ---------------------------------------------------------------------------
# cross-key checks


def test_loglik_threshold_requires_its_value():
    (error,) = errors_of(with_("threshold.kind", "loglik"))
    assert error.startswith("threshold.loglik: is required when threshold.kind is loglik")
    cfg = parse_config(with_("threshold", {"kind": "loglik", "loglik": -20}), env={})
    assert cfg.threshold.loglik == -20.0


def test_warmup_must_cover_the_components():
    raw = with_("model", {"n_components": 10, "warmup": 5})
    (error,) = errors_of(raw)
    assert error.startswith("model.warmup: must be at least model.n_components (10)")
    (error,) = errors_of(with_("model", {"max_components": 20, "warmup": 10}))
    assert error.startswith("model.warmup: must be at least model.max_components (20)")


def test_outlier_topic_must_not_be_the_input_topic():
    (error,) = errors_of(with_("sink.kafka.topic", "events"))
    assert error.startswith("sink.kafka.topic: 'events' is the input topic")
    # another cluster: allowed
    raw = with_("sink.kafka", {"topic": "events", "bootstrap_servers": ["other:9092"]})
    assert parse_config(raw, env={}).sink.kafka.topic == "events"


def test_output_topics_must_differ():
    (error,) = errors_of(with_("sink.kafka", {"topic": "x", "scores_topic": "x"}))
    assert error.startswith("sink.kafka.scores_topic: 'x' is also sink.kafka.topic")


def test_output_files_must_differ():
    raw = with_(
        "sink", {"kind": "file", "file": {"path": "o.jsonl", "dead_letter_path": "o.jsonl"}}
    )
    (error,) = errors_of(raw)
    assert error.startswith("sink.file.dead_letter_path: 'o.jsonl' is also sink.file.path")


# ---------------------------------------------------------------------------
# kafka-python passthrough options


def test_client_options_pass_through():
    raw = with_(
        "source.kafka.client", {"security_protocol": "SASL_SSL", "session_timeout_ms": 6000}
    )
    raw = with_("sink.kafka.client", {"enable_idempotence": False, "linger_ms": 5}, raw)
    cfg = parse_config(raw, env={})
    assert dict(cfg.source.kafka.client) == {
        "security_protocol": "SASL_SSL",
        "session_timeout_ms": 6000,
    }
    assert dict(cfg.sink.kafka.client) == {"enable_idempotence": False, "linger_ms": 5}


@pytest.mark.parametrize(
    ("path", "option", "value", "expected"),
    [
        (
            "source.kafka.client",
            "session_timout_ms",
            1,
            "not a kafka-python KafkaConsumer option; did you mean 'session_timeout_ms'?",
        ),
        ("source.kafka.client", "group_id", "g", "set source.kafka.group_id instead"),
        ("source.kafka.client", "enable_auto_commit", True, "streamgmm commits offsets itself"),
        ("source.kafka.client", "session_timeout_ms", "6000", "must be a number"),
        ("source.kafka.client", "check_crcs", 1, "must be true or false"),
        ("source.kafka.client", "selector", "x", "Python object"),
        ("sink.kafka.client", "acks", 1, "always uses acks=all"),
        ("sink.kafka.client", "delivery_timeout", 1, "not a kafka-python KafkaProducer option"),
        ("sink.kafka.client", "bootstrap_servers", "x:1", "set sink.kafka.bootstrap_servers"),
    ],
)
def test_bad_client_option_names_the_key(path, option, value, expected):
    (error,) = errors_of(with_(f"{path}.{option}", value))
    assert error.startswith(f"{path}.{option}: "), error
    assert expected in error


def test_session_timeout_must_exceed_the_heartbeat():
    (error,) = errors_of(with_("source.kafka.client.session_timeout_ms", 3000))
    assert error.startswith(
        "source.kafka.client.session_timeout_ms: must be greater than heartbeat_interval_ms (3000)"
    )
    raw = with_("source.kafka.client", {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500})
    assert parse_config(raw, env={}).source.kafka.client["session_timeout_ms"] == 3000


# ---------------------------------------------------------------------------
# environment variables


def test_env_vars_are_expanded_in_strings():
    raw = with_("source.kafka", {"topic": "${TOPIC}", "group_id": "gmm-${ENVIRONMENT}"})
    cfg = parse_config(raw, env={"TOPIC": "metrics", "ENVIRONMENT": "prod"})
    assert cfg.source.kafka.topic == "metrics" and cfg.source.kafka.group_id == "gmm-prod"


def test_env_default_is_used_when_unset_or_empty():
    raw = with_("source.kafka.topic", "${TOPIC:-fallback}")
    assert parse_config(raw, env={}).source.kafka.topic == "fallback"
    assert parse_config(raw, env={"TOPIC": ""}).source.kafka.topic == "fallback"
    assert parse_config(raw, env={"TOPIC": "t"}).source.kafka.topic == "t"


def test_env_numbers_and_lists_are_typed():
    raw = with_("metrics.port", "${PORT}")
    raw = with_("model.standardize", "${STD:-false}", raw)
    raw = with_("source.kafka.bootstrap_servers", "${BOOTSTRAP}", raw)
    raw = with_("source.kafka.client.session_timeout_ms", "${SESSION_MS}", raw)
    raw = with_("source.kafka.client.sasl_plain_password", "${PASSWORD}", raw)
    env = {
        "PORT": "9200",
        "BOOTSTRAP": "k1:9092, k2:9092",
        "SESSION_MS": "6000",
        "PASSWORD": "12345",
    }
    cfg = parse_config(raw, env=env)
    assert cfg.metrics.port == 9200 and cfg.model.standardize is False
    assert cfg.source.kafka.bootstrap_servers == ("k1:9092", "k2:9092")
    assert cfg.source.kafka.client["session_timeout_ms"] == 6000
    # a password that looks like a number stays a string
    assert cfg.source.kafka.client["sasl_plain_password"] == "12345"


def test_env_value_of_the_wrong_type_is_an_error():
    (error,) = errors_of(with_("metrics.port", "${PORT}"), env={"PORT": "http"})
    assert error.startswith("metrics.port: must be an integer, got 'http'")


def test_missing_env_var_names_the_key_and_the_variable():
    raw = with_("sink.kafka.client.sasl_plain_password", "${KAFKA_PASSWORD}")
    (error,) = errors_of(raw)
    assert error.startswith(
        "sink.kafka.client.sasl_plain_password: environment variable KAFKA_PASSWORD is not set"
    )
    assert "${KAFKA_PASSWORD:-default}" in error
    (error,) = errors_of(with_("features.fields", ["cpu", "${SECOND}"]))
    assert error.startswith("features.fields[1]: environment variable SECOND is not set")


def test_malformed_reference_is_an_error_and_dollar_dollar_escapes():
    (error,) = errors_of(with_("source.kafka.group_id", "${1BAD}"))
    assert error.startswith("source.kafka.group_id: ${1BAD} is not a valid reference")
    cfg = parse_config(with_("source.kafka.group_id", "a$${B}c$d"), env={})
    assert cfg.source.kafka.group_id == "a${B}c$d"


# ---------------------------------------------------------------------------
# redaction


def test_redacted_dump_hides_secrets_and_keeps_the_rest():
    raw = with_(
        "source.kafka.client",
        {
            "sasl_plain_username": "gmm",
            "sasl_plain_password": "s3cret",
            "ssl_keyfile": "/k.pem",
            "ssl_password": "p",
            "ssl_cafile": "/ca.pem",
        },
    )
    raw = with_("sink.kafka.client", {"sasl_plain_password": "s3cret"}, raw)
    cfg = parse_config(raw, env={})
    dump = C.redacted(cfg)
    client = dump["source"]["kafka"]["client"]
    assert client == {
        "sasl_plain_username": "gmm",
        "sasl_plain_password": "***",
        "ssl_keyfile": "***",
        "ssl_password": "***",
        "ssl_cafile": "/ca.pem",
    }
    assert dump["sink"]["kafka"]["client"] == {"sasl_plain_password": "***"}
    assert "s3cret" not in yaml.safe_dump(dump)
    assert dump["features"]["fields"] == ["cpu", "mem"]  # plain lists, YAML-able
    assert C.as_dict(cfg)["source"]["kafka"]["client"]["sasl_plain_password"] == "s3cret"


def test_redacted_dump_round_trips_through_parse():
    cfg = parse_config(with_("model.n_components", 3), env={})
    again = parse_config(C.as_dict(cfg), env={})
    assert again == cfg


# ---------------------------------------------------------------------------
# files


def test_load_config_reports_yaml_syntax_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("features:\n  fields: [cpu\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


def test_load_config_refuses_duplicate_keys(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("features:\n  fields: [a]\nmodel:\n  warmup: 10\n  warmup: 20\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'warmup' \(first on line 4\)"):
        load_config(path, env={})


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.yaml", env={})


def test_load_config_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path, env={})


def test_load_config_expands_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "env.yaml"
    path.write_text("features:\n  fields: [a]\nsource:\n  kafka:\n    topic: ${GMM_TOPIC}\n")
    monkeypatch.setenv("GMM_TOPIC", "from-env")
    assert load_config(path).source.kafka.topic == "from-env"


def test_docs_configuration_md_is_the_generated_reference():
    path = REPO / "docs" / "configuration.md"
    assert path.read_text() == C.reference_markdown(), (
        "docs/configuration.md is stale: regenerate it with "
        "python -c 'from streamgmm import config; print(config.reference_markdown(), end=\"\")'"
        " > docs/configuration.md"
    )


def test_model_defaults_are_the_detectors():
    import inspect

    from streamgmm.detector import Detector

    defaults = {name: p.default for name, p in inspect.signature(Detector).parameters.items()}
    model = parse_config(MINIMAL, env={}).model
    for name in (
        "n_components",
        "max_components",
        "covariance_type",
        "warmup",
        "standardize",
        "learn_from_outliers",
        "reg_covar",
        "half_life",
    ):
        assert getattr(model, name) == defaults[name], name


def test_entity_models_need_the_key():
    (error,) = errors_of(with_("model.entity.enabled", True))
    assert error.startswith("model.entity.enabled: per-entity models need the entity id")
    raw = with_("features.key", "host", with_("model.entity.enabled", True))
    cfg = parse_config(raw, env={})
    assert cfg.model.entity.enabled and cfg.model.entity.min_events == ENTITY_DEFAULTS.min_events


def test_state_topic_is_exclusive_with_the_file():
    (error,) = errors_of(with_("checkpoint.topic", "streamgmm-state"))
    assert error.startswith("checkpoint.topic: is exclusive with checkpoint.path")
    assert "checkpoint.path: null" in error
    raw = with_("checkpoint", {"topic": "streamgmm-state", "path": None})
    assert parse_config(raw, env={}).checkpoint.topic == "streamgmm-state"


def test_state_topic_needs_a_kafka_source_and_its_own_topic():
    base = with_("checkpoint", {"topic": "outliers", "path": None})
    (error,) = errors_of(base)
    assert error == (
        "checkpoint.topic: 'outliers' is also sink.kafka.topic; give the state its own topic"
    )
    raw = with_(
        "source", {"kind": "file", "file": {"path": "-"}}, with_("checkpoint.topic", "s", base)
    )
    (error,) = errors_of(raw)
    assert error.startswith("checkpoint.topic: the state topic follows the partitions")
