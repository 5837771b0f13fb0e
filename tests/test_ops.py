"""rwkv5.ops (C kernels as NumPy functions) against the float64 reference, and the matmul ISA paths."""

import numpy as np
import pytest

import rwkv5
from rwkv5 import _model
from rwkv5.reference import group_norm as ref_group_norm
from rwkv5.reference import layer_norm as ref_layer_norm
from rwkv5.reference import wkv_recurrent
from rwkv5.testing import bf16_bits_to_float32, float32_to_bf16_bits
from test_kernels_isa import ISAS


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("mode", ["recurrent", "parallel"])
@pytest.mark.parametrize("T", [1, 3, 64, 65, 130])
def test_wkv5_matches_reference(per_head, mode, T):
    rng = np.random.default_rng(T)
    H, N = 3, 16
    r, k, v = rand(rng, T, H, N), rand(rng, T, H, N), rand(rng, T, H, N)
    d = rng.uniform(-6, 4.6, (H,) if per_head else (H, N))  # includes w that underflow fp32
    w = np.exp(-np.exp(d)).astype(np.float32)
    u, S0 = rand(rng, H, N), rand(rng, H, N, N)
    y, S = rwkv5.ops.wkv5(r, k, v, w, u, S0, mode=mode)
    assert y.shape == (T, H, N) and S.shape == (H, N, N) and y.dtype == np.float32
    wf = np.broadcast_to(w.reshape(H, -1), (H, N)).astype(np.float64)
    yr, Sr = wkv_recurrent(
        r.astype(np.float64),
        k.astype(np.float64),
        v.astype(np.float64),
        wf,
        u.astype(np.float64),
        S0.astype(np.float64),
    )
    np.testing.assert_allclose(y, yr, rtol=0, atol=2e-5 * np.abs(yr).max())
    np.testing.assert_allclose(S, Sr, rtol=0, atol=2e-5 * np.abs(Sr).max())


def test_wkv5_zero_decay_and_defaults():
    rng = np.random.default_rng(0)
    r, k, v = rand(rng, 70, 1, 4), rand(rng, 70, 1, 4), rand(rng, 70, 1, 4)
    w, u = np.zeros((1, 4), np.float32), np.ones((1,), np.float32)
    yp, Sp = rwkv5.ops.wkv5(r, k, v, w, u, mode="parallel")
    yr, Sr = rwkv5.ops.wkv5(r, k, v, w, u)
    assert np.all(np.isfinite(yp))
    np.testing.assert_allclose(yp, yr, atol=1e-5)
    np.testing.assert_allclose(Sp, np.einsum("i,j->ij", k[-1, 0], v[-1, 0])[None], atol=1e-6)


def test_wkv5_bad_input():
    r = np.zeros((2, 1, 4), np.float32)
    w = np.full((1, 4), 0.5, np.float32)
    with pytest.raises(ValueError, match="k: expected shape"):
        rwkv5.ops.wkv5(r, r[:1], r, w, w)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rwkv5.ops.wkv5(r, r, r, w * 4, w)
    with pytest.raises(ValueError, match="state: expected shape"):
        rwkv5.ops.wkv5(r, r, r, w, w, np.zeros((1, 4, 3)))
    with pytest.raises(ValueError, match="w: expected shape"):
        rwkv5.ops.wkv5(r, r, r, np.full((2, 4), 0.5), w)
    with pytest.raises(ValueError, match="mode"):
        rwkv5.ops.wkv5(r, r, r, w, w, mode="x")
    with pytest.raises(ValueError, match="T >= 1"):
        rwkv5.ops.wkv5(r[:0], r[:0], r[:0], w, w)
    with pytest.raises(TypeError):
        rwkv5.ops.wkv5(r.astype(bool), r, r, w, w)


def test_layer_norm_and_group_norm():
    rng = np.random.default_rng(1)
    x = rand(rng, 3, 5, 96) * 4 + 1
    w, b = rand(rng, 96), rand(rng, 96)
    np.testing.assert_allclose(
        rwkv5.ops.layer_norm(x, w, b), ref_layer_norm(x.astype(np.float64), w, b, 1e-5), atol=2e-5
    )
    got = rwkv5.ops.group_norm(x, w, b, 6, eps=1e-5)
    np.testing.assert_allclose(got, ref_group_norm(x.astype(np.float64), w, b, 6, 1e-5), atol=2e-5)
    assert got.shape == x.shape and got.dtype == np.float32
    with pytest.raises(ValueError, match="divisible"):
        rwkv5.ops.group_norm(x, w, b, 7)
    with pytest.raises(ValueError, match="weight"):
        rwkv5.ops.layer_norm(x, w[:3], b)
    with pytest.raises(ValueError, match="eps"):
        rwkv5.ops.layer_norm(x, w, b, eps=0)
    with pytest.raises(ValueError, match="n_groups"):
        rwkv5.ops.group_norm(x, w, b, 0)


