import json
import os
import zipfile

import numpy as np
import pytest

from streamgmm.checkpoint import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    load_state,
    read_fingerprint,
    remove_leftovers,
    save_state,
)

STATE = {
    "model": {"means": np.arange(6.0).reshape(3, 2), "n": 3},
    "offsets": {"events": {"0": 41, "1": 7}},
    "name": "x",
    "nothing": None,
}


def saved(tmp_path, **kwargs):
    path = tmp_path / "state.npz"
    save_state(path, STATE, kind="test", fingerprint={"fields": ["a", "b"]}, **kwargs)
    return path


def test_round_trip_is_exact(tmp_path):
    state = load_state(saved(tmp_path), kind="test", fingerprint={"fields": ["a", "b"]})
    np.testing.assert_array_equal(state["model"]["means"], STATE["model"]["means"])
    assert state["offsets"] == STATE["offsets"]
    assert state["name"] == "x" and state["nothing"] is None and state["model"]["n"] == 3


def test_truncated_file_is_refused(tmp_path):
    path = saved(tmp_path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointCorruptError):
            load_state(path, kind="test")


def test_tampered_array_is_refused(tmp_path):
    path = saved(tmp_path)
    tampered = tmp_path / "tampered.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model/means.npy":
                data = data[:-8] + np.float64(99.0).tobytes()
            dst.writestr(item, data)
    with pytest.raises(CheckpointCorruptError, match="checksum"):
        load_state(tampered, kind="test")


def test_tampered_metadata_is_refused(tmp_path):
    path = saved(tmp_path)
    tampered = tmp_path / "tampered.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "__meta__.npy":
                header, payload = data[:128], data[128:]
                meta = json.loads(payload.decode())
                meta["values"]["name"] = "y"
                new = json.dumps(meta).encode()
                payload = new + b" " * (len(payload) - len(new))
                data = header + payload
            dst.writestr(item, data)
    with pytest.raises(CheckpointCorruptError):
        load_state(tampered, kind="test")


def test_other_file_kinds_are_refused(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointCorruptError):
        load_state(garbage, kind="test")
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))
    with pytest.raises(CheckpointCorruptError, match="not a streamgmm state"):
        load_state(plain, kind="test")
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "missing.npz", kind="test")


def test_mismatched_configuration_is_named(tmp_path):
    path = saved(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="fields: file \\['a', 'b'\\]"):
        load_state(path, kind="test", fingerprint={"fields": ["a", "c"]})
    with pytest.raises(CheckpointMismatchError, match="expected 'other'"):
        load_state(path, kind="other")
    assert read_fingerprint(path)["fields"] == ["a", "b"]


def test_object_arrays_cannot_be_saved(tmp_path):
    with pytest.raises(TypeError, match="object array"):
        save_state(tmp_path / "x.npz", {"bad": np.array([{}], dtype=object)}, kind="test")


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_state(path, {"bad": object()}, kind="test")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["state.npz"]


def test_a_temporary_file_left_by_a_crashed_write_is_removed_by_the_next(tmp_path):
    path = saved(tmp_path)
    (tmp_path / ".state.npz.tmp-crashed").write_bytes(b"half a checkpoint")
    (tmp_path / ".other.npz.tmp-busy").write_bytes(b"another file's write")
    save_state(path, {"n": 1}, kind="test")
    assert sorted(os.listdir(tmp_path)) == [".other.npz.tmp-busy", "state.npz"]


def test_leftovers_are_removed_without_a_write(tmp_path):
    path = saved(tmp_path)
    (tmp_path / ".state.npz.tmp-crashed").write_bytes(b"half a checkpoint")
    assert remove_leftovers(path) == [".state.npz.tmp-crashed"]
    assert sorted(os.listdir(tmp_path)) == ["state.npz"]


def test_a_file_that_cannot_be_read_is_not_called_damaged(tmp_path):
    """Permissions, a directory, an I/O error: an OSError, never CheckpointCorruptError
    (which on_corrupt: fresh would answer by replacing the model)."""
    with pytest.raises(IsADirectoryError):
        load_state(tmp_path, kind="test")
    with pytest.raises(NotADirectoryError):
        load_state(saved(tmp_path) / "inside-a-file.npz", kind="test")


def test_no_pickle_is_ever_needed(tmp_path):
    path = saved(tmp_path)
    with np.load(path, allow_pickle=False) as archive:
        assert all(archive[name].dtype != object for name in archive.files)


def test_restart_of_a_warmed_up_chi2_detector_keeps_its_threshold(tmp_path, caplog):
    """Binding the dimension at the warm-up is state, not configuration."""
    from streamgmm.config import parse_config
    from streamgmm.daemon import CHECKPOINT_KIND, build_detector, fingerprint, restore

    path = tmp_path / "checkpoint.npz"
    raw = {
        "features": {"fields": ["cpu", "mem"]},
        "model": {"warmup": 50, "random_state": 0},
        "threshold": {"kind": "chi2", "probability": 0.999},
        "checkpoint": {"path": str(path)},
    }
    config = parse_config(raw, env={})
    detector = build_detector(config)
    detector.process(np.random.default_rng(0).normal(size=(200, 2)))
    assert detector.threshold.n_features == 2
    save_state(
        path,
        {"detector": detector.get_state(), "offsets": {}, "topic_ids": {}},
        kind=CHECKPOINT_KIND,
        fingerprint=fingerprint(config),
    )
    with caplog.at_level("WARNING", logger="streamgmm"):
        restored = restore(config).detector
    assert "threshold configuration changed" not in caplog.text
    assert restored.threshold.n_features == 2
    assert restored.threshold.value == detector.threshold.value
