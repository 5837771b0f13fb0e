"""Read a checkpoint of any supported format into a state dict (no model is built here).

The format is recognised from the file's first bytes, never from its extension:

* ``PK\\x03\\x04`` — a torch ``.pth`` ZIP archive (:mod:`rwkv5.formats.pth`, no torch, no pickle);
* ``66 6d 67 67`` (int32 0x67676d66) — an rwkv.cpp file (:mod:`rwkv5.formats.rwkvcpp`);
* an 8-byte little-endian length followed by ``{`` — safetensors (:mod:`rwkv5.formats.safetensors`);
* a folder — every ``*.safetensors`` in it (else every ``*.pth``/``*.bin`` torch file), merged:
  the layout of sharded Hugging Face checkpoints.

Names from the Hugging Face port are renamed to RWKV-LM names (docs/model.md §7.2). State-tuning
tensors ``blocks.{i}.att.time_state`` are not weights: they are taken out of the state dict
and returned apart (``info["time_state"]``, see :func:`time_state_to_att_kv`).

Default GroupNorm epsilon per format (docs/model.md §2.1): 64e-5 for .pth/safetensors (RWKV-LM/BlinkDL
checkpoints, what pip ``rwkv`` and HF use), 1e-5 for rwkv.cpp files (what rwkv.cpp computes).

:func:`rwkv5.load` (rwkv5/loading.py) builds a model from what :func:`read_checkpoint` returns.
"""

from __future__ import annotations

import os
import re
import struct

import numpy as np

from .._checkpoint import bf16_bits_to_float32, float32_to_bf16_bits
from ._files import open_regular
from .quantized import META_KEY, group_quantized

__all__ = [
    "read_checkpoint",
    "time_state_to_att_kv",
    "sniff_format",
    "convert_array",
    "f32_to_bf16_bits",
    "bf16_bits_to_f32",
    "DTYPES",
    "DEFAULT_GN_EPS",
]

DTYPES = (None, "fp32", "bf16", "fp16")
DEFAULT_GN_EPS = {"pth": 64e-5, "safetensors": 64e-5, "rwkvcpp": 1e-5}
RWKVCPP_MAGIC = 0x67676D66

_TIME_STATE = re.compile(r"^blocks\.(\d+)\.att\.time_state$")
# safetensors dtype -> our kind name; anything else is not a weight
_ST_KINDS = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}


