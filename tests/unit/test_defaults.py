"""One default per model parameter: the library, the detector and the config read one table."""

import dataclasses
import inspect

import numpy as np
import pytest

from streamgmm.config import ConfigError, ModelConfig, parse_config
from streamgmm.config.schema import EntityConfig
from streamgmm.defaults import ENTITY_DEFAULTS, MIN_WARMUP, MODEL_DEFAULTS
from streamgmm.detector import Detector
from streamgmm.gmm import OnlineGaussianMixture


def signature_defaults(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()}


def test_every_default_of_the_table_is_the_config_detector_and_model_default():
    config_defaults = {f.name: f.metadata["default"] for f in dataclasses.fields(ModelConfig)}
    detector, model = signature_defaults(Detector), signature_defaults(OnlineGaussianMixture)
    for field in dataclasses.fields(MODEL_DEFAULTS):
        value = getattr(MODEL_DEFAULTS, field.name)
        assert config_defaults[field.name] == value, field.name
        assert detector[field.name] == value, field.name
        if field.name in model:
            assert model[field.name] == value, field.name
    sections = {"entity"}
    assert set(config_defaults) - sections == {f.name for f in dataclasses.fields(MODEL_DEFAULTS)}


def test_every_entity_default_is_the_config_and_detector_default():
    config_defaults = {f.name: f.metadata["default"] for f in dataclasses.fields(EntityConfig)}
    detector = signature_defaults(Detector)
    detector_names = {"min_events": "min_entity_events"}
    for field in dataclasses.fields(ENTITY_DEFAULTS):
        value = getattr(ENTITY_DEFAULTS, field.name)
        assert config_defaults[field.name] == value, field.name
        assert detector[detector_names.get(field.name, field.name)] == value, field.name
    assert set(config_defaults) - {"enabled"} == {
        f.name for f in dataclasses.fields(ENTITY_DEFAULTS)
    }


def test_warmup_has_one_lower_bound_everywhere():
    below = MIN_WARMUP - 1
    with pytest.raises(ConfigError) as info:
        parse_config({"features": {"fields": ["a"]}, "model": {"warmup": below}}, env={})
    assert info.value.errors == (f"model.warmup: must be >= {MIN_WARMUP}, got {below}",)
    with pytest.raises(ValueError, match=f"warmup must be >= {MIN_WARMUP}"):
        Detector(warmup=below)
    with pytest.raises(ValueError, match=f"warmup must be >= {MIN_WARMUP}"):
        OnlineGaussianMixture(warmup=below).fit(np.zeros((5, 2)))
    Detector(warmup=MIN_WARMUP)
    OnlineGaussianMixture(n_components=1, warmup=MIN_WARMUP).fit(np.eye(3))
