"""Reading an RWKV-LM-named state dict: architecture detection and shape validation (docs/model.md §2.2, §3).

Shared by the NumPy reference (`rwkv5.reference`) and the C-backed `rwkv5.Model`, so both see the
same architecture for the same dict. Nothing here does arithmetic on the large matrices.

Values are raw as RWKV-LM stores them: `time_decay` is d (w = exp(-exp(d))), `time_faaaa` is the
bonus u used as is, `time_first` is ln u (5.0 only). Arrays may be float16/float32/float64 or
uint16 holding raw bfloat16 bits (NumPy has no bfloat16).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import _model

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class Architecture:
    version: str  # "5.0", "5.1", "5.2"
    n_layer: int
    n_embd: int  # C
    n_head: int  # H
    head_size: int  # N  (A = H*N)
    n_ffn: int  # F
    vocab_size: int  # V
    bonus: str  # "time_faaaa" (u raw) or "time_first" (u = exp(time_first))

    @property
    def dim_att(self) -> int:
        return self.n_head * self.head_size


class Param(NamedTuple):
    """One row of the C parameter table (`rwkv5._model.PARAMS`, csrc/model/params.c)."""

    name: str  # RWKV-LM name; for a per-layer one the part after "blocks.{i}."
    per_layer: bool
    kind: str  # "matrix"; "vector" (float32); "decay" (ln w per channel, float64); "bonus" (u per channel)
    dims: tuple  # the shape in the model, in terms of "C", "A", "F", "V"
    gate_only: bool  # only in gated models (5.1, 5.2)

    def shape(self, arch: Architecture) -> tuple:
        size = {"C": arch.n_embd, "A": arch.dim_att, "F": arch.n_ffn, "V": arch.vocab_size}
        return tuple(size[d] for d in self.dims)


PARAMS = tuple(Param(*row) for row in _model.PARAMS)


def model_params(arch: Architecture):
    """(full name, layer or None, Param) for every parameter the architecture has, in the table's
    order: the globals, then layer by layer."""
    gated = arch.version != "5.0"
    for p in PARAMS:
        if not p.per_layer:
            yield p.name, None, p
    for i in range(arch.n_layer):
        for p in PARAMS:
            if p.per_layer and (gated or not p.gate_only):
                yield f"blocks.{i}.{p.name}", i, p


def bf16_bits_to_float32(a: np.ndarray) -> np.ndarray:
    """uint16 raw bfloat16 bits -> float32 (exact: bf16 is the top half of an fp32)."""
    return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> uint16 raw bfloat16 bits, rounding to nearest, ties to even (what torch does);
    NaN stays NaN. Works in uint32 (4 bytes per element of scratch, for multi-GB tensors)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    # u + 0x7FFF + lsb rounds the dropped low half to nearest, ties toward the even kept bit; the
    # uint32 sum can only wrap for NaN bit patterns, which are fixed up below.
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(a, np.float32))
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | np.uint32(0x0040)).astype(
            np.uint16
        )  # keep sign, force quiet NaN
    return rounded


def native_order(a) -> np.ndarray:
    """`a` as an array in the machine's byte order (a big-endian '>f4' tensor becomes a native
    float32 copy; arrays already native are returned as they are)."""
    a = np.asarray(a)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def as_float(a, dtype=np.float64) -> np.ndarray:
    """Any accepted tensor (float16/32/64 or uint16 = bf16 bits, either byte order) as a float
    array of `dtype`."""
    a = native_order(a)
    if a.dtype == np.uint16:
        return bf16_bits_to_float32(a).astype(dtype, copy=False)
    if a.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(
            f"tensor dtype must be float16, float32, float64 or uint16 (bf16 bits), got {a.dtype}"
        )
    return a.astype(dtype, copy=False)


def _shape(sd, name):
    if name not in sd:
        raise ValueError(f"state dict is missing tensor {name!r}")
    return tuple(np.shape(sd[name]))


def _squeezed(shape):
    return tuple(s for s in shape if s != 1)


def _strip_trailing_ones(shape):
    """(H, N, 1) -> (H, N); (H, 1, 1) -> (H,); (1, N) stays (one head of N channels)."""
    shape = tuple(shape)
    while len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def detect_architecture(sd) -> Architecture:
    """Version, sizes and bonus kind from names and shapes; validates every tensor's shape.

    Unlike the pip loader (docs/model.md §2.2) this does not depend on key order, so a 1-layer model works.
    Raises ValueError naming the tensor with the expected and actual shape.
    """
    if not hasattr(sd, "keys"):
        raise TypeError(f"state dict must be a mapping of names to arrays, got {type(sd).__name__}")
    layers = {int(m.group(1)) for k in sd.keys() if (m := _BLOCK_RE.match(k))}
    if not layers:
        raise ValueError("state dict has no 'blocks.{i}.' tensors: not an RWKV checkpoint")
    n_layer = max(layers) + 1
    missing = sorted(set(range(n_layer)) - layers)
    if missing:
        raise ValueError(f"state dict has no tensors for block(s) {missing} (n_layer = {n_layer})")

    es = _shape(sd, "emb.weight")
    if len(es) != 2:
        raise ValueError(f"tensor 'emb.weight': expected shape (V, C), got {es}")
    V, C = es
    ks = _shape(sd, "blocks.0.att.key.weight")
    if (
        len(ks) == 2
        and ks[1] != C
        and "blocks.0.ln1.weight" in sd
        and _squeezed(_shape(sd, "blocks.0.ln1.weight")) == (ks[1],)
    ):
        # two tensors say n_embd = ks[1]: the embedding is the odd one out (e.g. stored transposed)
        raise ValueError(
            f"tensor 'emb.weight': expected shape (V, {ks[1]}) (n_embd {ks[1]} from "
            f"'blocks.0.att.key.weight' and 'blocks.0.ln1.weight'), got {es}"
        )
    if len(ks) != 2 or ks[1] != C:
        raise ValueError(f"tensor 'blocks.0.att.key.weight': expected shape (A, {C}), got {ks}")
    A = ks[0]
    fs = _shape(sd, "blocks.0.ffn.key.weight")
    if len(fs) != 2 or fs[1] != C:
        raise ValueError(f"tensor 'blocks.0.ffn.key.weight': expected shape (F, {C}), got {fs}")
    F = fs[0]
    if "blocks.0.att.ln_x.weight" not in sd:
        raise ValueError(
            "state dict is missing tensor 'blocks.0.att.ln_x.weight' (not an RWKV-5 checkpoint?)"
        )
    if any(".time_maa" in k for k in sd.keys()):
        raise ValueError("state dict has 'time_maa' tensors: an RWKV-6 checkpoint, not RWKV-5")

    gated = "blocks.0.att.gate.weight" in sd
    # Only trailing unit dims are dropped (pip/rwkv.cpp add them): a single-head 5.2 model has
    # time_decay (1, N), which full squeezing would misread as N heads.
    ds = _strip_trailing_ones(_shape(sd, "blocks.0.att.time_decay"))
    if len(ds) == 1:  # one decay per head
        H = ds[0]
        per_channel = False
    elif len(ds) == 2:  # (H, N): one decay per channel
        H = ds[0]
        per_channel = True
        if ds[0] * ds[1] != A:
            raise ValueError(
                f"tensor 'blocks.0.att.time_decay': expected shape (H, N) with H*N = {A}, got {ds}"
            )
    elif len(ds) == 0:  # a 0-d scalar: one head
        H = 1
        per_channel = False
    else:
        raise ValueError(
            f"tensor 'blocks.0.att.time_decay': expected shape (H,) or (H, N), got {_shape(sd, 'blocks.0.att.time_decay')}"
        )
    if H <= 0 or A % H != 0:
        raise ValueError(f"tensor 'blocks.0.att.time_decay': {H} heads do not divide dim_att {A}")
    N = A // H
    if per_channel and not gated:
        raise ValueError(
            "per-channel time_decay (H, N) without 'att.gate.weight': not a known RWKV-5 variant"
        )
    version = "5.2" if per_channel else ("5.1" if gated else "5.0")
    if "blocks.0.att.time_faaaa" in sd:
        bonus = "time_faaaa"
    elif "blocks.0.att.time_first" in sd and version == "5.0":
        bonus = "time_first"
    else:
        raise ValueError(
            "state dict is missing tensor 'blocks.0.att.time_faaaa'"
            + (" (or 'blocks.0.att.time_first')" if version == "5.0" else "")
        )

    arch = Architecture(version, n_layer, C, H, N, F, V, bonus)
    for name, shape, squeeze in expected_shapes(arch):
        got = _shape(sd, name)
        if (_squeezed(got) != _squeezed(shape)) if squeeze else (got != shape):
            raise ValueError(f"tensor {name!r}: expected shape {shape}, got {got}")
    return arch


def expected_shapes(arch: Architecture):
    """(name, shape, may_have_extra_unit_dims) for every tensor the architecture needs, as RWKV-LM
    stores it: the model's parameters (`model_params`), with the token-shift mixes as (1, 1, C) and
    the decay and bonus per head (H,) or, in 5.2, per channel (H, N); the bonus of a 5.0 file may be
    `time_first`."""
    dec = (arch.n_head, arch.head_size) if arch.version == "5.2" else (arch.n_head,)
    out = []
    for name, layer, p in model_params(arch):
        if p.kind == "decay":
            out.append((name, dec, True))
        elif p.kind == "bonus":
            out.append((f"blocks.{layer}.att.{arch.bonus}", dec, True))
        elif ".time_mix_" in name:
            out.append((name, (1, 1, arch.n_embd), True))
        else:
            out.append((name, p.shape(arch), False))
    return out


def decay_and_bonus(sd, arch: Architecture, layer: int):
    """Per-channel (H, N) float64 arrays (ln w, w, u) for one layer, from the raw tensors.

    ln w = -exp(time_decay) and w = exp(ln w) in float64 (per-head values repeated over N);
    u = time_faaaa, or exp(time_first) for 5.0 files that carry time_first.
    """
    H, N = arch.n_head, arch.head_size
    p = f"blocks.{layer}.att."
    d = as_float(sd[p + "time_decay"]).reshape(H, -1)
    logw = np.broadcast_to(-np.exp(d), (H, N)).copy()
    b = as_float(sd[p + arch.bonus]).reshape(H, -1)
    u = np.exp(b) if arch.bonus == "time_first" else b
    return logw, np.exp(logw), np.broadcast_to(u, (H, N)).copy()
