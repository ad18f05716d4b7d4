"""Checkpoints as the daemon writes them, and the ways a file on disk gets damaged."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from streamgmm.checkpoint import save_state
from streamgmm.daemon import CHECKPOINT_KIND, build_detector, fingerprint


def write_checkpoint(config) -> Path:
    """A checkpoint of a warmed-up model at ``config.checkpoint.path``, written with the
    daemon's own functions (kind and fingerprint as ``streamgmm run`` writes them)."""
    detector = build_detector(config)
    detector.process(np.random.default_rng(0).normal(size=(600, len(config.features.fields))))
    state = {
        "detector": detector.get_state(),
        "offsets": {"events": {"0": 300, "1": 300}},
        "topic_ids": {},
        "written_at": time.time(),
        "version": "test",
    }
    path = Path(config.checkpoint.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_state(path, state, kind=CHECKPOINT_KIND, fingerprint=fingerprint(config))
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.write_bytes(bytes(data))


def tamper_an_array(path: Path) -> None:
    """Change a number inside the archive, keeping it a valid zip (only the checksum knows)."""
    source = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if "means" in info.filename:
                data = data[:-8] + np.float64(42.0).tobytes()
            target.writestr(info, data)
    path.write_bytes(out.getvalue())


#: damage name -> what it does to the file at a path
DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "a byte flipped": flip_a_byte,
    "an array changed, checksum kept": tamper_an_array,
    "empty": lambda path: path.write_bytes(b""),
    "not a checkpoint": lambda path: path.write_text("model: gmm\n"),
}
