"""The fast paths: every matmul kernel (row kernels and blocked GEMM) x storage type (fp32, fp16,
bf16, int8) x ISA against float64; int8 quantisation and int8 models; the model under each
RWKV5_ISA value in a subprocess."""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import rwkv5
from rwkv5 import _model
from rwkv5.model import (
    _c_matrix,
    block_matrix,
    dequantize_int4,
    quantize_int4,
    quantize_int8,
    quantize_int8_numpy,
)
from rwkv5.reference import ReferenceModel
from rwkv5.testing import bf16_bits_to_float32, float32_to_bf16_bits, random_state_dict

# the kernel levels of this architecture (csrc/common/cpu.c), by name; QUANT_X: the levels whose int8
# row kernel multiplies x quantised to 24-bit integers (x_split_bound)
if platform.machine().lower() in ("aarch64", "arm64"):
    ISAS = {"scalar": 0, "neon": 1, "neon_dotprod": 2}
    QUANT_X = ("neon_dotprod",)
else:
    ISAS = {"scalar": 0, "avx2": 1, "avx512": 2, "avx512_vnni": 3}
    QUANT_X = ("avx512_vnni",)
SIMD = [name for name in ISAS if name != "scalar"][:2]  # the float GEMM levels
BIG = (
    "att.receptance.weight",
    "att.key.weight",
    "att.value.weight",
    "att.gate.weight",
    "att.output.weight",
    "ffn.key.weight",
    "ffn.receptance.weight",
    "ffn.value.weight",
)


@pytest.fixture
def isa():
    """Set the kernels' ISA for one test (skip when the CPU lacks it), restore afterwards."""
    before = _model.get_isa()[0]

    def use(name):
        got = _model._set_isa(ISAS[name])
        if got != name:
            pytest.skip(f"this CPU has no {name} (kernels use {got})")

    yield use
    _model._set_isa(ISAS[before])


def storage(w32, kind):
    """(the matrix handed to the kernels, tagged with its storage type: (kind, array) or
    ("int8", q, scale); the float64 matrix it means)"""
    if kind == "int8":
        q, s = quantize_int8(w32)
        return ("int8", q, s), q.astype(np.float64) * s.astype(np.float64)[:, None]
    if kind == "int4":
        b = quantize_int4(w32)
        return ("int4", b), dequantize_int4(b, w32.shape[1]).astype(np.float64)
    w = {"fp32": w32, "fp16": w32.astype(np.float16), "bf16": float32_to_bf16_bits(w32)}[kind]
    wf = bf16_bits_to_float32(w) if kind == "bf16" else w.astype(np.float32)
    return (kind, w), wf.astype(np.float64)


def blocked(w):
    """the 4-row blocked layout of storage(...)[0]"""
    return (w[0], block_matrix(w[1])) + w[2:]


SIZES = [
    (1, 1, 1),
    (1, 17, 5),
    (3, 33, 7),
    (2, 64, 9),
    (5, 128, 6),
    (16, 16, 6),
    (17, 31, 13),
    (65, 300, 7),
    (130, 257, 29),
]


def x_split_bound(x, wf, kind, isa_name):
    """Extra error of the avx512_vnni and neon_dotprod int8 row kernels, which multiply x quantised to 24-bit
    integers, q = round(x / s), s = max|x row| / 8355711 (|error| <= s / 2, plus the float32
    rounding of x / s), instead of widening the weights. Bound per output, with headroom 2."""
    if kind == "int4":
        return int4_x_bound(x, wf) if isa_name in INT4_QUANT_X else 0.0
    if isa_name not in QUANT_X or kind != "int8":
        return 0.0
    s = np.abs(x.astype(np.float64)).max(axis=1, keepdims=True) / 8355711
    return 2 * (s * np.abs(wf).sum(axis=1)[None, :]).max()


#: the int4 row kernels that multiply x quantised per group of 32 (the x86 SIMD levels; NEON uses the
#: portable kernel)
INT4_QUANT_X = {"avx2", "avx512", "avx512_vnni"}


