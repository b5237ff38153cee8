"""IDX reader/writer: round trips and malformed files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from vitq.data.idx import read_idx, write_idx
from vitq.errors import DataFormatError


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_round_trip_uint8_3d(tmp_path, name):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = tmp_path / name
    write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (5, 28, 28)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("name", ["b-idx1-int", "b-idx1-int.gz"])
def test_round_trip_int32_1d(tmp_path, name):
    arr = np.array([0, 1, -1, 2**31 - 1, -(2**31), 123456], dtype=np.int32)
    path = tmp_path / name
    write_idx(path, arr)
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative and out.shape == (6,)
    np.testing.assert_array_equal(out, arr)


def test_header_is_big_endian(tmp_path):
    path = tmp_path / "c"
    write_idx(path, np.arange(3, dtype=np.int32))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 1])
    assert struct.unpack(">I", raw[4:8]) == (3,)
    assert struct.unpack(">3i", raw[8:]) == (0, 1, 2)


def test_gz_output_is_deterministic(tmp_path):
    arr = np.arange(100, dtype=np.uint8).reshape(10, 10)
    write_idx(tmp_path / "x.gz", arr)
    write_idx(tmp_path / "y.gz", arr)
    assert (tmp_path / "x.gz").read_bytes() == (tmp_path / "y.gz").read_bytes()


def test_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(bytes([1, 2, 0x08, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataFormatError, match=r"bad.*magic.*0x01020801"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated(tmp_path, gz):
    payload = bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 4, 4) + bytes(10)  # 16 bytes needed
    path = tmp_path / ("t.gz" if gz else "t")
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(DataFormatError, match=r"truncated.*need 16 bytes, found 10") as ei:
        read_idx(path)
    assert str(path) in str(ei.value)


def test_truncated_header(tmp_path):
    path = tmp_path / "h"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">I", 4))
    with pytest.raises(DataFormatError, match="truncated header"):
        read_idx(path)


def test_unknown_dtype_code(tmp_path):
    path = tmp_path / "u"
    path.write_bytes(bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataFormatError, match=r"unknown IDX dtype code 0x0A.*0x08 \(uint8\)"):
        read_idx(path)


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(DataFormatError, match="uint16"):
        write_idx(tmp_path / "z", np.zeros(3, dtype=np.uint16))
