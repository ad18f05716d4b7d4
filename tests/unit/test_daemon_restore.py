"""restore(): a damaged or foreign checkpoint refuses the start, or gives way to a fresh
model when the config says so; in-process, no broker.

tests/integration/test_reliability_state.py runs ``streamgmm run`` once on a refused
checkpoint for the exit code a service manager sees.
"""

from __future__ import annotations

import io
import logging

import pytest

from streamgmm.config import parse_config
from streamgmm.daemon import Daemon, FatalError, restore
from streamgmm.sinks import FileSink
from tests.support.checkpoints import DAMAGE, truncate, write_checkpoint
from tests.support.scripted import ScriptedSource


def config_for(tmp_path, **overrides):
    """A config with its checkpoint under ``tmp_path``; ``section__key=value`` overrides."""
    raw = {
        "source": {"kind": "kafka", "kafka": {"topic": "events"}},
        "features": {"fields": ["a", "b", "c"]},
        "model": {"warmup": 300, "random_state": 0, "n_components": 2},
        "checkpoint": {"path": str(tmp_path / "state" / "model.npz")},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = value
    return parse_config(raw, env={})


def rejected_files(path):
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.rejected-"))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_refuses_the_start_and_names_the_keys(tmp_path, damage):
    config = config_for(tmp_path)
    path = write_checkpoint(config)
    DAMAGE[damage](path)
    before = path.read_bytes()
    with pytest.raises(FatalError) as refused:
        restore(config)
    message = str(refused.value)
    assert message.startswith("checkpoint.path: ") and str(path) in message
    assert "checkpoint.on_corrupt: fresh" in message  # the way out
    assert "pickle" not in message  # numpy's hint to load a stranger's file unsafely
    assert path.read_bytes() == before, "a refused checkpoint must be left as it was"
    assert rejected_files(path) == []


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_with_on_corrupt_fresh_starts_a_new_model_loudly(
    tmp_path, caplog, damage
):
    config = config_for(tmp_path, checkpoint__on_corrupt="fresh")
    path = write_checkpoint(config)
    DAMAGE[damage](path)
    damaged = path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="streamgmm"):
        restored = restore(config)
    assert restored.rejected == "corrupt"
    assert restored.detector.n_seen == 0 and len(restored.offsets) == 0
    assert not path.exists()
    (kept,) = rejected_files(path)
    assert kept.read_bytes() == damaged, "the bad file is kept aside, as it was"
    (loud,) = [r for r in caplog.records if "STARTING A FRESH MODEL" in r.getMessage()]
    assert loud.levelno == logging.ERROR and str(kept) in loud.getMessage()


MISMATCH = {
    "fields": ({"features__fields": ["a", "b"]},
               "fields: file ['a', 'b', 'c'] vs config ['a', 'b']"),
    "n_components": ({"model__n_components": 3}, "n_components: file 2 vs config 3"),
    "covariance_type": ({"model__covariance_type": "full"},
                        "covariance_type: file 'diag' vs config 'full'"),
}  # fmt: skip


@pytest.mark.parametrize("change", list(MISMATCH))
def test_incompatible_configuration_refuses_the_start_naming_the_difference(tmp_path, change):
    path = write_checkpoint(config_for(tmp_path))
    before = path.read_bytes()
    overrides, difference = MISMATCH[change]
    with pytest.raises(FatalError) as refused:
        restore(config_for(tmp_path, **overrides))
    message = str(refused.value)
    assert difference in message
    assert "checkpoint.on_mismatch" in message and str(path) in message
    assert path.read_bytes() == before


def test_incompatible_configuration_is_refused_even_with_on_corrupt_fresh(tmp_path):
    """on_corrupt covers damaged files only: a sound file of another model is a mismatch."""
    write_checkpoint(config_for(tmp_path))
    with pytest.raises(FatalError, match=r"checkpoint\.on_mismatch"):
        restore(config_for(tmp_path, model__n_components=3, checkpoint__on_corrupt="fresh"))


def test_incompatible_configuration_with_on_mismatch_fresh_starts_over(tmp_path, caplog):
    path = write_checkpoint(config_for(tmp_path))
    old = path.read_bytes()
    config = config_for(tmp_path, model__n_components=3, checkpoint__on_mismatch="fresh")
    with caplog.at_level(logging.ERROR, logger="streamgmm"):
        restored = restore(config)
    assert restored.rejected == "mismatch"
    assert restored.detector.n_seen == 0 and len(restored.offsets) == 0
    (kept,) = rejected_files(path)
    assert kept.read_bytes() == old
    (loud,) = [r for r in caplog.records if "STARTING A FRESH MODEL" in r.getMessage()]
    assert "n_components: file 2 vs config 3" in loud.getMessage()


def test_unreadable_checkpoint_is_refused_even_with_on_corrupt_fresh(tmp_path):
    """A checkpoint that cannot be read (here: its directory is a regular file) is not a
    damaged one: the start is refused, whatever on_corrupt says, and nothing is moved."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = config_for(
        tmp_path, checkpoint__path=str(blocker / "model.npz"), checkpoint__on_corrupt="fresh"
    )
    with pytest.raises(FatalError) as refused:
        restore(config)
    # found before any read: the directory the checkpoint is to be written in is a file
    assert f"checkpoint.path: cannot use {blocker} as a directory: it is a file" in str(
        refused.value
    )
    assert blocker.is_file() and blocker.read_text() == ""


def test_a_checkpoint_that_gave_way_is_counted_by_its_reason(tmp_path):
    """streamgmm_checkpoint_rejected{reason} is what an alert sees of a fresh start."""
    config = config_for(tmp_path, checkpoint__on_corrupt="fresh")
    truncate(write_checkpoint(config))
    daemon = Daemon.from_config(
        config,
        source=ScriptedSource([]),
        sink=FileSink(stdout=io.BytesIO(), stderr=io.BytesIO()),
        serve_metrics=False,
    )
    try:
        sample = daemon.metrics.registry.get_sample_value
        assert sample("streamgmm_checkpoint_rejected", {"reason": "corrupt"}) == 1
        assert sample("streamgmm_checkpoint_rejected", {"reason": "mismatch"}) == 0
    finally:
        daemon.decoder.close()