def sniff_format(path) -> str:
    """Return "pth", "safetensors", "rwkvcpp" or "dir" from the content at ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "dir"
    with open_regular(path) as f:  # a FIFO or a device is refused here, before any read
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "pth"
    if len(head) >= 4 and struct.unpack("<I", head[:4])[0] == RWKVCPP_MAGIC:
        return "rwkvcpp"
    if len(head) == 9 and head[8:9] == b"{":
        return (
            "safetensors"  # (checked before the pickle byte: a header length may start with 0x80)
        )
    if head[:1] == b"\x80":
        return "pth"  # a bare pickle: the .pth reader explains that legacy torch files are not read
    raise ValueError(
        f"{path}: unrecognised checkpoint format (first bytes {head!r}); expected a torch .pth "
        "ZIP archive, a safetensors file or an rwkv.cpp file (magic 0x67676d66)"
    )


def _read_one(path, fmt, mmap=True):
    """(state_dict, kinds, metadata) for one file; kinds: name -> "fp32"/"fp16"/"bf16"/"fp64"."""
    if fmt == "pth":
        from .pth import read_pth

        return read_pth(path, mmap=mmap) + ({},)
    if fmt == "safetensors":
        from .safetensors import read_safetensors

        tensors, dtypes, meta = read_safetensors(path, mmap=mmap)
        if META_KEY in meta:  # the saved form of a quantised model (formats/quantized.py)
            tensors, dtypes = group_quantized(tensors, dtypes, meta, path)
        kinds = {}
        for k, dt in dtypes.items():
            if dt not in _ST_KINDS:
                raise ValueError(
                    f"{path}: tensor {k!r} has dtype {dt}; checkpoint tensors must be "
                    f"one of {', '.join(_ST_KINDS)}"
                )
            kinds[k] = _ST_KINDS[dt]
        return tensors, kinds, meta
    raise AssertionError(fmt)


def _kind_of(a: np.ndarray) -> str:
    # The rwkv.cpp reader follows the package convention: uint16 arrays are raw bf16 bits.
    return {"f4": "fp32", "f2": "fp16", "u2": "bf16", "f8": "fp64"}[
        a.dtype.kind + str(a.dtype.itemsize)
    ]


def read_checkpoint(path, mmap=True):
    """Read a checkpoint into ``(state_dict, info)`` without building a model.

    ``state_dict`` maps RWKV-LM names (docs/model.md §3, raw values) to NumPy arrays (bf16 as uint16 bits,
    zero-copy mmap views where the format allows; with ``mmap=False``, views of a private copy of
    the file, which is closed on return — see :func:`rwkv5.load`). ``info`` is a dict with ``format``, ``gn_eps``
    (the format's default), ``kinds`` (name -> "fp32"/"fp16"/"bf16"/"fp64"), ``hf_names`` (bool)
    and ``time_state`` (``None`` or an (L, H, N, N) float32 array in our [h][key][value] layout).
    """
    path = os.fspath(path)
    fmt = sniff_format(path)
    info = {"format": fmt, "hf_names": False, "time_state": None, "files": [path]}
    if fmt == "rwkvcpp":
        from .rwkvcpp import read_rwkvcpp

        sd, cpp_info = read_rwkvcpp(path, mmap=mmap)
        info.update({k: v for k, v in dict(cpp_info).items() if k not in info})
        info["gn_eps"] = DEFAULT_GN_EPS["rwkvcpp"]
        info["kinds"] = {k: _kind_of(v) for k, v in sd.items()}
        return sd, info
    if fmt == "dir":
        names = sorted(os.listdir(path))
        files = [n for n in names if n.endswith(".safetensors")] or [
            n
            for n in names
            if n.endswith((".pth", ".bin")) and os.path.isfile(os.path.join(path, n))
        ]
        if not files:
            raise ValueError(
                f"{path}: folder holds no *.safetensors, *.pth or *.bin checkpoint files"
            )
        sd, kinds = {}, {}
        for n in files:
            p = os.path.join(path, n)
            sub_fmt = sniff_format(p)
            if sub_fmt not in ("pth", "safetensors"):
                raise ValueError(
                    f"{p}: a sharded checkpoint must consist of .pth or safetensors files, got {sub_fmt}"
                )
            s, k, _meta = _read_one(p, sub_fmt, mmap)
            dup = set(s) & set(sd)
            if dup:
                raise ValueError(f"{p}: tensor {sorted(dup)[0]!r} also appears in another shard")
            sd.update(s)
            kinds.update(k)
        info["files"] = [os.path.join(path, n) for n in files]
        info["format"] = sub_fmt
    else:
        sd, kinds, meta = _read_one(path, fmt, mmap)
        info["metadata"] = meta
    info["gn_eps"] = DEFAULT_GN_EPS[info["format"]]
    # `rwkv5 convert` records the source's epsilon (e.g. 1e-5 for an rwkv.cpp file) so that a
    # converted file computes what its source did.
    if "gn_eps" in info.get("metadata", {}):
        try:
            info["gn_eps"] = float(info["metadata"]["gn_eps"])
        except ValueError:
            raise ValueError(
                f"{path}: metadata gn_eps {info['metadata']['gn_eps']!r} is not a number"
            ) from None
        if not info["gn_eps"] > 0:
            raise ValueError(f"{path}: metadata gn_eps {info['gn_eps']!r} is not positive")
    from .hf import hf_to_rwkvlm, is_hf_names

    if is_hf_names(sd):
        sd = hf_to_rwkvlm(sd)
        from .hf import hf_name_to_rwkvlm

        kinds = {hf_name_to_rwkvlm(k): v for k, v in kinds.items()}
        info["hf_names"] = True
    ts = {}
    for k in list(sd):
        m = _TIME_STATE.match(k)
        if m:
            ts[int(m.group(1))] = convert_array(sd.pop(k), kinds.pop(k), "fp32")
    if ts:
        info["time_state"] = time_state_to_att_kv(ts, where=path)
    info["kinds"] = kinds
    return sd, info


# -- dtype conversion --------------------------------------------------------------------------

# one implementation of the bf16 <-> fp32 conversions, shared with the model (rwkv5/_checkpoint.py)
bf16_bits_to_f32 = bf16_bits_to_float32
f32_to_bf16_bits = float32_to_bf16_bits


def convert_array(a: np.ndarray, kind: str, dtype) -> np.ndarray:
    """Convert array ``a`` stored as ``kind`` ("fp32"/"fp16"/"bf16"/"fp64") to ``dtype``
    ("fp32"/"fp16"/"bf16"; None keeps it). Returns ``a`` itself when nothing changes (zero copy)."""
    if dtype is None or dtype == kind:
        return a
    if dtype == "fp64":
        return (
            bf16_bits_to_f32(a).astype(np.float64) if kind == "bf16" else np.asarray(a, np.float64)
        )
    if dtype == "fp32":
        return bf16_bits_to_f32(a) if kind == "bf16" else np.asarray(a, np.float32)
    f32 = bf16_bits_to_f32(a) if kind == "bf16" else np.asarray(a, np.float32)
    if dtype == "bf16":
        return f32_to_bf16_bits(
            f32
        )  # fp64 -> fp32 -> bf16 rounds twice; no real checkpoint is fp64
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            h = f32.astype(np.float16)
        bad = np.isinf(h) & np.isfinite(f32)
        if bad.any():
            raise ValueError(
                f"a value of magnitude {float(np.abs(f32[bad]).max()):.6g} overflows float16 "
                "(max 65504); keep this tensor in fp32 or bf16"
            )
        return h
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def time_state_to_att_kv(time_states: dict, where: str = "time_state") -> np.ndarray:
    """{layer index: (H, N, N) time_state} -> (L, H, N, N) float32 ``att_kv`` in our layout.

    RWKV-LM's state-tuning kernel keeps, per head, one row per *value* channel j holding the
    N key-channel entries (thread j owns column S[:, j] of the math), so the saved tensor is
    indexed [h][value][key]. Our state (docs/model.md §5) is S[h][key][value], with the decay on the
    key index. Hence ``att_kv[i] = time_state[i].transpose(0, 2, 1)`` — the same
    ``transpose(1, 2)`` pip ``rwkv`` applies when it loads these tensors (docs/model.md §7.4).
    """
    n_layer = len(time_states)
    if sorted(time_states) != list(range(n_layer)):
        raise ValueError(
            f"{where}: time_state layers {sorted(time_states)} are not 0..{n_layer - 1}"
        )
    shape = None
    out = None
    for i in range(n_layer):
        t = np.asarray(time_states[i])
        if t.ndim != 3 or t.shape[1] != t.shape[2]:
            raise ValueError(
                f"{where}: blocks.{i}.att.time_state has shape {t.shape}, expected (H, N, N)"
            )
        if shape is None:
            shape = t.shape
            out = np.empty((n_layer,) + shape, np.float32)
        elif t.shape != shape:
            raise ValueError(
                f"{where}: blocks.{i}.att.time_state has shape {t.shape}, layer 0 has {shape}"
            )
        out[i] = t.transpose(0, 2, 1)
    return out
