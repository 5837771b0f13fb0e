"""rwkv.cpp's quantised files (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): the block dequantizer on blocks built
here with known values, the reader on synthetic and hostile files, and the trained fixture in all
five kinds against the logits rwkv.cpp computes on them."""

import math
import struct

import numpy as np
import pytest

import rwkv5
from rwkv5.formats.rwkvcpp import (
    BLOCK_FORMATS,
    QK,
    QuantizedTensor,
    dequantize_blocks,
    dequantize_blocks_numpy,
    read_rwkvcpp,
)
from rwkv5.reference import ReferenceModel

KINDS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
TYPE_ID = {name: t for t, (name, _, _) in BLOCK_FORMATS.items()}
PROMPT = [34, 105, 110]  # '"', 'i', 'n'
DEQUANTIZERS = [dequantize_blocks, dequantize_blocks_numpy]


def _blocks(kind, n):
    return np.zeros(n, BLOCK_FORMATS[TYPE_ID[kind]][1])


def _half(bits):
    return np.array([bits], np.uint16).view(np.float16)[0]


def _pack(kind, q):
    """qs (and qh) fields for the integers q (n, 32), as ggml lays them out (written out here,
    independently of the reader): weight j < 16 in the low nibble of byte j, weight j + 16 in its
    high nibble, the fifth bit of weight j in bit j of qh."""
    q = np.asarray(q, np.int64)
    if kind == "Q8_0":
        return {"qs": q.astype(np.int8)}
    lo, hi = q[:, :16], q[:, 16:]
    fields = {"qs": ((lo & 15) | ((hi & 15) << 4)).astype(np.uint8)}
    if kind.startswith("Q5"):
        fields["qh"] = sum(((q[:, j] >> 4) & 1) << j for j in range(32)).astype(np.uint32)
    return fields


# -- the dequantizer on blocks with known values -----------------------------------------------------


@pytest.mark.parametrize("deq", DEQUANTIZERS, ids=["C", "numpy"])
def test_q4_0_known_block(deq):
    b = _blocks("Q4_0", 1)
    b["d"] = _half(0x3800)  # 0.5
    q = np.arange(32) % 16  # weights 0..15, then 0..15 again
    b["qs"] = _pack("Q4_0", q[None])["qs"]
    assert b["qs"][0, 3] == 0x33  # byte 3: weight 3 (low) and weight 19 (high)
    np.testing.assert_array_equal(deq(b, "Q4_0"), 0.5 * (q - 8))
    assert deq(b, "Q4_0")[0] == -4.0 and deq(b, "Q4_0")[31] == 3.5


@pytest.mark.parametrize("deq", DEQUANTIZERS, ids=["C", "numpy"])
def test_fp16_scales_convert_exactly(deq):
    """d read as IEEE half: normal, negative, subnormal (2^-24), the largest half, negative zero."""
    bits = [0x3C00, 0xC000, 0x3555, 0x0001, 0x7BFF, 0x8000]
    want_d = [1.0, -2.0, 0.333251953125, 2.0**-24, 65504.0, -0.0]
    b = _blocks("Q8_0", len(bits))
    b["d"] = np.array(bits, np.uint16).view(np.float16)
    b["qs"] = np.tile(np.arange(-16, 16, dtype=np.int8), (len(bits), 1))
    w = deq(b, 9).reshape(len(bits), 32)
    for i, d in enumerate(want_d):
        np.testing.assert_array_equal(w[i], np.float32(d) * np.arange(-16, 16, dtype=np.float32))
    assert w[0, 0] == -16.0 and w[3, 31] == 15 * 2.0**-24 and w[4, 0] == -16 * 65504.0


