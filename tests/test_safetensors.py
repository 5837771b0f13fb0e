"""Our safetensors reader/writer: round trips, strictness, atomic writes, and compatibility with
the `safetensors` package in both directions."""

import os

import numpy as np
import pytest

from rwkv5.formats import safetensors as st
from rwkv5.formats.safetensors import SafetensorsFile, read_safetensors, write_safetensors

from _loaders_util import mmap_backed

safetensors_numpy = pytest.importorskip(
    "safetensors.numpy", reason="the safetensors package (test extra)"
)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "f64": rng.standard_normal((2, 2, 2)),
        "i64": rng.integers(-5, 5, 4),
        "i8": rng.integers(-5, 5, 9).astype(np.int8),
        "u8": rng.integers(0, 255, 3).astype(np.uint8),
        "i32": rng.integers(-5, 5, (2, 3)).astype(np.int32),
        "scalar": np.array(1.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "bool": np.array([True, False, True]),
    }


def test_round_trip_all_dtypes(tmp_path):
    arrays = _arrays()
    p = tmp_path / "a.safetensors"
    write_safetensors(p, arrays, metadata={"who": "test", "ü": "ö"})
    f = SafetensorsFile(p)
    assert f.metadata == {"who": "test", "ü": "ö"}
    assert set(f.tensors) == set(arrays)
    for k, a in arrays.items():
        assert f.tensors[k].dtype == a.dtype and f.tensors[k].shape == a.shape
        np.testing.assert_array_equal(f.tensors[k], a)
    # header padded so data starts at a multiple of 8; each tensor aligned to its item size
    assert f.data_start % 8 == 0
    for k, a in f.tensors.items():
        if a.size:
            assert a.ctypes.data % a.dtype.itemsize == 0, k


def test_zero_copy_views_of_mmap(tmp_path):
    p = tmp_path / "z.safetensors"
    write_safetensors(p, {"w": np.ones((64, 64), np.float32)})
    a = read_safetensors(p)[0]["w"]
    assert not a.flags.writeable and mmap_backed(a)


def test_bf16_written_and_read_as_bits(tmp_path):
    bits = np.array([0x3F80, 0xC020, 0x7FC0, 0x0001], np.uint16)
    p = tmp_path / "b.safetensors"
    write_safetensors(p, {"x": bits, "u": bits.copy()}, dtypes={"x": "BF16"})
    t, d, _ = read_safetensors(p)
    assert d == {"x": "BF16", "u": "U16"}
    np.testing.assert_array_equal(t["x"], bits)
    with pytest.raises(TypeError, match="does not match"):
        write_safetensors(p, {"x": np.zeros(2, np.float32)}, dtypes={"x": "BF16"})


def test_package_reads_our_files(tmp_path):
    arrays = _arrays(1)
    p = tmp_path / "ours.safetensors"
    write_safetensors(p, arrays, metadata={"format": "x"})
    theirs = safetensors_numpy.load_file(str(p))
    assert set(theirs) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(theirs[k], arrays[k])
    from safetensors import safe_open

    with safe_open(str(p), framework="numpy") as f:
        assert f.metadata() == {"format": "x"}


def test_we_read_package_files(tmp_path):
    arrays = _arrays(2)
    p = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file(arrays, str(p), metadata={"a": "b"})
    t, _, meta = read_safetensors(p)
    assert meta == {"a": "b"}
    for k in arrays:
        np.testing.assert_array_equal(t[k], arrays[k])


def test_bf16_compat_with_package_via_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="torch (test extra) makes bfloat16 tensors")
    from safetensors.torch import load_file, save_file

    x = torch.randn(5, 7).to(torch.bfloat16)
    p = tmp_path / "t.safetensors"
    save_file({"x": x}, str(p))
    t, d, _ = read_safetensors(p)
    assert d["x"] == "BF16"
    np.testing.assert_array_equal(t["x"], x.view(torch.int16).numpy().view(np.uint16))
    q = tmp_path / "o.safetensors"
    write_safetensors(q, {"x": t["x"]}, dtypes={"x": "BF16"})
    assert torch.equal(load_file(str(q))["x"], x)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "keep.safetensors"
    write_safetensors(p, {"a": np.arange(3, dtype=np.float32)})
    before = p.read_bytes()

    def boom(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(st.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_safetensors(p, {"a": np.arange(1000, dtype=np.float32)})
    assert p.read_bytes() == before  # old file intact
    assert sorted(os.listdir(tmp_path)) == ["keep.safetensors"]  # no temporary left behind
    with pytest.raises(OSError):
        write_safetensors(tmp_path / "new.safetensors", {"a": np.zeros(2, np.float32)})
    assert not (tmp_path / "new.safetensors").exists()


def test_writer_rejects_bad_input(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="metadata"):
        write_safetensors(p, {"a": np.zeros(1, np.float32)}, metadata={"k": 1})
    with pytest.raises(TypeError, match="no safetensors equivalent"):
        write_safetensors(p, {"a": np.zeros(1, np.complex64)})
    with pytest.raises(ValueError, match="not allowed"):
        write_safetensors(p, {"__metadata__": np.zeros(1, np.float32)})
    assert not p.exists()


def test_big_endian_and_noncontiguous_input(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)
    p = tmp_path / "be.safetensors"
    write_safetensors(p, {"be": a, "t": np.arange(6, dtype=np.float32).reshape(2, 3).T})
    t = safetensors_numpy.load_file(str(p))
    np.testing.assert_array_equal(t["be"], a.astype("<f4"))
    np.testing.assert_array_equal(t["t"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
