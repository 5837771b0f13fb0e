"""Helpers for tests and benchmarks: random RWKV-5 models with realistic value ranges.

>>> from rwkv5.testing import random_state_dict
>>> sd = random_state_dict("5.2", n_layer=2, n_embd=128, head_size=64)
>>> sd["blocks.0.att.time_decay"].shape
(2, 64)
"""

from __future__ import annotations

import numpy as np

from ._checkpoint import Architecture, model_params
from ._checkpoint import bf16_bits_to_float32, float32_to_bf16_bits  # noqa: F401  (re-exported)


def random_state_dict(
    version="5.2",
    n_layer=2,
    n_embd=128,
    head_size=64,
    vocab_size=256,
    n_ffn=None,
    seed=0,
    dtype=np.float32,
    time_first=False,
    tiled=False,
):
    """A random RWKV-LM state dict (names and raw values as in docs/model.md §3).

    version: "5.0", "5.1" or "5.2"; time_first=True (5.0 only) stores the bonus as `time_first`
    (u = exp(time_first)) instead of `time_faaaa`. dtype: float32, float64, float16, or "bf16"
    (uint16 raw bfloat16 bits). n_ffn defaults to 4*C for 5.0 and int(3.5*C)//32*32 otherwise.

    Ranges follow trained models: time_decay uniform in [-6, 2.5] (so some w = exp(-exp(d)) are
    tiny, ~1e-5), time_faaaa ~ N(0, 0.5), time_mix in (0.05, 0.95), LayerNorm/GroupNorm weights
    near 1, matrices ~ N(0, 1/fan_in).

    tiled=True (for benchmark-sized models, where only the speed matters): every matrix is copied
    from one block of 4M N(0, 1) normals at random offsets, scaled and converted to ``dtype`` a
    slice at a time, so a model of billions of weights is made in seconds without a float32 copy
    of it. The values then differ from tiled=False for the same seed.
    """
    if version not in ("5.0", "5.1", "5.2"):
        raise ValueError(f"version must be '5.0', '5.1' or '5.2', got {version!r}")
    if time_first and version != "5.0":
        raise ValueError("time_first exists only in 5.0 checkpoints")
    if n_embd % head_size:
        raise ValueError(f"head_size {head_size} must divide n_embd {n_embd}")
    rng = np.random.default_rng(seed)
    C, N, V = n_embd, head_size, vocab_size
    H = C // N
    F = n_ffn if n_ffn is not None else (4 * C if version == "5.0" else int(C * 3.5) // 32 * 32)

    bf16 = isinstance(dtype, str) and dtype == "bf16"
    block = rng.standard_normal(1 << 22, dtype=np.float32) if tiled else None

    def mat(rows, cols):  # drawn in float32: large models stay cheap to generate
        if tiled:
            return _tiled_matrix(rng, block, rows, cols, np.float32(1 / np.sqrt(cols)), bf16, dtype)
        m = rng.standard_normal((rows, cols), dtype=np.float32)
        m *= np.float32(1 / np.sqrt(cols))
        return m

    def near(val, n, s=0.1):
        return val + s * rng.standard_normal(n)

    dshape = (H, N) if version == "5.2" else (H,)
    arch = Architecture(
        version, n_layer, C, H, N, F, V, "time_first" if time_first else "time_faaaa"
    )

    def draw(name, p):
        if name == "emb.weight":
            if tiled:
                return _tiled_matrix(rng, block, V, C, np.float32(1), bf16, dtype)
            return rng.standard_normal((V, C), dtype=np.float32)
        if p.kind == "matrix":
            return mat(*p.shape(arch))
        if p.kind == "decay":
            return rng.uniform(-6.0, 2.5, dshape)
        if p.kind == "bonus":
            return rng.normal(0.0, 0.5, dshape)
        if ".time_mix_" in name:
            return rng.uniform(0.05, 0.95, (1, 1, C))
        return near(
            1.0 if name.endswith(".weight") else 0.0, p.shape(arch)[0]
        )  # LayerNorm / GroupNorm

    sd = {}
    for name, layer, p in model_params(arch):  # every parameter of the C table, in its order
        if p.kind == "bonus":
            name = f"blocks.{layer}.att.{arch.bonus}"
        sd[name] = draw(name, p)
    if bf16:
        return {
            k: v if v.dtype == np.uint16 else float32_to_bf16_bits(v.astype(np.float32))
            for k, v in sd.items()
        }
    return {k: v.astype(dtype, copy=False) for k, v in sd.items()}


def _tiled_matrix(rng, block, rows, cols, scale, bf16, dtype):
    """A (rows, cols) matrix of ``block`` values at random offsets times ``scale``, stored as
    ``dtype`` (uint16 bf16 bits when ``bf16``), written 1M values at a time."""
    out = np.empty((rows, cols), np.uint16 if bf16 else dtype)
    flat = out.reshape(-1)
    step = 1 << 20
    tmp = np.empty(step, np.float32)
    for s in range(0, flat.size, step):
        e = min(flat.size, s + step)
        off = int(rng.integers(0, block.size - step))
        np.multiply(block[off : off + e - s], scale, out=tmp[: e - s])
        flat[s:e] = float32_to_bf16_bits(tmp[: e - s]) if bf16 else tmp[: e - s]
    return out


def round_weights(sd, dtype):
    """The state dict as the model sees it after storing its large matrices as `dtype`
    ("fp32", "fp16", "bf16"), returned as float64 — what to feed the reference to compare with a
    model built with that dtype. Small vectors are kept as they are (the model keeps them fp32)."""
    out = {}
    for k, v in sd.items():
        v = np.asarray(v)
        f = bf16_bits_to_float32(v) if v.dtype == np.uint16 else v
        if v.ndim == 2 and not k.endswith(("time_decay", "time_faaaa", "time_first")):
            f = np.asarray(f, np.float32)
            if dtype == "fp16":
                f = f.astype(np.float16)
            elif dtype == "bf16":
                f = bf16_bits_to_float32(float32_to_bf16_bits(f))
        elif not k.endswith(("time_decay", "time_faaaa", "time_first")):
            f = np.asarray(f, np.float32)  # small vectors are fp32 in the model
        out[k] = np.asarray(f, np.float64)
    return out