@pytest.mark.parametrize("deq", DEQUANTIZERS, ids=["C", "numpy"])
def test_q4_1_scale_and_minimum(deq):
    b = _blocks("Q4_1", 2)
    b["d"] = [_half(0x4000), _half(0x3400)]  # 2.0, 0.25
    b["m"] = [_half(0xBC00), _half(0x3E00)]  # -1.0, 1.5
    q = np.stack([np.arange(32) % 16, 15 - np.arange(32) % 16])
    b["qs"] = _pack("Q4_1", q)["qs"]
    w = deq(b, "Q4_1").reshape(2, 32)
    np.testing.assert_array_equal(w[0], 2.0 * q[0] - 1.0)
    np.testing.assert_array_equal(w[1], 0.25 * q[1] + 1.5)
    assert (w[0, 0], w[0, 15], w[1, 0], w[1, 16]) == (-1.0, 29.0, 5.25, 5.25)


@pytest.mark.parametrize("deq", DEQUANTIZERS, ids=["C", "numpy"])
def test_q5_fifth_bit_packing(deq):
    # Q5_0, d = 1: qs all zero, only the fifth bits of weights 0 and 17 set -> 16 - 16 = 0 there,
    # 0 - 16 = -16 elsewhere; bit j of qh belongs to weight j (bits 16..31 to weights 16..31).
    b = _blocks("Q5_0", 1)
    b["d"] = 1.0
    b["qh"] = (1 << 0) | (1 << 17)
    w = deq(b, "Q5_0")
    want = np.full(32, -16.0, np.float32)
    want[[0, 17]] = 0.0
    np.testing.assert_array_equal(w, want)
    # every 5-bit value at every position, Q5_0 and Q5_1
    q = (np.arange(32)[None, :] * 7 + np.arange(32)[:, None] * 3) % 32
    for kind, d, m in [("Q5_0", 0.125, None), ("Q5_1", 2.0, 0.25)]:
        b = _blocks(kind, 32)
        b["d"] = d
        if m is not None:
            b["m"] = m
        for k, v in _pack(kind, q).items():
            b[k] = v
        want = d * (q - 16) if m is None else d * q + m
        np.testing.assert_array_equal(deq(b, kind).reshape(32, 32), want.astype(np.float32))
    assert deq(b, "Q5_1").reshape(32, 32)[0, 5] == 2.0 * 3 + 0.25  # q = 35 % 32 = 3


@pytest.mark.parametrize("kind", KINDS)
def test_c_and_numpy_dequantizers_agree_bit_for_bit(kind):
    """Random bytes with finite scales, several chunks' worth for the NumPy twin, d*q + m rounding."""
    rng = np.random.default_rng(TYPE_ID[kind])
    n = 70_001
    bdt = BLOCK_FORMATS[TYPE_ID[kind]][1]
    b = rng.integers(0, 256, n * bdt.itemsize, dtype=np.uint8).view(bdt)
    b["d"] = rng.standard_normal(n).astype(np.float16)
    if "m" in bdt.names:
        b["m"] = rng.standard_normal(n).astype(np.float16)
    a, c = dequantize_blocks(b, kind), dequantize_blocks_numpy(b, kind)
    assert a.shape == (n * QK,) and a.dtype == np.float32
    np.testing.assert_array_equal(a.view(np.uint32), c.view(np.uint32))
    # a few blocks against the formula, weight by weight in Python floats (float64: exact here,
    # so the one rounding is the final one to float32)
    zero = {"Q4_0": 8, "Q5_0": 16}.get(kind, 0)
    for i in (0, 12345, n - 1):
        blk = b[i]
        d = float(blk["d"])
        m = float(blk["m"]) if "m" in bdt.names else 0.0
        for j in range(32):
            if kind == "Q8_0":
                q = int(blk["qs"][j])
            else:
                byte = int(blk["qs"][j % 16])
                q = byte & 15 if j < 16 else byte >> 4
                if "qh" in bdt.names:
                    q |= ((int(blk["qh"]) >> j) & 1) << 4
                q -= zero
            assert a[i * QK + j] == np.float32(d * q + m), (i, j)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("deq", DEQUANTIZERS, ids=["C", "numpy"])
def test_non_finite_scale_is_refused(kind, deq):
    b = _blocks(kind, 40)
    b["d"] = 1.0
    field = "m" if "m" in b.dtype.names else "d"
    b[field][37:38] = np.array([0x7C00], np.uint16).view(np.float16)  # +inf
    with pytest.raises(
        ValueError,
        match=rf"where: {kind} block 37 has a non-finite scale {field} \(fp16 bits 0x7c00\)",
    ):
        deq(b, kind, where="where")
    b[field][37:38] = np.array([0x7E00], np.uint16).view(np.float16)  # NaN
    with pytest.raises(ValueError, match="block 37"):
        deq(b, kind)


