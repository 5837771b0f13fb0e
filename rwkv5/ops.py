"""The model's C kernels as NumPy functions (float32 in, float32 out; the GIL is released).

>>> import numpy as np, rwkv5
>>> T, H, N = 5, 2, 8
>>> r, k, v = (np.random.rand(T, H, N).astype(np.float32) for _ in range(3))
>>> w = np.full((H, N), 0.9, np.float32); u = np.zeros((H, N), np.float32)
>>> y, S = rwkv5.ops.wkv5(r, k, v, w, u, None, mode="parallel")
>>> y.shape, S.shape
((5, 2, 8), (2, 8, 8))
"""

from __future__ import annotations

import numpy as np

from . import _model

__all__ = ["wkv5", "layer_norm", "group_norm"]


def _f32(a, name):
    a = np.asarray(a)
    if a.dtype.kind not in "fiu" or a.dtype.kind == "b":
        raise TypeError(f"{name}: expected a float array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _per_channel(a, name, H, N):
    a = _f32(a, name)
    if a.shape in ((H,), (H, 1), (H, 1, 1)):
        a = a.reshape(H, 1)
    elif a.shape == (H, N, 1):
        a = a.reshape(H, N)
    if a.shape not in ((H, 1), (H, N)):
        raise ValueError(f"{name}: expected shape ({H}, {N}) or ({H},), got {a.shape}")
    return np.ascontiguousarray(np.broadcast_to(a, (H, N)))


def wkv5(r, k, v, w, u, state=None, mode="recurrent"):
    """The RWKV-5 WKV over T tokens of H heads of size N (docs/model.md §4.4 / §6).

    r, k, v: (T, H, N); w: the decay in [0, 1] (not time_decay), per channel (H, N) or per head (H,);
    u: the bonus, same shapes as w; state: (H, N, N) [h][key i][value j] or None for zeros.
    mode "recurrent" steps token by token; "parallel" uses the chunked matrix form (chunks of 64,
    only non-negative powers of w). Returns (y (T, H, N), new_state (H, N, N)); state is not modified.

        y_t[j] = sum_i r_t[i] (u[i] k_t[i] v_t[j] + S[i][j]);   S[i][j] <- w[i] S[i][j] + k_t[i] v_t[j]
    """
    if mode not in ("recurrent", "parallel"):
        raise ValueError(f"mode must be 'recurrent' or 'parallel', got {mode!r}")
    r = _f32(r, "r")
    if r.ndim != 3:
        raise ValueError(f"r: expected shape (T, H, N), got {r.shape}")
    T, H, N = r.shape
    if T == 0:
        raise ValueError("r: need at least one token (T >= 1)")
    k, v = _f32(k, "k"), _f32(v, "v")
    for name, a in (("k", k), ("v", v)):
        if a.shape != r.shape:
            raise ValueError(f"{name}: expected shape {r.shape} (same as r), got {a.shape}")
    w, u = _per_channel(w, "w", H, N), _per_channel(u, "u", H, N)
    if not np.all((w >= 0) & (w <= 1)):
        raise ValueError(
            "w: the decay must lie in [0, 1] (pass exp(-exp(time_decay)), not time_decay)"
        )
    if state is None:
        state = np.zeros((H, N, N), np.float32)
    else:
        state = _f32(state, "state")
        if state.shape != (H, N, N):
            raise ValueError(f"state: expected shape {(H, N, N)}, got {state.shape}")
    return _model.wkv5(r, k, v, w, u, state, 1 if mode == "parallel" else 0)


def layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias (biased var).

    x: (..., C); weight, bias: (C,). Returns float32 of x's shape.
    >>> layer_norm(np.arange(4.0), np.ones(4), np.zeros(4)).round(3)
    array([-1.342, -0.447,  0.447,  1.342], dtype=float32)
    """
    return _norm(x, weight, bias, eps, 0)


def group_norm(x, weight, bias, n_groups, eps=64e-5):
    """GroupNorm over the last axis split into n_groups contiguous groups (RWKV-5's ln_x).

    x: (..., A) with A % n_groups == 0; weight, bias: (A,). Each group is normalised like
    layer_norm, then the per-channel affine is applied. Returns float32 of x's shape.
    """
    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 1:
        raise ValueError(f"n_groups must be a positive int, got {n_groups!r}")
    return _norm(x, weight, bias, eps, int(n_groups))


def _norm(x, weight, bias, eps, groups):
    x = _f32(x, "x")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"x: expected shape (..., C) with C >= 1, got {x.shape}")
    C = x.shape[-1]
    weight, bias = _f32(weight, "weight"), _f32(bias, "bias")
    for name, a in (("weight", weight), ("bias", bias)):
        if a.shape != (C,):
            raise ValueError(f"{name}: expected shape ({C},), got {a.shape}")
    if groups and C % groups:
        raise ValueError(f"x: last axis {C} is not divisible by n_groups={groups}")
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    flat = x.reshape(-1, C)
    if flat.shape[0] == 0:
        return np.empty(x.shape, np.float32)
    return _model.layer_norm(flat, weight, bias, eps, groups).reshape(x.shape)
