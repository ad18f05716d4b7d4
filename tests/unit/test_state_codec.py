"""The state record codec (streamgmm.checkpoint.pack_state / unpack_state)."""

import struct
import zlib

import numpy as np
import pytest

from streamgmm.checkpoint import (
    RECORD_VERSION,
    CheckpointCorruptError,
    CheckpointMismatchError,
    pack_state,
    read_header,
    unpack_state,
)

FINGERPRINT = {"fields": ["a", "b"], "covariance_type": "full"}


def head_state():
    rng = np.random.default_rng(0)
    return {
        "model": {
            "means": rng.normal(size=(3, 2)),
            "covariances": rng.normal(size=(3, 2, 2)),
            "n_seen": np.int64(41),
        },
        "threshold": {"value": -7.5, "history": np.arange(5, dtype=np.float32)},
        "pending": np.empty((0, 2)),
        "scalar": np.array(3.5),
        "names": ["x", "y"],
        "nothing": None,
        "flag": True,
    }


def entity_state():
    return {
        "n": np.array([1.5, 0.25], np.float32),
        "first": np.arange(4, dtype=np.float32).reshape(2, 2),
        "count": np.array(7, np.int64),
        "seen": 12,
    }


def test_round_trip_is_exact_for_nested_arrays_and_json():
    state = head_state()
    data = pack_state(state, kind="head", next_offset=1234, fingerprint=FINGERPRINT)
    back, header = unpack_state(data, kind="head", fingerprint=FINGERPRINT)
    assert header.next_offset == 1234 and header.version == RECORD_VERSION
    for key in ("means", "covariances"):
        np.testing.assert_array_equal(back["model"][key], state["model"][key])
        assert back["model"][key].dtype == np.float64
    assert back["model"]["n_seen"] == 41
    assert back["threshold"]["value"] == -7.5
    assert back["threshold"]["history"].dtype == np.float32
    np.testing.assert_array_equal(back["threshold"]["history"], np.arange(5))
    assert back["pending"].shape == (0, 2)
    assert back["scalar"].shape == () and float(back["scalar"]) == 3.5
    assert back["names"] == ["x", "y"] and back["nothing"] is None and back["flag"] is True


def test_decoded_arrays_are_writable_copies():
    data = pack_state(entity_state(), kind="entity", next_offset=5)
    back, _ = unpack_state(data, kind="entity")
    back["n"] += 1  # the detector updates loaded statistics in place
    assert back["n"].tolist() == [2.5, 1.25] and back["count"] == 7


def test_entity_records_are_small():
    data = pack_state(
        entity_state(),
        kind="entity",
        next_offset=5,
        fingerprint=FINGERPRINT,
        describe_fingerprint=False,
    )
    arrays = 8 + 16 + 8
    assert len(data) < arrays + 250, len(data)  # header + JSON meta: about 210 bytes
    assert b"covariance_type" not in data  # only the fingerprint's CRC travels


@pytest.mark.parametrize("kind", ["head", "entity"])
def test_every_changed_byte_is_refused(kind):
    state = head_state() if kind == "head" else entity_state()
    data = pack_state(state, kind=kind, next_offset=99, fingerprint=FINGERPRINT)
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x5A
        with pytest.raises((CheckpointCorruptError, CheckpointMismatchError)):
            unpack_state(bytes(damaged), kind=kind, fingerprint=FINGERPRINT)


def test_truncated_or_foreign_bytes_are_refused():
    data = pack_state(entity_state(), kind="entity", next_offset=1)
    for cut in (0, 3, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(CheckpointCorruptError):
            read_header(data[:cut])
    with pytest.raises(CheckpointCorruptError, match="not a streamgmm state record"):
        unpack_state(b'{"json": "from another program"}')


def test_other_version_is_refused_with_what_to_do():
    data = bytearray(pack_state(entity_state(), kind="entity", next_offset=1))
    struct.pack_into("<H", data, 4, RECORD_VERSION + 1)
    with pytest.raises(CheckpointMismatchError, match=r"version 2.*release that wrote it"):
        unpack_state(bytes(data))


def test_a_record_that_lies_about_its_arrays_is_refused_even_with_a_valid_crc():
    data = bytearray(pack_state(entity_state(), kind="entity", next_offset=1))
    data = data[:-4]  # an array cut short, the CRC recomputed to match
    struct.pack_into("<I", data, 6, zlib.crc32(bytes(data[10:])))
    with pytest.raises(CheckpointCorruptError, match="past the record's end"):
        unpack_state(bytes(data))


def test_head_of_another_configuration_is_refused_naming_the_difference():
    data = pack_state(head_state(), kind="head", next_offset=1, fingerprint=FINGERPRINT)
    other = {**FINGERPRINT, "fields": ["a", "c"]}
    with pytest.raises(CheckpointMismatchError, match=r"fields: record \['a', 'b'\]"):
        unpack_state(data, kind="head", fingerprint=other)
    entity = pack_state(
        entity_state(),
        kind="entity",
        next_offset=1,
        fingerprint=FINGERPRINT,
        describe_fingerprint=False,
    )
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        unpack_state(entity, kind="entity", fingerprint=other)
    assert unpack_state(entity, kind="entity", fingerprint=dict(FINGERPRINT))[0]["seen"] == 12


def test_kind_is_checked():
    data = pack_state(entity_state(), kind="entity", next_offset=1)
    with pytest.raises(CheckpointMismatchError, match="'entity' state, expected 'head'"):
        unpack_state(data, kind="head")


def test_objects_and_non_json_values_cannot_be_packed():
    with pytest.raises(TypeError, match="object array"):
        pack_state({"x": np.array([object()])}, kind="entity")
    with pytest.raises(TypeError, match="neither an array nor JSON"):
        pack_state({"x": {1, 2}}, kind="entity")