def test_dequantizer_argument_errors():
    with pytest.raises(ValueError, match="unknown block format"):
        dequantize_blocks(_blocks("Q4_0", 1), "Q3_K")
    with pytest.raises(ValueError, match="expected a 1-D array of Q4_1 blocks"):
        dequantize_blocks(_blocks("Q4_0", 1), "Q4_1")
    # a strided (non-contiguous) view is fine: the C path gets a contiguous copy
    b = _blocks("Q8_0", 6)
    b["d"] = 1.0
    b["qs"][:, 0] = np.arange(6)
    np.testing.assert_array_equal(dequantize_blocks(b[::2], "Q8_0")[::32], [0, 2, 4])


# -- synthetic files ----------------------------------------------------------------------------------


def _quantize(w, kind):
    """A simple quantizer for tests (not rwkv.cpp's): blocks of 32 along rows."""
    x = np.asarray(w, np.float32).reshape(-1, QK)
    b = _blocks(kind, len(x))
    if kind in ("Q4_1", "Q5_1"):
        lo, hi = x.min(1), x.max(1)
        levels = 15 if kind == "Q4_1" else 31
        d = ((hi - lo) / levels).astype(np.float16)
        b["m"] = lo.astype(np.float16)
        q = np.clip(
            np.rint((x - b["m"].astype(np.float32)[:, None]) / np.where(d == 0, 1, d)[:, None]),
            0,
            levels,
        )
    else:
        half = {"Q4_0": 8, "Q5_0": 16, "Q8_0": 127}[kind]
        d = (np.abs(x).max(1) / (half - 1 if kind != "Q8_0" else half)).astype(np.float16)
        q = np.clip(np.rint(x / np.where(d == 0, 1, d)[:, None]), -half, half - 1)
        q = q if kind == "Q8_0" else q + half
    b["d"] = d
    for k, v in _pack(kind, q.astype(np.int64)).items():
        b[k] = v
    return b


def _write_file(path, sd, kind, version=101, header_type=None):
    """sd in rwkv.cpp's layout (shapes reversed; decay/bonus already as the converter leaves them
    is not needed here: the v5.2 test model keeps raw names and the reader's transforms are checked
    by test_rwkvcpp.py) with every 2-D matrix but emb/head quantised as `kind`."""
    V, C = sd["emb.weight"].shape
    L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    with open(path, "wb") as f:
        f.write(
            struct.pack(
                "<6i",
                0x67676D66,
                version,
                V,
                C,
                L,
                TYPE_ID[kind] if header_type is None else header_type,
            )
        )
        for k, v in sd.items():
            v = np.asarray(v, np.float64)
            if k.endswith("time_decay"):
                v = np.exp(-np.exp(v)).reshape(v.shape[0], -1, 1)
            elif k.endswith("time_faaaa"):
                v = v.reshape(v.shape[0], -1, 1)
            elif ".time_mix" in k:
                v = v.reshape(-1)
            quant = v.ndim == 2 and k not in ("emb.weight", "head.weight")
            payload = _quantize(v, kind).tobytes() if quant else v.astype(np.float32).tobytes()
            kb = k.encode()
            f.write(
                struct.pack(
                    f"<3i{v.ndim}i", v.ndim, len(kb), TYPE_ID[kind] if quant else 0, *v.shape[::-1]
                )
            )
            f.write(kb + payload)