def int4_x_bound(x, wf):
    """Extra error of the x86 int4 row kernels (matmul.c): x is rounded per group of 32 inputs to
    xq = round(x / t), t = max|x of the group| / 8191, so each output moves by at most
    sum_g t_g / 2 * sum_{i in g} |w_i| (plus the float32 rounding of x / t). Bound per output,
    with headroom 2."""
    M, n = x.shape
    ng = -(-n // 32)
    xp = np.zeros((M, ng * 32))
    xp[:, :n] = np.abs(x)
    wp = np.zeros((wf.shape[0], ng * 32))
    wp[:, :n] = np.abs(wf)
    t = xp.reshape(M, ng, 32).max(axis=2) / 8191  # (M, groups)
    return 2 * (t / 2 @ wp.reshape(-1, ng, 32).sum(axis=2).T).max()


@pytest.mark.parametrize("isa_name", list(ISAS))
@pytest.mark.parametrize("kind", ["fp32", "fp16", "bf16", "int8", "int4"])
@pytest.mark.parametrize("gemm", [False, True])
@pytest.mark.parametrize("M,n,d", SIZES)
def test_matmul_every_path_matches_float64(isa, isa_name, kind, gemm, M, n, d):
    isa(isa_name)
    rng = np.random.default_rng(M * 1000 + n * 10 + d)
    x = rng.standard_normal((M, n)).astype(np.float32)
    w, wf = storage(rng.standard_normal((d, n)).astype(np.float32), kind)
    want = x.astype(np.float64) @ wf.T
    got = _model._matmul(x, w, ISAS[isa_name], gemm)
    fp_tol = 2e-6 * n * max(1.0, np.abs(want).max())
    np.testing.assert_allclose(
        got, want, rtol=0, atol=fp_tol + (0 if gemm else x_split_bound(x, wf, kind, isa_name))
    )
    # the 4-row blocked layout: the same sums in the same order, so the same bits (int4 has none)
    if kind != "int4":
        np.testing.assert_array_equal(_model._matmul(x, blocked(w), ISAS[isa_name], gemm, d), got)
    # the threaded entry point (current ISA, GEMM from 16 rows on)
    cur = _model.get_isa()[0]
    np.testing.assert_allclose(
        _model._matmul(x, w, -1),
        want,
        rtol=0,
        atol=fp_tol + (x_split_bound(x, wf, kind, cur) if M < 16 else 0),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint16, np.int8])
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 5), (4, 16), (5, 33), (9, 64), (13, 130)])
def test_block_matrix_layout(dtype, rows, cols):
    """block_matrix puts a[o, i] at [o // 4, i // E, o % 4, i % E] (E = 64 // itemsize), pads with
    zeros, and returns a 64-byte aligned array; the C kernels read that layout (rwkv5_mat)."""
    rng = np.random.default_rng(rows * 100 + cols)
    a = rng.integers(1, 100, (rows, cols)).astype(dtype)
    b = block_matrix(a, block_rows=8)  # several row blocks, one ragged
    e = 64 // a.itemsize
    assert b.shape == (-(-rows // 4), -(-cols // e), 4, e) and b.dtype == a.dtype
    assert b.ctypes.data % 64 == 0 and b.flags.c_contiguous
    o, i = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    np.testing.assert_array_equal(b[o // 4, i // e, o % 4, i % e], a)
    assert np.count_nonzero(b) == a.size  # a has no zeros: everything else is padding
    with pytest.raises(ValueError, match="2-D"):
        block_matrix(a.reshape(-1))


def test_blocked_matrix_with_wrong_shape_is_refused():
    w = ("fp32", block_matrix(np.ones((8, 40), np.float32)))
    x = np.ones((1, 40), np.float32)
    with pytest.raises(ValueError, match="expected shape"):
        _model._matmul(x, w, 0, False, 9)  # 9 rows need 3 groups of 4, w has 2
    with pytest.raises(ValueError, match="rows"):
        _model._matmul(x, w, 0, False)


@pytest.mark.parametrize("isa_name", SIMD)
@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
def test_gemm_rows_do_not_depend_on_the_batch(isa, isa_name, kind):
    """A row's result is the same bits whatever other rows share the GEMM (batch == alone)."""
    isa(isa_name)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((70, 150)).astype(np.float32)
    w, _ = storage(rng.standard_normal((20, 150)).astype(np.float32), kind)
    full = _model._matmul(x, w, ISAS[isa_name], True)
    for rows in (slice(0, 1), slice(3, 20), slice(64, 70)):
        np.testing.assert_array_equal(
            _model._matmul(np.ascontiguousarray(x[rows]), w, ISAS[isa_name], True), full[rows]
        )


@pytest.mark.parametrize("kind", ["fp32", "fp16", "bf16", "int8"])
def test_row_kernels_do_not_depend_on_the_batch(isa, kind):
    """The row kernels of the best ISA (int8: x quantised per input row on avx512_vnni) give a
    row the same bits alone and in a batch; a row with inf/nan gives the IEEE result of the
    widening kernels and does not disturb its neighbours."""
    isa(_model.get_isa()[1])
    best = ISAS[_model.get_isa()[0]]
    rng = np.random.default_rng(8)
    x = rng.standard_normal((9, 333)).astype(np.float32)
    x[4] *= 1e4  # another scale in one row
    w, _ = storage(rng.standard_normal((23, 333)).astype(np.float32), kind)
    full = _model._matmul(x, w, best, False)
    for r in range(9):
        np.testing.assert_array_equal(
            _model._matmul(np.ascontiguousarray(x[r : r + 1]), w, best, False), full[r : r + 1]
        )
    x[2, 5], x[6, 7] = np.inf, np.nan
    with np.errstate(invalid="ignore"):
        bad = _model._matmul(x, w, best, False)
    np.testing.assert_array_equal(bad[[0, 1, 3, 4, 5, 7, 8]], full[[0, 1, 3, 4, 5, 7, 8]])
    assert np.isnan(bad[6]).all() and not np.isfinite(bad[2]).any()


@pytest.mark.parametrize("isa_name", list(ISAS))
@pytest.mark.parametrize("kind", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize(
    "M,n,d", [(4, 7, 5), (7, 333, 23), (25, 1031, 9), (29, 520, 14), (13, 64, 4)]
)
def test_row_kernels_batch_tiles_equal_one_row(isa, isa_name, kind, M, n, d):
    """The row kernels at M >= 4 input rows (a recurrent step of a batch: register tiles over the
    rows, swept 24 at a time, columns in passes of 256) give every row the bits of the same row
    alone, in both layouts, on every ISA level; odd M, n, d exercise the partial tiles, the
    8-lane and 64-byte-line tails and the rows past the last 4-row block."""
    isa(isa_name)
    rng = np.random.default_rng(M * 7 + n + d)
    x = rng.standard_normal((M, n)).astype(np.float32)
    w, wf = storage(rng.standard_normal((d, n)).astype(np.float32), kind)
    want = x.astype(np.float64) @ wf.T
    for mat, extra in ((w, ()), (blocked(w), (d,))):
        got = _model._matmul(x, mat, ISAS[isa_name], False, *extra)
        for r in range(M):
            np.testing.assert_array_equal(
                _model._matmul(
                    np.ascontiguousarray(x[r : r + 1]), mat, ISAS[isa_name], False, *extra
                ),
                got[r : r + 1],
                err_msg=f"row {r}",
            )
        np.testing.assert_allclose(
            got,
            want,
            rtol=0,
            atol=2e-6 * n * max(1.0, np.abs(want).max()) + x_split_bound(x, wf, kind, isa_name),
        )


def test_matmul_rejects_bad_int8_tuples():
    x = np.ones((2, 4), np.float32)
    q = np.ones((3, 4), np.int8)
    with pytest.raises(ValueError, match="w scale: expected shape"):
        _model._matmul(x, ("int8", q, np.ones(2, np.float32)), 0)
    with pytest.raises(TypeError, match="w scale: expected dtype float32"):
        _model._matmul(x, ("int8", q, np.ones(3, np.float64)), 0)
    with pytest.raises(
        TypeError, match="w: a int8 matrix has 1-byte numeric elements, got dtype .*int16"
    ):
        _model._matmul(x, ("int8", q.astype(np.int16), np.ones(3, np.float32)), 0)
    with pytest.raises(ValueError, match=r"w: a int8 matrix is a tuple \(dtype, array, scale\)"):
        _model._matmul(x, ("int8", q), 0)


def test_matmul_takes_the_storage_type_from_its_tag():
    """The binding reads a matrix's bytes as the storage type it is tagged with (a name of
    _model.DTYPES), never guessing it from the NumPy dtype; a bad tag is a clear error."""
    x = np.ones((1, 2), np.float32)
    bits = np.array([[0x3C00, 0x3F80]], np.uint16)  # fp16 1.0 and bf16 1.0
    # the same uint16 array read as each tag says: fp16 1.0 + 1.875, bf16 2^-7 + 1.0
    assert _model._matmul(x, ("fp16", bits), 0)[0, 0] == np.float32(2.875)
    assert _model._matmul(x, ("bf16", bits), 0)[0, 0] == np.float32(1.0078125)
    assert _model._matmul(x, ("fp16", bits.view(np.float16)), 0)[0, 0] == np.float32(2.875)
    with pytest.raises(
        ValueError, match=r"w: unknown storage type 'q4' \(one of fp32, fp16, bf16, int8, int4\)"
    ):
        _model._matmul(x, ("q4", bits), 0)
    with pytest.raises(
        TypeError, match="w: a fp32 matrix has 4-byte numeric elements, got dtype .*uint16"
    ):
        _model._matmul(x, ("fp32", bits), 0)
    with pytest.raises(ValueError, match=r"w: a fp32 matrix is a tuple \(dtype, array\)"):
        _model._matmul(x, ("fp32", np.ones((1, 2), np.float32), np.ones(1, np.float32)), 0)
    with pytest.raises(TypeError, match=r"w: expected a tuple \(dtype, array\)"):
        _model._matmul(x, np.ones((1, 2), np.float32), 0)


def test_dtype_table_is_shared_with_python():
    """_model.DTYPES (the C table) and rwkv5.model's NumPy storage of each type agree."""
    from rwkv5.model import _DTYPE_NAMES

    assert [name for name, _, _ in _model.DTYPES] == list(_DTYPE_NAMES)
    for name, elem_bytes, row_scale in _model.DTYPES:
        assert np.dtype(_DTYPE_NAMES[name]).itemsize == elem_bytes
        assert row_scale == (name == "int8")
    assert _c_matrix(np.ones((2, 2), np.uint16))[0] == "bf16"
    assert _c_matrix((np.ones((2, 2), np.int8), np.ones(2, np.float32)))[0] == "int8"


@pytest.mark.parametrize("isa_name", list(ISAS))
@pytest.mark.parametrize("mode", ["recurrent", "parallel"])
@pytest.mark.parametrize(
    "N,T", [(64, 1), (64, 5), (64, 64), (64, 67), (64, 130), (16, 67), (40, 9)]
)
def test_wkv_every_isa_matches_reference(isa, isa_name, mode, N, T):
    """The WKV step and chunk under each ISA (N = 64 takes the register-blocked AVX-512 chunk)."""
    from rwkv5.reference import wkv_recurrent

    isa(isa_name)
    rng = np.random.default_rng(N * 1000 + T)
    H = 2
    r, k, v = (rng.standard_normal((T, H, N)).astype(np.float32) for _ in range(3))
    w = np.exp(-np.exp(rng.uniform(-6, 4.6, (H, N)))).astype(np.float32)  # some underflow fp32
    u, S0 = (
        rng.standard_normal((H, N)).astype(np.float32),
        rng.standard_normal((H, N, N)).astype(np.float32),
    )
    y, S = rwkv5.ops.wkv5(r, k, v, w, u, S0, mode=mode)
    yr, Sr = wkv_recurrent(*(a.astype(np.float64) for a in (r, k, v, w, u, S0)))
    np.testing.assert_allclose(y, yr, rtol=0, atol=2e-5 * np.abs(yr).max())
    np.testing.assert_allclose(S, Sr, rtol=0, atol=2e-5 * np.abs(Sr).max())


# ---------------------------------------------------------------------------------------------
# int8 quantisation


def test_quantize_int8_rounds_each_row_to_its_scale():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 91)).astype(np.float32) * rng.uniform(0.01, 10, (37, 1)).astype(
        np.float32
    )
    w[5] = 0.0  # an all-zero row
    q, s = quantize_int8(w, block_rows=8)  # several row blocks
    assert q.dtype == np.int8 and s.dtype == np.float32 and q.shape == w.shape and s.shape == (37,)
    assert np.abs(q.astype(int)).max() == 127 and q.min() >= -127
    assert s[5] == 0 and not q[5].any()
    np.testing.assert_allclose(s, np.abs(w).max(1) / 127, rtol=1e-6)
    err = np.abs(q * s[:, None] - w)
    assert np.all(err <= s[:, None] * 0.5 * (1 + 1e-5) + 1e-30)
    # bf16 bits and float64 in give the same as their float32 values
    bits = float32_to_bf16_bits(w)
    q2, s2 = quantize_int8(bits)
    q3, s3 = quantize_int8(bf16_bits_to_float32(bits).astype(np.float64))
    np.testing.assert_array_equal(q2, q3)
    np.testing.assert_array_equal(s2, s3)


def test_quantize_int8_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        quantize_int8(np.array([[1.0, np.nan]], np.float32))


@pytest.mark.parametrize("isa_name", list(ISAS))
@pytest.mark.parametrize("kind", ["fp32", "fp16", "bf16", "fp64"])
def test_quantize_int8_c_matches_numpy_twin(isa, isa_name, kind):
    """The C quantiser (threaded, SIMD at this ISA) gives the NumPy definition's bits, row-major and
    blocked, on odd sizes, zero rows, rows of subnormals, ties and values that round past 127."""
    isa(isa_name)
    rng = np.random.default_rng(3)
    for rows, cols in [(1, 1), (5, 7), (13, 77), (9, 200), (130, 1000)]:
        w = rng.standard_normal((rows, cols)) * rng.uniform(1e-3, 30, (rows, 1))
        if rows > 4:
            w[1] = 0.0
            w[2] = 1e-41  # subnormal in fp32: scale 0 after / 127
            w[3, :] = np.arange(cols) * 0.5 - 3  # ties: x.5 / scale
        a = {
            "fp32": w.astype(np.float32),
            "fp16": w.astype(np.float16),
            "fp64": w,
            "bf16": float32_to_bf16_bits(w.astype(np.float32)),
        }[kind]
        q0, s0 = quantize_int8_numpy(a, block_rows=8)
        q, s = quantize_int8(a)
        np.testing.assert_array_equal(q, q0)
        np.testing.assert_array_equal(s.view(np.uint32), s0.view(np.uint32))
        qb, sb = quantize_int8(a, blocked=True)
        np.testing.assert_array_equal(qb, block_matrix(q0))
        np.testing.assert_array_equal(sb, s0)
        assert qb.ctypes.data % 64 == 0
        if kind != "fp64":  # the threaded blocked copy, any element size
            np.testing.assert_array_equal(block_matrix(a)[..., :], _block_matrix_numpy(a))


def _block_matrix_numpy(a):
    rows, cols = a.shape
    e = 64 // a.itemsize
    g, c = -(-rows // 4), -(-cols // e)
    p = np.zeros((g * 4, c * e), a.dtype)
    p[:rows, :cols] = a
    return p.reshape(g, 4, c, e).transpose(0, 2, 1, 3)


def test_quantize_int8_names_the_non_finite_row():
    w = np.ones((300, 64), np.float32)
    w[217, 5], w[250, 1] = np.inf, np.nan
    with pytest.raises(ValueError, match="row 217 "):
        quantize_int8(w)
    with pytest.raises(ValueError, match="row 217 "):
        quantize_int8(w, blocked=True)


_INTERRUPT_SCRIPT = """
import os, signal, threading
import numpy as np, rwkv5
from rwkv5.model import quantize_int8
rwkv5.set_num_threads(1)
a = np.ones((8192, 16384), np.float32)           # 512 MiB: seconds of work on one thread
threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    quantize_int8(a)
    print("finished")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.slow
def test_quantize_int8_stops_on_ctrl_c():
    """SIGINT during a long quantisation raises KeyboardInterrupt from it (the C loop checks the
    cancel flag every row; the GIL is released meanwhile, so the handler runs)."""
    r = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["interrupted"]


def dequantised(sd):
    """The state dict as an int8 model sees it: large matrices (not emb) as q * scale, float64."""
    out = {}
    for k, v in sd.items():
        if k == "head.weight" or k.endswith(BIG):
            q, s = quantize_int8(v)
            out[k] = q.astype(np.float64) * s.astype(np.float64)[:, None]
        else:
            out[k] = np.asarray(v, np.float64)
    return out


@pytest.mark.parametrize("isa_name", list(ISAS))
@pytest.mark.parametrize("version", ["5.0", "5.2"])
def test_int8_model_matches_reference_on_dequantised_weights(isa, isa_name, version):
    isa(isa_name)
    sd = random_state_dict(version, n_layer=2, n_embd=72, head_size=24, vocab_size=250, seed=11)
    model = rwkv5.Model.from_state_dict(sd, dtype="int8")
    assert model.config.dtype == "int8"
    toks = np.random.default_rng(2).integers(0, 250, (2, 70))
    ref = ReferenceModel(dequantised(sd), gn_eps=64e-5)
    for mode in ("recurrent", "parallel"):
        logits, state = model.forward(toks, mode=mode, full_output=True)
        for b in range(2):
            want, wstate = ref.forward(toks[b], mode="parallel", full_output=True, chunk_len=64)
            np.testing.assert_allclose(logits[b], want, rtol=0, atol=1e-4, err_msg=mode)
            np.testing.assert_allclose(
                state.att_kv[b], wstate[1], rtol=0, atol=1e-4 * max(1, np.abs(wstate[1]).max())
            )


def test_int8_model_is_close_to_fp32():
    """Quantisation error itself, with a bound from measurement: on this random model int8 moves the
    logits by at most ~3% of their range (0.17 of 5.2 on L6 C512; see docs/performance.md)."""
    sd = random_state_dict("5.2", n_layer=3, n_embd=256, head_size=64, vocab_size=1000, seed=5)
    toks = np.random.default_rng(3).integers(0, 1000, 100)
    a, _ = rwkv5.Model.from_state_dict(sd).forward(toks, full_output=True)
    b, _ = rwkv5.Model.from_state_dict(sd, dtype="int8").forward(toks, full_output=True)
    assert np.abs(a - b).max() <= 0.06 * np.abs(a).max()
    assert np.abs(a - b).max() > 0  # it really is a different (quantised) model


def test_int8_dtype_name_and_errors():
    sd = random_state_dict("5.2", n_layer=1, n_embd=64, head_size=32, vocab_size=100, seed=1)
    m = rwkv5.Model.from_state_dict(sd, dtype="int8")
    assert m.config.dtype == "int8" and "int8" in repr(m)
    with pytest.raises(ValueError, match="dtype must be"):
        rwkv5.Model.from_state_dict(sd, dtype="int3")


# ---------------------------------------------------------------------------------------------
# The model under each RWKV5_ISA, in fresh processes (the ISA is read once from the environment)

SUBSET = (
    "test_parallel_equals_recurrent_logits_and_state or test_unbatched_state_is_shared_by_a_batch or "
    "test_batched_step_equals_each_sequence_alone or "
    "test_threads_do_not_change_results or test_acceptance_4_layers or test_continuation"
)


@pytest.mark.parametrize("isa_name", list(ISAS))
def test_model_subset_under_each_isa_environment(isa_name):
    probe = subprocess.run(
        [sys.executable, "-c", "import rwkv5._model as m; print(m.get_isa()[0])"],
        env={**os.environ, "RWKV5_ISA": isa_name},
        capture_output=True,
        text=True,
        check=True,
    )
    if probe.stdout.strip() != isa_name:
        pytest.skip(f"this CPU has no {isa_name}")
    here = os.path.dirname(os.path.abspath(__file__))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            os.path.join(here, "test_model.py"),
            "-k",
            SUBSET,
        ],
        env={**os.environ, "RWKV5_ISA": isa_name},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
