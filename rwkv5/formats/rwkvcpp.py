"""Reader of rwkv.cpp `.bin` model files (docs/model.md §7.3), returning RWKV-LM names and raw values.

File layout (all int32 in machine order, little-endian here):

    header:  magic 0x67676d66, version (100 | 101), n_vocab, n_embed, n_layer, data_type
    then until EOF, per tensor:
             dim_count, key_len, data_type, shape[dim_count] (reversed vs PyTorch),
             key (UTF-8, key_len bytes, no terminator), data (prod(shape) elements)

Types: 0 FP32, 1 FP16 are read; the quantised ones (2 Q4_0, 3 Q4_1, 7 Q5_0, 8 Q5_1, 9 Q8_0) are
refused with an error naming the type.

rwkv.cpp's converter transforms some tensors; `read_rwkvcpp` undoes them so the result looks like an
RWKV-LM state dict:

* `time_decay` is stored as w = exp(-exp(d)); we return d = log(-log(w)) computed in float64 and kept
  as a float64 array (so exp(-exp(d)) gives back w without another rounding);
* `time_decay`/`time_faaaa` shaped (H, N, 1) become (H, N); per-head (H, 1, 1) become (H,);
* files of the "5v1" kind (no gate) store time_first already exponentiated (u = exp(time_first)):
  we return the stored value as `time_faaaa` (u used raw), which is the same model.

Matrices are views into a read-only mmap of the file (no copy); the mmap lives as long as any of
the arrays does.

    >>> sd, info = read_rwkvcpp("tiny-rwkv-5v2-730K-FP32.bin")
    >>> info["gn_eps"]   # rwkv.cpp computes GroupNorm with eps 1e-5 for v5 (not RWKV-LM's 64e-5)
    1e-05
"""
from __future__ import annotations

import mmap
import os

import numpy as np

MAGIC = 0x67676D66
VERSIONS = (100, 101)
TYPE_NAMES = {0: "FP32", 1: "FP16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_O", 5: "Q4_2", 6: "Q4_3",
              7: "Q5_0", 8: "Q5_1", 9: "Q8_0"}
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2")}
GN_EPS_RWKVCPP = 1e-5   # rwkv.cpp's rwkv_att_v5: ggml_norm(x, 1e-5) per head


def _fail(path, msg):
    raise ValueError(f"rwkv.cpp file {os.fspath(path)!r}: {msg}")


def read_rwkvcpp(path):
    """Read an rwkv.cpp model file. Returns (state_dict, info).

    state_dict: RWKV-LM names -> NumPy arrays (float32/float16 views into the file; float64 for
    time_decay). info: dict with format, file_version, data_type, n_vocab, n_embd, n_layer,
    gn_eps (1e-5: what rwkv.cpp computes; pass it to Model.from_state_dict to reproduce rwkv.cpp).
    Raises ValueError for anything malformed (bad magic/version, truncation, unsupported type),
    OSError if the file cannot be opened.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            _fail(path, f"too short for the 24-byte header ({size} bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = np.frombuffer(mm, dtype=np.uint8)
    hdr = buf[:24].view("<i4")
    magic, version, n_vocab, n_embd, n_layer, data_type = (int(x) for x in hdr)
    if magic != MAGIC and int.from_bytes(int(magic & 0xFFFFFFFF).to_bytes(4, "little"), "big") == MAGIC:
        _fail(path, "written on a big-endian machine (byte-swapped magic); only little-endian files are read")
    if magic != MAGIC:
        _fail(path, f"bad magic 0x{magic & 0xFFFFFFFF:08x}, expected 0x{MAGIC:08x} ('ggmf')")
    if version not in VERSIONS:
        _fail(path, f"unsupported file version {version}, expected one of {VERSIONS}")
    if n_vocab <= 0 or n_embd <= 0 or n_layer <= 0:
        _fail(path, f"bad header counts n_vocab={n_vocab} n_embed={n_embd} n_layer={n_layer}")

    raw = {}
    off = 24
    while off < size:
        if off + 12 > size:
            _fail(path, f"truncated tensor header at byte {off}")
        dim_count, key_len, ttype = (int(x) for x in buf[off:off + 12].view("<i4"))
        off += 12
        if not 1 <= dim_count <= 4 or not 0 < key_len <= 1024:
            _fail(path, f"bad tensor header at byte {off - 12}: dim_count={dim_count} key_len={key_len}")
        if off + 4 * dim_count + key_len > size:
            _fail(path, f"truncated tensor header at byte {off - 12}")
        shape = tuple(int(x) for x in buf[off:off + 4 * dim_count].view("<i4"))[::-1]
        off += 4 * dim_count
        try:
            key = bytes(buf[off:off + key_len]).decode("utf-8")
        except UnicodeDecodeError:
            _fail(path, f"tensor name at byte {off} is not UTF-8")
        off += key_len
        if ttype not in _DTYPES:
            _fail(path, f"tensor {key!r} has data type {ttype} ({TYPE_NAMES.get(ttype, 'unknown')}); "
                        "only FP32 (0) and FP16 (1) are supported")
        if any(s <= 0 for s in shape):
            _fail(path, f"tensor {key!r} has a non-positive dimension in shape {shape}")
        count = int(np.prod(shape))
        nbytes = count * _DTYPES[ttype].itemsize
        if off + nbytes > size:
            _fail(path, f"truncated: tensor {key!r} needs {nbytes} bytes at byte {off}, file has {size - off}")
        if key in raw:
            _fail(path, f"tensor {key!r} appears twice")
        raw[key] = np.frombuffer(mm, dtype=_DTYPES[ttype], count=count, offset=off).reshape(shape)
        off += nbytes

    gated = any(k.endswith("att.gate.weight") for k in raw)
    sd = {}
    for key, a in raw.items():
        if key.endswith("att.time_decay"):
            # w = exp(-exp(d))  =>  d = log(-log(w)), in float64 (w in (0,1); w = 0 gives d = +inf
            # which maps back to w = 0; that only happens for d > ~4.6 in fp32).
            w = a.astype(np.float64).reshape(a.shape[0], -1)
            if np.any((w < 0) | (w >= 1)) or np.any(~np.isfinite(w)):
                _fail(path, f"tensor {key!r} holds values outside [0, 1): not a converted decay")
            with np.errstate(divide="ignore"):
                d = np.log(-np.log(w))
            sd[key] = d if d.shape[1] > 1 else d.reshape(-1)
        elif key.endswith(("att.time_faaaa", "att.time_first")):
            u = np.asarray(a).reshape(a.shape[0], -1)
            u = u if u.shape[1] > 1 else u.reshape(-1)
            # rwkv.cpp "5v1" stores time_first already exponentiated: that is u, used raw.
            sd[key.replace("time_first", "time_faaaa")] = u
        elif ".time_mix_" in key:
            sd[key] = a.reshape(1, 1, -1)
        else:
            sd[key] = a
    if "emb.weight" not in sd:
        _fail(path, "no 'emb.weight' tensor")
    if tuple(sd["emb.weight"].shape) != (n_vocab, n_embd):
        _fail(path, f"'emb.weight' has shape {tuple(sd['emb.weight'].shape)}, header says "
                    f"({n_vocab}, {n_embd})")
    info = dict(format="rwkv.cpp", file_version=version, data_type=TYPE_NAMES.get(data_type, str(data_type)),
                n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, gn_eps=GN_EPS_RWKVCPP,
                rwkvcpp_arch="5v2" if gated else "5v1")
    return sd, info