@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_quantized_file_matches_reference(tmp_path, kind):
    """A random 5.2 model written as a quantised rwkv.cpp file: the model equals the float64
    reference fed the dequantized weights, in both modes, with no fixture needed."""
    from rwkv5.testing import random_state_dict

    sd = random_state_dict("5.2", n_layer=2, n_embd=64, head_size=16, seed=7)
    p = tmp_path / f"m-{kind}.bin"
    _write_file(p, sd, kind)
    back, info = read_rwkvcpp(p)
    assert info["quantized"] == [kind] and info["data_type"] == kind
    w = back["blocks.1.ffn.key.weight"]
    assert (
        isinstance(w, QuantizedTensor)
        and w.kind == kind
        and w.shape == sd["blocks.1.ffn.key.weight"].shape
    )
    assert w.dtype == np.float32 and w.ndim == 2 and w.size == math.prod(w.shape)
    # the dequantized matrix is the test quantizer's blocks, and near the original weights
    np.testing.assert_array_equal(
        np.asarray(w),
        dequantize_blocks_numpy(_quantize(sd["blocks.1.ffn.key.weight"], kind), kind).reshape(
            w.shape
        ),
    )
    assert np.abs(np.asarray(w) - sd["blocks.1.ffn.key.weight"]).max() < 0.2
    model = rwkv5.load(p, gn_eps=1e-5)
    assert model.config.dtype == "fp32"
    ref, _ = ReferenceModel(back, gn_eps=1e-5).forward([1, 2, 3, 4, 5])
    for mode in ("recurrent", "parallel"):
        got, _ = model.forward([1, 2, 3, 4, 5], mode=mode)
        assert np.abs(got - ref).max() <= 1e-4, mode


