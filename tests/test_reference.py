"""The NumPy reference: its two forms agree, its building blocks do what the spec says."""

import numpy as np
import pytest

from rwkv5._checkpoint import detect_architecture, float32_to_bf16_bits, bf16_bits_to_float32
from rwkv5.reference import ReferenceModel, group_norm, layer_norm, wkv_parallel, wkv_recurrent
from rwkv5.testing import random_state_dict

VARIANTS = [("5.0", False), ("5.0", True), ("5.1", False), ("5.2", False)]


@pytest.mark.parametrize("version,time_first", VARIANTS)
@pytest.mark.parametrize("chunk_len", [1, 5, 16, 64])
def test_recurrent_equals_parallel_float64(version, time_first, chunk_len):
    sd = random_state_dict(
        version, n_layer=2, n_embd=64, head_size=16, seed=1, time_first=time_first
    )
    ref = ReferenceModel(sd)
    toks = np.random.default_rng(2).integers(0, 256, 70)
    a, sa = ref.forward(toks, mode="recurrent", full_output=True)
    b, sb = ref.forward(toks, mode="parallel", full_output=True, chunk_len=chunk_len)
    assert np.abs(a - b).max() < 1e-11
    for x, y in zip(sa, sb):
        assert np.abs(x - y).max() < 1e-10 * max(1, np.abs(x).max())


@pytest.mark.parametrize("lo,hi", [(-8, -5), (-6, 2.5), (0, 3.5), (4.5, 6)])
def test_wkv_parallel_equals_recurrent_for_extreme_decays(lo, hi):
    """Tiny (even underflowing) and near-1 decays: the chunked form has no negative powers, so no
    overflow or NaN, and equals the recurrence."""
    rng = np.random.default_rng(3)
    T, H, N = 100, 2, 16
    r, k, v = (rng.standard_normal((T, H, N)) for _ in range(3))
    w = np.exp(-np.exp(rng.uniform(lo, hi, (H, N))))
    u = rng.normal(0, 0.5, (H, N))
    S0 = rng.standard_normal((H, N, N))
    y1, s1 = wkv_recurrent(r, k, v, w, u, S0)
    for c in (1, 7, 16, 64):
        y2, s2 = wkv_parallel(r, k, v, w, u, S0, chunk_len=c)
        assert np.all(np.isfinite(y2))
        np.testing.assert_allclose(y2, y1, rtol=0, atol=1e-10 * np.abs(y1).max())
        np.testing.assert_allclose(s2, s1, rtol=0, atol=1e-10 * np.abs(s1).max())


def test_wkv_recurrence_by_hand():
    """One head, N = 1, scalar arithmetic: y_t = r (u k_t v_t + S), S <- w S + k_t v_t."""
    r, k, v = (
        np.array([[[2.0]], [[3.0]]]),
        np.array([[[5.0]], [[7.0]]]),
        np.array([[[11.0]], [[13.0]]]),
    )
    w, u, S = np.array([[0.5]]), np.array([[0.25]]), np.array([[[1.0]]])
    y, S1 = wkv_recurrent(r, k, v, w, u, S)
    assert y[0, 0, 0] == 2 * (0.25 * 5 * 11 + 1)
    s_after_0 = 0.5 * 1 + 5 * 11
    assert y[1, 0, 0] == 3 * (0.25 * 7 * 13 + s_after_0)
    assert S1[0, 0, 0] == 0.5 * s_after_0 + 7 * 13


