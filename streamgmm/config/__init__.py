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

The package, one job per module: :mod:`~streamgmm.config.schema` (the keys,
the module a contributor edits), :mod:`~streamgmm.config.kinds` (what a key
accepts), :mod:`~streamgmm.config.env` (``${VAR}`` expansion),
:mod:`~streamgmm.config.loader` (YAML to :class:`Config`, :class:`ConfigError`),
:mod:`~streamgmm.config.checks` (rules across keys),
:mod:`~streamgmm.config.dump` (plain and redacted dumps) and
:mod:`~streamgmm.config.reference` (the generated reference).

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

from .dump import as_dict, redacted
from .loader import ConfigError, load_config, parse_config
from .reference import iter_keys, reference_markdown
from .schema import (
    CheckpointConfig,
    Config,
    FeaturesConfig,
    FileSinkConfig,
    FileSourceConfig,
    KafkaSinkConfig,
    KafkaSourceConfig,
    LogConfig,
    MetricsConfig,
    ModelConfig,
    SinkConfig,
    SourceConfig,
    ThresholdConfig,
)

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
