"""The defaults of the model's parameters, in one place.

:class:`~streamgmm.gmm.OnlineGaussianMixture`, :class:`~streamgmm.detector.Detector`
and the configuration's ``model`` section (:class:`~streamgmm.config.ModelConfig`,
hence the daemon's ``build_detector``) all read their defaults from
:data:`MODEL_DEFAULTS`: changing one here changes it everywhere (then
regenerate docs/configuration.md and check config/streamgmm.yaml, whose tests
say when they are stale). Why each value was chosen is in CHANGELOG.md and
benchmarks/README.md.

Pure Python: the configuration imports it without numpy.

>>> MODEL_DEFAULTS.covariance_type, MODEL_DEFAULTS.reg_covar, MIN_WARMUP
('diag', 0.05, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ENTITY_DEFAULTS", "MIN_WARMUP", "MODEL_DEFAULTS", "EntityDefaults", "ModelDefaults"]

#: Fewest warm-up events: a variance needs two.
MIN_WARMUP = 2


@dataclass(frozen=True)
class ModelDefaults:
    """One default per model parameter (see the estimators' docstrings for their meaning)."""

    n_components: int | str = "auto"
    max_components: int = 6
    covariance_type: str = "diag"
    reg_covar: float = 0.05  # in standardised units, as the Detector feeds the model
    warmup: int = 500
    n_init: int = 10  # k-means++ starts per batch fit: the first mixture depends less on the seed
    half_life: float | None = None
    standardize: bool = True
    learn_from_outliers: bool = False
    random_state: int | None = None


MODEL_DEFAULTS = ModelDefaults()


@dataclass(frozen=True)
class EntityDefaults:
    """One default per parameter of the per-entity models (the config's ``model.entity``;
    the Detector's ``min_entity_events``, ``relevance``, ``max_entities``, ``idle_ttl_s``)."""

    # 5 or 10 find more host anomalies when hosts have few events each (2,000 hosts of
    # 40: AUC 0.97 / 0.96 against 0.89, benchmarks/entities.py), but with 5 hosts joining
    # a long-running detector get their 6th-10th normal events flagged at 2-4% (judged
    # against the threshold learnt from mature hosts' models), and with 10 a host
    # unusual for the population, or wide events whose keys spread over components,
    # are flagged for hundreds of events (tests in test_entities.py); 20 does neither
    min_events: int = 20
    relevance: float = 0.5  # chosen by measurement: benchmarks/entities.py
    max_entities: int = 1_000_000
    idle_ttl_s: float | None = None


ENTITY_DEFAULTS = EntityDefaults()