def test_group_norm_divisor_identity_and_layer_norm():
    """GN(y / 8; eps) == GN(y; 64 eps) (docs/model.md §2.1); GroupNorm with one group is LayerNorm."""
    rng = np.random.default_rng(4)
    y = rng.standard_normal((5, 64)) * 3
    w, b = rng.standard_normal(64), rng.standard_normal(64)
    np.testing.assert_allclose(
        group_norm(y / 8, w, b, 4, 1e-5), group_norm(y, w, b, 4, 64e-5), atol=1e-12
    )
    np.testing.assert_allclose(group_norm(y, w, b, 1, 1e-5), layer_norm(y, w, b, 1e-5), atol=1e-12)
    z = layer_norm(y, np.ones(64), np.zeros(64), 0.0)
    np.testing.assert_allclose(z.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(z.var(-1), 1, atol=1e-12)


def test_time_first_is_exponentiated():
    """5.0 time_first t gives the same model as time_faaaa = exp(t)."""
    sd = random_state_dict(
        "5.0", n_layer=1, n_embd=32, head_size=8, seed=5, time_first=True, dtype=np.float64
    )
    sd2 = {
        k.replace("time_first", "time_faaaa"): (np.exp(v) if "time_first" in k else v)
        for k, v in sd.items()
    }
    a, _ = ReferenceModel(sd).forward([1, 2, 3])
    b, _ = ReferenceModel(sd2).forward([1, 2, 3])
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_detection_robust_to_one_layer_and_squeezable_shapes():
    for version, tf in VARIANTS:
        sd = random_state_dict(version, n_layer=1, n_embd=32, head_size=8, seed=6, time_first=tf)
        arch = detect_architecture(sd)
        assert (arch.version, arch.n_layer, arch.n_head, arch.head_size) == (version, 1, 4, 8)
        assert arch.bonus == ("time_first" if tf else "time_faaaa")
        # pip-style squeezed time_mix (C,) and trailing unit dims on decay are accepted
        sd2 = dict(sd)
        sd2["blocks.0.att.time_mix_k"] = sd["blocks.0.att.time_mix_k"].reshape(-1)
        sd2["blocks.0.att.time_decay"] = sd["blocks.0.att.time_decay"][..., None]
        assert detect_architecture(sd2) == arch


def test_single_head_52_is_not_mistaken_for_n_heads():
    sd = random_state_dict("5.2", n_layer=1, n_embd=16, head_size=16, seed=7)
    assert sd["blocks.0.att.time_decay"].shape == (1, 16)
    arch = detect_architecture(sd)
    assert (arch.version, arch.n_head, arch.head_size) == ("5.2", 1, 16)
    sd3 = dict(sd)
    sd3["blocks.0.att.time_decay"] = sd["blocks.0.att.time_decay"][
        ..., None
    ]  # rwkv.cpp-style (1, N, 1)
    sd3["blocks.0.att.time_faaaa"] = sd["blocks.0.att.time_faaaa"][..., None]
    assert detect_architecture(sd3) == arch


def test_detection_errors_name_the_tensor():
    sd = random_state_dict("5.2", n_layer=2, n_embd=32, head_size=8)
    for name in (
        "emb.weight",
        "blocks.1.att.time_faaaa",
        "blocks.0.att.ln_x.weight",
        "ln_out.bias",
    ):
        bad = {k: v for k, v in sd.items() if k != name}
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            detect_architecture(bad)
    bad = dict(sd)
    bad["blocks.1.att.time_decay"] = np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"blocks\.1\.att\.time_decay.*\(4, 8\).*\(4, 4\)"):
        detect_architecture(bad)
    with pytest.raises(ValueError, match="block"):
        detect_architecture({k: v for k, v in sd.items() if not k.startswith("blocks.0.")})
    with pytest.raises(TypeError):
        detect_architecture([1, 2])


def test_bf16_bit_conversion_rounds_to_nearest_even():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-9, -2.5, np.inf], np.float32)
    bits = float32_to_bf16_bits(x)
    np.testing.assert_array_equal(bf16_bits_to_float32(bits), [1.0, 1.0, 1.0 + 2**-7, -2.5, np.inf])
    assert np.isnan(bf16_bits_to_float32(float32_to_bf16_bits(np.array([np.nan], np.float32))))[0]


def test_random_state_dict_ranges():
    sd = random_state_dict("5.2", n_layer=2, n_embd=128, head_size=64)
    d = sd["blocks.0.att.time_decay"]
    assert (
        d.shape == (2, 64) and d.min() >= -6 and d.max() <= 2.5 and d.max() > 1.5 and d.min() < -5
    )
    assert 0 < sd["blocks.1.ffn.time_mix_k"].min() and sd["blocks.1.ffn.time_mix_k"].max() < 1
    assert sd["blocks.0.ffn.key.weight"].shape == (448, 128)
    assert abs(np.std(sd["blocks.0.att.key.weight"]) - 1 / np.sqrt(128)) < 0.01
    assert random_state_dict("5.0", n_embd=64, head_size=16)["blocks.0.ffn.key.weight"].shape == (
        256,
        64,
    )
    assert random_state_dict("5.1", dtype="bf16")["emb.weight"].dtype == np.uint16
    with pytest.raises(ValueError):
        random_state_dict("4.0")


def test_reference_reproduces_fixture(fixtures_dir):
    from rwkv5.formats.rwkvcpp import read_rwkvcpp

    sd, info = read_rwkvcpp(fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin")
    want = np.fromfile(fixtures_dir / "expected-logits-5v2-730K.bin", "<f4")
    ref = ReferenceModel(sd, gn_eps=info["gn_eps"])
    for mode in ("recurrent", "parallel"):
        got, _ = ref.forward([34, 105, 110], mode=mode)
        assert np.abs(got - want).max() < 1e-5