def _one_tensor_file(path, key, ttype, shape, payload, version=101):
    """A file holding emb.weight (4, 64) in FP32, then tensor `key` (the reader requires emb)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<6i", 0x67676D66, version, 4, 64, 1, ttype))
        tensors = (
            [("emb.weight", 0, (4, 64), np.zeros(256, np.float32).tobytes())]
            if key != "emb.weight"
            else []
        )
        for k, t, sh, data in tensors + [(key, ttype, shape, payload)]:
            kb = k.encode()
            f.write(struct.pack(f"<3i{len(sh)}i", len(sh), len(kb), t, *sh[::-1]) + kb + data)


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_quantized_tensors(tmp_path, kind):
    t = TYPE_ID[kind]
    bsize = BLOCK_FORMATS[t][1].itemsize
    p = tmp_path / "h.bin"
    name = str(p)
    key = "blocks.0.att.key.weight"
    good = _quantize(np.ones((64, 64), np.float32), kind).tobytes()
    assert len(good) == 128 * bsize
    # block data cut short, by one byte and by a whole block
    for cut in (1, bsize, len(good)):
        _one_tensor_file(p, key, t, (64, 64), good[:-cut])
        with pytest.raises(
            ValueError, match=rf"{name}.*truncated: tensor '{key}' needs {len(good)} bytes"
        ):
            read_rwkvcpp(p)
    # rows that are not whole blocks
    _one_tensor_file(p, key, t, (64, 48), good[: 64 * 48 // 32 * bsize])
    with pytest.raises(
        ValueError, match=rf"{name}.*tensor '{key}' is {kind} with shape \(64, 48\): its rows of 48"
    ):
        read_rwkvcpp(p)
    # a 1-D tensor of 31 weights
    _one_tensor_file(p, key, t, (31,), good[:bsize])
    with pytest.raises(ValueError, match="not a whole number of 32-weight blocks"):
        read_rwkvcpp(p)
    # sizes whose element count overflows 64 bits are "truncated", not a wrap-around
    _one_tensor_file(p, key, t, (2**31 - 1, 2**31 - 1, 2**31 - 1, 32 * 2**20), good)
    with pytest.raises(ValueError, match="truncated"):
        read_rwkvcpp(p)
    # version 100 files used ggml's older block layouts
    _one_tensor_file(p, key, t, (64, 64), good, version=100)
    with pytest.raises(ValueError, match=rf"{name}.*'{key}' is {kind} in file version 100"):
        read_rwkvcpp(p)
    # a non-finite scale: the error names the file, the tensor and the block, when the tensor is used
    bad = bytearray(good)
    bad[5 * bsize : 5 * bsize + 2] = struct.pack("<H", 0xFC00)  # d of block 5 = -inf
    _one_tensor_file(p, key, t, (64, 64), bytes(bad))
    sd, _ = read_rwkvcpp(p)
    with pytest.raises(
        ValueError, match=rf"{name}.*tensor '{key}': {kind} block 5 has a non-finite scale d"
    ):
        np.asarray(sd[key])


def test_retired_and_unknown_types_are_refused(tmp_path):
    p = tmp_path / "h.bin"
    for t, label in [(4, "Q4_1_O"), (5, "Q4_2"), (6, "Q4_3"), (10, "unknown"), (-1, "unknown")]:
        _one_tensor_file(p, "emb.weight", t, (4, 64), b"\0" * 4096)
        with pytest.raises(ValueError, match=rf"{p}.*'emb.weight' has data type {t} \({label}\)"):
            read_rwkvcpp(p)


def test_quantized_vectors_are_dequantized_eagerly(tmp_path):
    """rwkv.cpp quantises matrices only; a file that quantises a vector still reads (as float32)."""
    p = tmp_path / "v.bin"
    v = _quantize(np.linspace(-1, 1, 64, dtype=np.float32), "Q8_0")
    _one_tensor_file(p, "blocks.0.ln1.weight", 9, (64,), v.tobytes())
    sd, info = read_rwkvcpp(p)
    a = sd["blocks.0.ln1.weight"]
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and info["quantized"] == []
    np.testing.assert_allclose(a, np.linspace(-1, 1, 64), atol=0.01)


# -- the trained fixture in all five kinds ------------------------------------------------------------


def _fixture(fixtures_dir, kind):
    cpp = np.fromfile(fixtures_dir / f"rwkvcpp-logits-5v2-730K-{kind}.bin", dtype="<f4")
    fp32 = np.fromfile(fixtures_dir / "expected-logits-5v2-730K.bin", dtype="<f4")
    return fixtures_dir / f"tiny-rwkv-5v2-730K-{kind}.bin", cpp, fp32


@pytest.mark.parametrize("kind", KINDS)
def test_fixture_closer_to_rwkvcpp_than_its_quantization_error(fixtures_dir, kind):
    """Ours lands closer to rwkv.cpp's logits on the quantised file than rwkv.cpp's own
    quantisation error (its logits vs the FP32 model's), and equals the float64 reference fed
    the dequantized weights to 1e-4, in both modes."""
    path, cpp, fp32 = _fixture(fixtures_dir, kind)
    sd, info = read_rwkvcpp(path)
    assert info["data_type"] == kind and info["quantized"] == [kind]
    assert sum(isinstance(a, QuantizedTensor) for a in sd.values()) == 96  # 12 layers x 8 matrices
    ref, _ = ReferenceModel(sd, gn_eps=1e-5).forward(PROMPT)
    model = rwkv5.load(path, gn_eps=1e-5)
    assert model.config.dtype == "fp32"
    own_error = np.abs(cpp - fp32).max()
    for mode in ("recurrent", "parallel"):
        ours, _ = model.forward(PROMPT, mode=mode)
        assert np.abs(ours - ref).max() <= 1e-4, mode
        assert np.abs(ours - cpp).max() < own_error, (mode, np.abs(ours - cpp).max(), own_error)
    state = None
    for t in PROMPT:
        ours, state = model.forward([t], state)
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_fixture_weights_within_a_step_of_fp32(fixtures_dir, kind):
    """The quantised files were made from the FP32 file by rwkv.cpp's quantizer: every dequantized
    weight lies within one step |d| of the FP32 weight (half a step for the _1 kinds, plus the fp16
    rounding of d and m). This pins the nibble order: the older interleaved order is off by ~15 steps."""
    sd, _ = read_rwkvcpp(fixtures_dir / f"tiny-rwkv-5v2-730K-{kind}.bin")
    fp, _ = read_rwkvcpp(fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin")
    bound = 1.01 if kind.endswith("_0") else 0.53
    for name, t in sd.items():
        if isinstance(t, QuantizedTensor):
            step = np.abs(t.blocks["d"].astype(np.float32))[:, None]
            err = np.abs(np.asarray(t) - fp[name]).reshape(-1, QK)
            assert (err <= bound * step).all(), (name, float((err / step).max()))


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_fixture_converts_to_other_dtypes(fixtures_dir, dtype):
    """dtype= converts the dequantized weights as for any checkpoint: int8 re-quantizes per row."""
    from rwkv5.loading import convert_array
    from rwkv5.model import quantize_int8

    path, cpp, fp32 = _fixture(fixtures_dir, "Q5_1")
    sd, _ = read_rwkvcpp(path)
    model = rwkv5.load(path, dtype=dtype)
    assert model.config.dtype == dtype
    # the model converts every matrix (head and emb too, but int8 keeps emb as it is)
    mats = {
        k: np.asarray(v)
        for k, v in sd.items()
        if np.ndim(v) == 2 and ".time_" not in k and not (dtype == "int8" and k == "emb.weight")
    }
    if dtype == "fp16":
        conv = {k: convert_array(v, "fp32", "fp16") for k, v in mats.items()}
    else:
        conv = {}
        for k, v in mats.items():
            q, s = quantize_int8(v)
            conv[k] = q.astype(np.float64) * s[:, None].astype(np.float64)
    ref, _ = ReferenceModel({**sd, **conv}, gn_eps=1e-5).forward(PROMPT)
    ours, _ = model.forward(PROMPT)
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours - cpp).max() < np.abs(cpp - fp32).max()


def test_fixture_convert_cli_keeps_the_dequantized_weights(tmp_path, fixtures_dir):
    from rwkv5.__main__ import main as cli_main

    src = fixtures_dir / "tiny-rwkv-5v2-730K-Q4_0.bin"
    out = tmp_path / "q4.safetensors"
    assert cli_main(["convert", str(src), str(out), "--dtype", "fp32"]) == 0
    a, b = rwkv5.load(src), rwkv5.load(out)
    assert b.config.gn_eps == 1e-5
    np.testing.assert_array_equal(a.forward(PROMPT)[0], b.forward(PROMPT)[0])


def _mapped_rss_kb(path):
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if (
                head and "-" in head[0] and len(head[0]) > 8 and ":" not in head[0]
            ):  # a mapping's first line
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.mark.skipif(
    not __import__("os").path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps (Linux)"
)
@pytest.mark.parametrize("dtype", [None, "int8"])
def test_dequantized_blocks_leave_the_process(tmp_path, dtype):
    """Once a quantised matrix is dequantized and converted, its blocks' pages of the file mmap are
    released (as for any copied matrix), so a model does not hold the file on top of its own
    weights. Matrices of 256 x 896 so that each spans whole pages."""
    from rwkv5.testing import random_state_dict

    sd = random_state_dict("5.2", n_layer=2, n_embd=256, head_size=64, vocab_size=64, seed=1)
    p = tmp_path / "q.bin"
    _write_file(p, sd, "Q8_0")
    model = rwkv5.load(p, dtype=dtype)
    model.forward([1, 2, 3])
    size_kb = p.stat().st_size / 1024
    # what may stay: the embedding (64 kB, a view used in place) and partial pages at the ends of
    # each released matrix; the matrices' blocks are 90% of the file
    assert _mapped_rss_kb(p) < 0.3 * size_kb, (_mapped_rss_kb(p), size_kb)


def test_fixture_loads_without_mmap(fixtures_dir):
    """mmap=False: the blocks are read into private memory; the same logits."""
    path = fixtures_dir / "tiny-rwkv-5v2-730K-Q5_0.bin"
    a, b = rwkv5.load(path), rwkv5.load(path, mmap=False)
    np.testing.assert_array_equal(a.forward(PROMPT)[0], b.forward(PROMPT)[0])


def test_convert_names_the_quantized_source_kind(fixtures_dir, tmp_path, capsys):
    from rwkv5.__main__ import main

    assert (
        main(
            [
                "convert",
                str(fixtures_dir / "tiny-rwkv-5v2-730K-Q5_1.bin"),
                str(tmp_path / "o.safetensors"),
                "--dtype",
                "fp16",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Q5_1 (dequantized) -> fp16" in out, out