@pytest.mark.parametrize("isa", [0, 1, 2])
@pytest.mark.parametrize("storage", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("M,n,d", [(1, 1, 1), (1, 17, 5), (3, 33, 7), (5, 130, 9), (2, 200, 64)])
def test_matmul_isa_matches_float64(isa, storage, M, n, d):
    rng = np.random.default_rng(M * 1000 + n + d)
    x = rand(rng, M, n)
    w32 = rand(rng, d, n)
    w = {"fp32": w32, "fp16": w32.astype(np.float16), "bf16": float32_to_bf16_bits(w32)}[storage]
    wf = bf16_bits_to_float32(w) if storage == "bf16" else w.astype(np.float32)
    want = x.astype(np.float64) @ wf.astype(np.float64).T
    got = _model._matmul(x, (storage, w), isa)
    np.testing.assert_allclose(
        got, want, rtol=0, atol=1e-5 * np.sqrt(n) * max(1, np.abs(want).max())
    )
    threaded = _model._matmul(x, (storage, w), -1)
    np.testing.assert_allclose(
        threaded, want, rtol=0, atol=1e-5 * np.sqrt(n) * max(1, np.abs(want).max())
    )


def test_isa_names():
    used, best = _model.get_isa()
    assert used in ISAS and best in ISAS


@pytest.mark.parametrize("isa", [0, 1, 2])
def test_every_half_and_bf16_bit_pattern_widens_exactly(isa):
    """x = 1 times each of the 65536 fp16 / bf16 values gives the value back (subnormals, inf, nan)."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    one = np.ones((1, 1), np.float32)
    for w, want in (
        (("fp16", bits.view(np.float16).reshape(-1, 1)), bits.view(np.float16).astype(np.float32)),
        (("bf16", bits.reshape(-1, 1)), bf16_bits_to_float32(bits)),
    ):
        got = _model._matmul(one, w, isa)[0]
        nan = np.isnan(want)
        np.testing.assert_array_equal(np.isnan(got), nan)
        np.testing.assert_array_equal(got[~nan], want[~nan])


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis is in the test extra; without it this one test is skipped
    given = None

if given is not None:

    @settings(max_examples=40, deadline=None)
    @given(
        T=st.integers(1, 140),
        H=st.integers(1, 3),
        N=st.integers(1, 20),
        seed=st.integers(0, 2**31),
        lo=st.floats(-9, 4.5),
        span=st.floats(0, 3),
        per_head=st.booleans(),
    )
    def test_wkv5_both_modes_match_reference_hypothesis(T, H, N, seed, lo, span, per_head):
        rng = np.random.default_rng(seed)
        r, k, v = rand(rng, T, H, N), rand(rng, T, H, N), rand(rng, T, H, N)
        w = np.exp(-np.exp(rng.uniform(lo, lo + span, (H,) if per_head else (H, N)))).astype(
            np.float32
        )
        u, S0 = rand(rng, H, N), rand(rng, H, N, N)
        wf = np.broadcast_to(w.reshape(H, -1), (H, N)).astype(np.float64)
        yr, Sr = wkv_recurrent(
            r.astype(np.float64),
            k.astype(np.float64),
            v.astype(np.float64),
            wf,
            u.astype(np.float64),
            S0.astype(np.float64),
        )
        for mode in ("recurrent", "parallel"):
            y, S = rwkv5.ops.wkv5(r, k, v, w, u, S0, mode=mode)
            assert np.abs(y - yr).max() <= 1e-5 * max(1, np.abs(yr).max()) * np.sqrt(N)
            assert np.abs(S - Sr).max() <= 1e-5 * max(1, np.abs(Sr).max()) * np.sqrt(N)


def test_docstring_examples():
    import doctest

    import rwkv5.model
    import rwkv5.ops
    import rwkv5.reference
    import rwkv5.testing

    for mod in (rwkv5.ops, rwkv5.model, rwkv5.reference, rwkv5.testing):
        res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert res.failed == 0 and res.attempted > 0, mod.__name__
