"""Reader of rwkv.cpp `.bin` model files (docs/model.md §7.3), returning RWKV-LM names and raw values.

File layout (all int32 in machine order, little-endian here):

    header:  magic 0x67676d66, version (100 | 101), n_vocab, n_embed, n_layer, data_type
    then until EOF, per tensor:
             dim_count, key_len, data_type, shape[dim_count] (reversed vs PyTorch),
             key (UTF-8, key_len bytes, no terminator), data (prod(shape) elements)

Types: 0 FP32 and 1 FP16 are read as they are; the quantised ones (2 Q4_0, 3 Q4_1, 7 Q5_0, 8 Q5_1,
9 Q8_0; file version 101 only) are read as `QuantizedTensor`s, which dequantize exactly to float32
when used (see "Quantised tensors" below). Others (4-6, retired by ggml) are refused.

rwkv.cpp's converter transforms some tensors; `read_rwkvcpp` undoes them so the result looks like an
RWKV-LM state dict:

* `time_decay` is stored as w = exp(-exp(d)); we return d = log(-log(w)) computed in float64 and kept
  as a float64 array (so exp(-exp(d)) gives back w without another rounding);
* `time_decay`/`time_faaaa` shaped (H, N, 1) become (H, N); per-head (H, 1, 1) become (H,);
* files of the "5v1" kind (no gate) store time_first already exponentiated (u = exp(time_first)):
  we return the stored value as `time_faaaa` (u used raw), which is the same model.

Matrices are views into a read-only mmap of the file (no copy); the mmap lives as long as any of
the arrays does.

Quantised tensors. rwkv.cpp's quantizer stores the 2-D matrices (not emb/head, not the vectors) in
one of ggml's block formats: each row in blocks of 32 weights, each block an fp16 scale d (the "_1"
kinds also an fp16 offset m) and 32 small integers q; w = d * (q - zero) or d * q + m. Layouts:
`BLOCK_FORMATS` below, csrc/model/ggml_blocks.h and docs/formats.md. They are returned as
`QuantizedTensor`s, dequantized exactly to float32 when used (only "+ m" rounds, once, as in ggml).
File version 100 used older, incompatible block layouts: its quantised tensors are refused.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ._files import map_or_read, open_regular

MAGIC = 0x67676D66
VERSIONS = (100, 101)
TYPE_NAMES = {
    0: "FP32",
    1: "FP16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_O",
    5: "Q4_2",
    6: "Q4_3",
    7: "Q5_0",
    8: "Q5_1",
    9: "Q8_0",
}
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2")}
QK = 32  # weights per quantised block
# type id -> (name, packed block dtype, zero point subtracted from q); fields in file order
BLOCK_FORMATS = {
    2: ("Q4_0", np.dtype([("d", "<f2"), ("qs", "u1", (16,))]), 8),
    3: ("Q4_1", np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (16,))]), 0),
    7: ("Q5_0", np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", (16,))]), 16),
    8: ("Q5_1", np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", (16,))]), 0),
    9: ("Q8_0", np.dtype([("d", "<f2"), ("qs", "i1", (32,))]), 0),
}
_BLOCK_IDS = {name: t for t, (name, _, _) in BLOCK_FORMATS.items()}
_FIFTH_BIT = np.arange(QK, dtype=np.uint32)
_CHUNK_BLOCKS = 1 << 15  # blocks dequantized per step: 1M weights, ~4 MB of float32 temporaries
GN_EPS_RWKVCPP = 1e-5  # rwkv.cpp's rwkv_att_v5: ggml_norm(x, 1e-5) per head


def _fail(path, msg):
    raise ValueError(f"rwkv.cpp file {os.fspath(path)!r}: {msg}")


def _block_format(blocks, kind, where):
    t = _BLOCK_IDS.get(kind, kind)
    if t not in BLOCK_FORMATS:
        raise ValueError(f"unknown block format {kind!r}; expected one of {', '.join(_BLOCK_IDS)}")
    if (
        not isinstance(blocks, np.ndarray)
        or blocks.dtype != BLOCK_FORMATS[t][1]
        or blocks.ndim != 1
    ):
        raise ValueError(
            f"{where}: expected a 1-D array of {BLOCK_FORMATS[t][0]} blocks "
            f"({BLOCK_FORMATS[t][1]}), got {getattr(blocks, 'dtype', type(blocks).__name__)}"
        )
    return t


def _non_finite(blocks, i, name, where):
    """The ValueError for block i, whose d or m is an fp16 inf or NaN."""
    field = "d" if not np.isfinite(blocks["d"][i]) else "m"
    return ValueError(
        f"{where}: {name} block {i} has a non-finite scale {field} "
        f"(fp16 bits 0x{int(blocks[field][i : i + 1].view('<u2')[0]):04x})"
    )


def dequantize_blocks(blocks, kind, where="quantised blocks") -> np.ndarray:
    """The float32 weights (len(blocks) * 32,) that `blocks` encode, exactly (see the module docstring).

    blocks: a NumPy array of the packed block dtype of `kind` (`BLOCK_FORMATS[type id][1]`), e.g. a
    view of a file. kind: "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0" or its type id. `where` starts the
    ValueError raised for a block whose d or m is not finite (an fp16 inf or NaN).
    Runs in C (``csrc/model/ggml_blocks.c``, GIL released); `dequantize_blocks_numpy` is its
    NumPy twin, bit for bit the same.
    """
    t = _block_format(blocks, kind, where)
    from .. import _model

    out = np.empty(len(blocks) * QK, np.float32)
    raw = np.ascontiguousarray(blocks).view(np.uint8)
    bad = _model.dequantize_ggml(raw, t, out)
    if bad >= 0:
        raise _non_finite(blocks, bad, BLOCK_FORMATS[t][0], where)
    return out


def dequantize_blocks_numpy(blocks, kind, where="quantised blocks") -> np.ndarray:
    """`dequantize_blocks` in NumPy (the slow twin the tests hold the C against), 32768 blocks at a
    time so that the temporaries stay a few MB for any size."""
    t = _block_format(blocks, kind, where)
    name, bdt, zero = BLOCK_FORMATS[t]
    fields = bdt.names
    out = np.empty((len(blocks), QK), np.float32)
    for b0 in range(0, len(blocks), _CHUNK_BLOCKS):
        b = blocks[b0 : b0 + _CHUNK_BLOCKS]
        d = b["d"].astype(np.float32)[:, None]
        m = b["m"].astype(np.float32)[:, None] if "m" in fields else None
        ok = np.isfinite(d[:, 0]) & (np.isfinite(m[:, 0]) if m is not None else True)
        if not ok.all():
            raise _non_finite(blocks, b0 + int(np.argmin(ok)), name, where)
        if name == "Q8_0":
            q = b["qs"].astype(np.float32)
        else:
            qs = b["qs"]
            qi = np.empty((len(b), QK), np.uint8)
            np.bitwise_and(qs, 0x0F, out=qi[:, : QK // 2])  # weight j: low nibble of byte j
            np.right_shift(qs, 4, out=qi[:, QK // 2 :])  # weight j + 16: its high nibble
            if "qh" in fields:  # bit j of qh: weight j's fifth bit
                qi |= (((b["qh"][:, None] >> _FIFTH_BIT) & 1) << 4).astype(np.uint8)
            q = qi.astype(np.float32)
            if zero:
                q -= np.float32(zero)
        o = out[b0 : b0 + len(b)]
        np.multiply(q, d, out=o)  # exact: |q| < 2^8, d has 11 significant bits
        if m is not None:
            o += m  # the one rounding, as ggml's x*d + m
    return out.reshape(-1)


class QuantizedTensor:
    """A tensor that an rwkv.cpp file stores in one of ggml's block formats.

    ``np.asarray(t)`` (or ``t.dequantize()``) gives its exact float32 values, shaped ``t.shape``
    (PyTorch order). They are computed afresh on each call and not kept: a model that converts
    each matrix to its own dtype (``rwkv5.load(..., dtype="int8")``) then holds one float32 matrix
    at a time, not the whole model in float32. ``t.blocks`` is the packed view of the file's blocks
    (fields ``d``, ``m``, ``qh``, ``qs`` as the kind has them); ``t.kind`` is "Q4_0", … "Q8_0".

        >>> sd, info = read_rwkvcpp("tiny-rwkv-5v2-730K-Q5_1.bin")
        >>> w = sd["blocks.0.att.key.weight"]        # QuantizedTensor Q5_1 (64, 64)
        >>> np.asarray(w).dtype
        dtype('float32')
    """

    dtype = np.dtype(np.float32)

    def __init__(self, blocks, kind, shape, where="quantised tensor"):
        self.blocks, self.kind, self.shape, self.where = blocks, kind, tuple(shape), where
        if math.prod(self.shape) != len(blocks) * QK:
            raise ValueError(
                f"{where}: shape {self.shape} holds {math.prod(self.shape)} weights, "
                f"{len(blocks)} blocks hold {len(blocks) * QK}"
            )

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))

    def dequantize(self) -> np.ndarray:
        return dequantize_blocks(self.blocks, self.kind, self.where).reshape(self.shape)

    def __array__(self, dtype=None, copy=None):
        a = self.dequantize()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self):
        return f"QuantizedTensor({self.kind}, shape={self.shape})"


def read_rwkvcpp(path, mmap=True):
    """Read an rwkv.cpp model file. Returns (state_dict, info).

    state_dict: RWKV-LM names -> NumPy arrays (float32/float16 views into the file; float64 for
    time_decay), and `QuantizedTensor`s for the matrices of a quantised file (float32 when used).
    info: dict with format, file_version, data_type, n_vocab, n_embd, n_layer, gn_eps (1e-5: what
    rwkv.cpp computes; pass it to Model.from_state_dict to reproduce rwkv.cpp), rwkvcpp_arch and
    quantized (the block formats present, e.g. ["Q5_1"]; [] for FP32/FP16 files).
    Raises ValueError for anything malformed (bad magic/version, truncation, unsupported type,
    rows that are not whole blocks), OSError if the file cannot be opened. A quantised block whose
    scale is not finite raises ValueError, naming the file and tensor, when it is dequantized.
    mmap=False reads the file into private memory instead of mapping it (the arrays are then views
    of that copy; the file is closed on return).
    """
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            _fail(path, f"too short for the 24-byte header ({size} bytes)")
        mm = map_or_read(f, size, path, mmap)
    buf = np.frombuffer(mm, dtype=np.uint8)
    hdr = buf[:24].view("<i4")
    magic, version, n_vocab, n_embd, n_layer, data_type = (int(x) for x in hdr)
    if (
        magic != MAGIC
        and int.from_bytes(int(magic & 0xFFFFFFFF).to_bytes(4, "little"), "big") == MAGIC
    ):
        _fail(
            path,
            "written on a big-endian machine (byte-swapped magic); only little-endian files are read",
        )
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
        dim_count, key_len, ttype = (int(x) for x in buf[off : off + 12].view("<i4"))
        off += 12
        if not 1 <= dim_count <= 4 or not 0 < key_len <= 1024:
            _fail(
                path,
                f"bad tensor header at byte {off - 12}: dim_count={dim_count} key_len={key_len}",
            )
        if off + 4 * dim_count + key_len > size:
            _fail(path, f"truncated tensor header at byte {off - 12}")
        shape = tuple(int(x) for x in buf[off : off + 4 * dim_count].view("<i4"))[::-1]
        off += 4 * dim_count
        try:
            key = bytes(buf[off : off + key_len]).decode("utf-8")
        except UnicodeDecodeError:
            _fail(path, f"tensor name at byte {off} is not UTF-8")
        off += key_len
        if ttype not in _DTYPES and ttype not in BLOCK_FORMATS:
            _fail(
                path,
                f"tensor {key!r} has data type {ttype} ({TYPE_NAMES.get(ttype, 'unknown')}); "
                "supported: FP32 (0), FP16 (1), Q4_0 (2), Q4_1 (3), Q5_0 (7), Q5_1 (8), Q8_0 (9)",
            )
        if any(s <= 0 for s in shape):
            _fail(path, f"tensor {key!r} has a non-positive dimension in shape {shape}")
        count = math.prod(shape)
        if ttype in _DTYPES:
            nbytes = count * _DTYPES[ttype].itemsize
        else:
            qname, bdt, _ = BLOCK_FORMATS[ttype]
            if version != 101:
                _fail(
                    path,
                    f"tensor {key!r} is {qname} in file version {version}: ggml's block layouts "
                    "before 2023-05 (version 100) are not read; quantize the FP32/FP16 file again "
                    "with a current rwkv.cpp (version 101)",
                )
            if shape[-1] % QK:
                _fail(
                    path,
                    f"tensor {key!r} is {qname} with shape {shape}: its rows of {shape[-1]} weights "
                    f"are not a whole number of {QK}-weight blocks",
                )
            nbytes = count // QK * bdt.itemsize
        if off + nbytes > size:
            _fail(
                path,
                f"truncated: tensor {key!r} needs {nbytes} bytes at byte {off}, file has {size - off}",
            )
        if key in raw:
            _fail(path, f"tensor {key!r} appears twice")
        if ttype in _DTYPES:
            raw[key] = np.frombuffer(mm, dtype=_DTYPES[ttype], count=count, offset=off).reshape(
                shape
            )
        else:
            raw[key] = QuantizedTensor(
                np.frombuffer(mm, dtype=bdt, count=count // QK, offset=off),
                qname,
                shape,
                where=f"rwkv.cpp file {os.fspath(path)!r}: tensor {key!r}",
            )
        off += nbytes

    gated = any(k.endswith("att.gate.weight") for k in raw)
    sd = {}
    for key, a in raw.items():
        if isinstance(a, QuantizedTensor) and (a.ndim != 2 or ".time_" in key):
            a = (
                a.dequantize()
            )  # (rwkv.cpp quantizes matrices only; anything else is used as float32)
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
        _fail(
            path,
            f"'emb.weight' has shape {tuple(sd['emb.weight'].shape)}, header says "
            f"({n_vocab}, {n_embd})",
        )
    info = dict(
        format="rwkv.cpp",
        file_version=version,
        data_type=TYPE_NAMES.get(data_type, str(data_type)),
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        gn_eps=GN_EPS_RWKVCPP,
        rwkvcpp_arch="5v2" if gated else "5v1",
        quantized=sorted({a.kind for a in sd.values() if isinstance(a, QuantizedTensor)}),
    )
    return sd, info


def write_rwkvcpp(path, state_dict, data_type="FP32") -> int:
    """Write an RWKV-5.2 state dict (RWKV-LM names, as `read_rwkvcpp` returns or a checkpoint holds)
    as an rwkv.cpp `.bin` file (file version 101) of data_type "FP32" or "FP16"; returns its size.

    The inverse of `read_rwkvcpp` for float files: the 2-D matrices (emb, head and the layers') are
    stored as float32 or float16, everything else as float32; `time_decay` d is stored as
    w = exp(-exp(d)) (computed in float64, rounded once to float32) and it and `time_faaaa` are
    shaped (H, N, 1); `time_mix_*` vectors are flattened. Tensors are written in the order of the
    mapping. Reading the result back gives the same tensors (the FP32/FP16 fixtures of rwkv.cpp are
    reproduced byte for byte: tests/test_rwkvcpp_writer.py). The file is written under a temporary
    name and renamed into place when complete.
    """
    if data_type not in ("FP32", "FP16"):
        raise ValueError(
            f"data_type: expected 'FP32' or 'FP16', got {data_type!r} (rwkv.cpp's own quantizer "
            "makes the Q* kinds from these)"
        )
    if "emb.weight" not in state_dict:
        raise ValueError("state_dict has no 'emb.weight'")
    tid = 0 if data_type == "FP32" else 1
    n_vocab, n_embd = (int(x) for x in np.shape(state_dict["emb.weight"]))
    layers = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")}
    n_layer = max(layers) + 1 if layers else 0
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(np.array([MAGIC, 101, n_vocab, n_embd, n_layer, tid], "<i4").tobytes())
            for key, a in state_dict.items():
                if isinstance(a, QuantizedTensor):
                    a = a.dequantize()
                a = np.asarray(a)
                if a.dtype == np.uint16:
                    raise ValueError(
                        f"tensor {key!r}: raw bfloat16 bits (uint16); convert to float32 first"
                    )
                if key.endswith("att.time_decay"):
                    with np.errstate(over="ignore"):
                        a = np.exp(-np.exp(a.astype(np.float64))).reshape(a.shape[0], -1, 1)
                elif key.endswith("att.time_faaaa"):
                    a = a.reshape(a.shape[0], -1, 1)
                elif ".time_mix_" in key:
                    a = a.reshape(-1)
                ttype = tid if a.ndim == 2 else 0
                data = np.ascontiguousarray(a, dtype=_DTYPES[ttype])
                name = key.encode("utf-8")
                f.write(np.array([a.ndim, len(name), ttype, *a.shape[::-1]], "<i4").tobytes())
                f.write(name)
                f.write(data.tobytes())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return size
