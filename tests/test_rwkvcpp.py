"""rwkv.cpp .bin reader (docs/model.md §7.3) and the trained tiny fixture end to end."""

import struct

import numpy as np
import pytest

import rwkv5
from rwkv5.formats.rwkvcpp import read_rwkvcpp
from rwkv5.reference import ReferenceModel

PROMPT = [34, 105, 110]  # '"', 'i', 'n'


def expected(fixtures_dir):
    return np.fromfile(fixtures_dir / "expected-logits-5v2-730K.bin", dtype="<f4")


@pytest.mark.parametrize("mode", ["recurrent", "parallel"])
def test_fp32_fixture_reproduces_expected_logits(fixtures_dir, mode):
    sd, info = read_rwkvcpp(fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin")
    assert info["gn_eps"] == 1e-5 and info["n_layer"] == 12 and info["data_type"] == "FP32"
    model = rwkv5.Model.from_state_dict(sd, gn_eps=info["gn_eps"])
    assert (
        model.config.version == "5.2" and model.config.head_size == 8 and model.config.n_head == 8
    )
    logits, _ = model.forward(PROMPT, mode=mode)
    assert logits.shape == (256,) and logits.dtype == np.float32
    assert np.abs(logits - expected(fixtures_dir)).max() <= 1e-4


def test_fp32_fixture_one_token_at_a_time(fixtures_dir):
    sd, info = read_rwkvcpp(fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin")
    model = rwkv5.Model.from_state_dict(sd, gn_eps=1e-5)
    state = None
    for t in PROMPT:
        logits, state = model.forward([t], state)
    assert np.abs(logits - expected(fixtures_dir)).max() <= 1e-4


@pytest.mark.parametrize("mode", ["recurrent", "parallel"])
def test_fp16_fixture(fixtures_dir, mode):
    """FP16 weights: equal to the float64 reference fed the same fp16 weights (1e-4), and within
    fp16 rounding of the expected logits (measured 2.5e-3)."""
    sd, info = read_rwkvcpp(fixtures_dir / "tiny-rwkv-5v2-730K-FP16.bin")
    assert sd["blocks.0.att.key.weight"].dtype == np.float16
    model = rwkv5.Model.from_state_dict(sd, gn_eps=1e-5)
    assert model.config.dtype == "fp16"
    logits, _ = model.forward(PROMPT, mode=mode)
    ref, _ = ReferenceModel(sd, gn_eps=1e-5).forward(PROMPT)
    assert np.abs(logits - ref).max() <= 1e-4
    assert np.abs(logits - expected(fixtures_dir)).max() <= 1e-2


def test_reader_undoes_converter_transforms(fixtures_dir):
    sd, _ = read_rwkvcpp(fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin")
    d = sd["blocks.3.att.time_decay"]
    assert d.shape == (8, 8) and d.dtype == np.float64
    assert sd["blocks.3.att.time_faaaa"].shape == (8, 8)
    assert sd["blocks.3.att.time_mix_k"].shape == (1, 1, 64)
    assert sd["emb.weight"].shape == (256, 64) and sd["head.weight"].shape == (256, 64)
    # w stored in the file round-trips exactly through d = log(-log(w))
    raw = _raw_tensors(fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin")
    w = raw["blocks.3.att.time_decay"].reshape(8, 8)
    np.testing.assert_array_equal(np.exp(-np.exp(d)).astype(np.float32), w)
    # matrices are views into the file (no copy)
    assert not sd["blocks.0.att.key.weight"].flags.owndata


def _raw_tensors(path):
    data = open(path, "rb").read()
    off, out = 24, {}
    while off < len(data):
        nd, kl, tt = struct.unpack_from("<3i", data, off)
        off += 12
        shape = struct.unpack_from(f"<{nd}i", data, off)[::-1]
        off += 4 * nd
        key = data[off : off + kl].decode()
        off += kl
        dt = np.float32 if tt == 0 else np.float16
        n = int(np.prod(shape))
        out[key] = np.frombuffer(data, dt, n, off).reshape(shape)
        off += n * np.dtype(dt).itemsize
    return out


def _write(path, header, tensors):
    with open(path, "wb") as f:
        f.write(struct.pack("<6i", *header))
        for key, ttype, shape, payload in tensors:
            kb = key.encode()
            f.write(struct.pack(f"<3i{len(shape)}i", len(shape), len(kb), ttype, *shape[::-1]))
            f.write(kb)
            f.write(payload)


def test_bad_magic_version_type_truncation(tmp_path):
    p = tmp_path / "m.bin"
    emb = np.zeros((4, 2), np.float32)
    good = (0x67676D66, 101, 4, 2, 1, 0)
    _write(p, (0x1234, 101, 4, 2, 1, 0), [])
    with pytest.raises(ValueError, match="magic"):
        read_rwkvcpp(p)
    p.write_bytes(struct.pack(">6i", 0x67676D66, 101, 4, 2, 1, 0))
    with pytest.raises(ValueError, match="big-endian"):
        read_rwkvcpp(p)
    _write(p, (0x67676D66, 101, 0, 2, 1, 0), [])
    with pytest.raises(ValueError, match="counts"):
        read_rwkvcpp(p)
    _write(p, good, [("emb.weight", 0, (5, 2), b"\0" * 40)])
    with pytest.raises(ValueError, match="header says"):
        read_rwkvcpp(p)
    _write(
        p,
        good,
        [("emb.weight", 0, (4, 2), emb.tobytes()), ("emb.weight", 0, (4, 2), emb.tobytes())],
    )
    with pytest.raises(ValueError, match="twice"):
        read_rwkvcpp(p)
    _write(p, (0x67676D66, 99, 4, 2, 1, 0), [])
    with pytest.raises(ValueError, match="version 99"):
        read_rwkvcpp(p)
    _write(p, good, [("emb.weight", 5, (4, 2), b"\0" * 40)])
    with pytest.raises(ValueError, match=r"data type 5 \(Q4_2\)"):
        read_rwkvcpp(p)
    _write(
        p, good, [("emb.weight", 9, (4, 2), b"\0" * 40)]
    )  # Q8_0 rows must be whole 32-weight blocks
    with pytest.raises(ValueError, match="'emb.weight' is Q8_0 with shape"):
        read_rwkvcpp(p)
    _write(p, good, [("emb.weight", 0, (4, 2), emb.tobytes()[:20])])
    with pytest.raises(ValueError, match="truncated"):
        read_rwkvcpp(p)
    # 2^64 elements: the count must not wrap around to 0 (np.prod did), which made the read a bare
    # NumPy reshape error instead of this one
    _write(p, good, [("emb.weight", 0, (65536, 65536, 65536, 65536), emb.tobytes())])
    with pytest.raises(
        ValueError, match=r"m\.bin.*truncated: tensor 'emb.weight' needs 73786976294838206464 bytes"
    ):
        read_rwkvcpp(p)
    p.write_bytes(b"\x66\x6d\x67\x67")
    with pytest.raises(ValueError, match="too short"):
        read_rwkvcpp(p)
    _write(p, good, [("emb.weight", 0, (4, 2), emb.tobytes())])
    sd, info = read_rwkvcpp(p)
    assert sd["emb.weight"].shape == (4, 2) and info["n_vocab"] == 4
    with pytest.raises(OSError):
        read_rwkvcpp(tmp_path / "absent.bin")


def _to_rwkvcpp(path, sd, ftype=0):
    """Write sd the way rwkv.cpp's converter does (docs/model.md §7.3): w = exp(-exp(d)) and the bonus
    (time_first exponentiated) shaped (H, N|1, 1); time_mix squeezed; 2-D matrices in `ftype`."""
    gated = "blocks.0.att.gate.weight" in sd
    V, C = sd["emb.weight"].shape
    L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    tensors = []
    for k, v in sd.items():
        v = np.asarray(v, np.float64)
        if k.endswith("time_decay"):
            v = np.exp(-np.exp(v)).reshape(v.shape[0], -1, 1)
        elif k.endswith("time_first"):
            v = np.exp(v).reshape(v.shape[0], -1, 1)
        elif k.endswith("time_faaaa"):
            v = v.reshape(v.shape[0], -1, 1)
        elif ".time_mix" in k:
            v = v.reshape(-1)
        t = ftype if v.ndim == 2 else 0
        payload = v.astype(np.float16 if t == 1 else np.float32).tobytes()
        tensors.append((k, t, v.shape, payload))
    _write(path, (0x67676D66, 101, V, C, L, ftype), tensors)
    return "5v2" if gated else "5v1"


@pytest.mark.parametrize(
    "version,time_first,ftype", [("5.2", False, 0), ("5.2", False, 1), ("5.0", True, 0)]
)
def test_converted_files_round_trip(tmp_path, version, time_first, ftype):
    from rwkv5.testing import random_state_dict

    sd = random_state_dict(
        version, n_layer=2, n_embd=32, head_size=8, seed=4, time_first=time_first
    )
    kind = _to_rwkvcpp(tmp_path / "m.bin", sd, ftype)
    back, info = read_rwkvcpp(tmp_path / "m.bin")
    assert info["rwkvcpp_arch"] == kind and info["data_type"] == ("FP16" if ftype else "FP32")
    assert "blocks.0.att.time_first" not in back and back["blocks.1.att.time_faaaa"].ndim == (
        2 if version == "5.2" else 1
    )
    np.testing.assert_allclose(
        back["blocks.1.att.time_decay"],
        sd["blocks.1.att.time_decay"].reshape(back["blocks.1.att.time_decay"].shape),
        atol=2e-5,
    )
    model = rwkv5.Model.from_state_dict(back)
    assert model.config.version == version
    want, _ = ReferenceModel(sd).forward([1, 2, 3, 4])
    got, _ = model.forward([1, 2, 3, 4])
    np.testing.assert_allclose(got, want, atol=2e-3 if ftype else 1e-4)


@pytest.mark.parametrize("source, n_matrices", [("shipped", 26), ("rwkv.cpp", 98)])
def test_fixture_matrices_are_used_in_place(request, source, n_matrices):
    """Zero copy end to end: every matrix the model reads is the reader's view into the file,
    even those at unaligned offsets, with layout="rows" (the default blocks them: a copy). Files: the
    shipped model written as rwkv.cpp does (write_rwkvcpp), and rwkv.cpp's own file of ../shared/fixtures."""
    if source == "shipped":
        path = request.getfixturevalue("tiny_files")["FP32.bin"]
    else:
        path = request.getfixturevalue("fixtures_dir") / "tiny-rwkv-5v2-730K-FP32.bin"
    sd, _ = read_rwkvcpp(path)
    model = rwkv5.Model.from_state_dict(sd, gn_eps=1e-5, layout="rows")
    used = [a for a in model._weights.values() if a.ndim == 2]
    mats = [k for k, v in sd.items() if v.ndim == 2 and ".time_" not in k]
    assert len(used) == len(mats) == n_matrices
    assert any(not sd[k].flags.aligned for k in mats)  # the file really has unaligned tensors
    for k in mats:
        assert any(u is sd[k] for u in used), k
