"""`rwkv5.Model` and `rwkv5.State`: the C forward pass behind a small NumPy API.

    >>> import rwkv5
    >>> from rwkv5.testing import random_state_dict
    >>> model = rwkv5.Model.from_state_dict(random_state_dict("5.2", n_layer=2, n_embd=128, head_size=64))
    >>> logits, state = model.forward([1, 2, 3])          # logits (V,) float32, a new State
    >>> logits2, state2 = model.forward([4], state)      # continue; `state` is not modified

Thread contract: a Model is immutable after construction and may be shared between Python threads
(forward releases the GIL); a State belongs to one caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _model
from ._checkpoint import (
    Architecture,
    as_float,
    decay_and_bonus,
    detect_architecture,
    float32_to_bf16_bits,
    model_params,
    native_order,
)
from .formats.quantized import (  # noqa: F401  (dequantize_int4: re-exported)
    QuantizedMatrix,
    dequantize_int4,
    unblock,
)

GN_EPS_DEFAULT = (
    64e-5  # = GroupNorm(y / 8, eps=1e-5), RWKV-LM training (docs/model.md §2.1); rwkv.cpp uses 1e-5
)
AUTO_PARALLEL_MIN_T = 2  # mode="auto": parallel from this many tokens on
CHUNK = _model.CHUNK  # positions per chunk in parallel mode
MAX_POSITIONS = 2**30 - 1  # B * T of one forward call (the C code's limit)
# The storage types of the large matrices: the C table (_model.DTYPES: name, element bytes, row
# scales) and the NumPy dtype each is held in here (bf16: its raw bits as uint16).
_DTYPE_NAMES = {
    "fp32": np.float32,
    "fp16": np.float16,
    "bf16": np.uint16,
    "int8": np.int8,
    "int4": np.uint8,
}
_NAME_OF = {
    np.dtype(np.float32): "fp32",
    np.dtype(np.float16): "fp16",
    np.dtype(np.uint16): "bf16",
    np.dtype(np.int8): "int8",  # (a quantised matrix: the dtype of its elements, (q, scale)[0])
    np.dtype(np.uint8): "int4",
}  # (int4: a 1-tuple (blocks,), the blocks holding their scales)
assert [name for name, _, _ in _model.DTYPES] == list(_DTYPE_NAMES), (
    "rwkv5._model.DTYPES and _DTYPE_NAMES differ"
)
STORAGE_DTYPES = tuple(_DTYPE_NAMES)  # what Model.from_state_dict(dtype=...) takes besides None


@dataclass(frozen=True)
class ModelConfig:
    version: str  # "5.0", "5.1", "5.2"
    n_layer: int
    n_embd: int
    n_head: int
    head_size: int
    n_ffn: int
    vocab_size: int
    gn_eps: float  # GroupNorm (ln_x) epsilon
    dtype: str  # storage of the large matrices: "fp32", "fp16", "bf16", "int8", "int4" (or "mixed")


class State:
    """The recurrent state of one sequence, or of a batch of B sequences (leading B axis).

    att_x (L, C): LN1 output of the previous token; att_kv (L, H, N, N): wkv state [h][key][value];
    ffn_x (L, C): LN2 output of the previous token. All float32.
    """

    __slots__ = ("att_x", "att_kv", "ffn_x")

    def __init__(self, att_x, att_kv, ffn_x):
        self.att_x, self.att_kv, self.ffn_x = att_x, att_kv, ffn_x

    @property
    def batch_size(self) -> Optional[int]:
        """B for a batched state, None for a single sequence."""
        return self.att_x.shape[0] if np.ndim(self.att_x) == 3 else None

    def copy(self) -> "State":
        return State(
            np.array(self.att_x, copy=True),
            np.array(self.att_kv, copy=True),
            np.array(self.ffn_x, copy=True),
        )

    def __getitem__(self, b) -> "State":
        """Sequence b of a batched state (a copy)."""
        if self.batch_size is None:
            raise TypeError("this State is not batched")
        return State(self.att_x[b].copy(), self.att_kv[b].copy(), self.ffn_x[b].copy())

    @staticmethod
    def stack(states) -> "State":
        """A batched State from unbatched ones."""
        states = list(states)
        return State(
            np.stack([s.att_x for s in states]),
            np.stack([s.att_kv for s in states]),
            np.stack([s.ffn_x for s in states]),
        )

    def save(self, path):
        """Write the state to `path` (format of rwkv5.formats.state_io)."""
        from .formats.state_io import save_state

        return save_state(self, path)

    @classmethod
    def load(cls, path) -> "State":
        """A state written by :meth:`save` (checked as rwkv5.formats.state_io.load_state says)."""
        from .formats.state_io import load_state

        return cls(*load_state(path))

    def __repr__(self):
        return (
            f"State(att_x={np.shape(self.att_x)}, att_kv={np.shape(self.att_kv)}, "
            f"ffn_x={np.shape(self.ffn_x)})"
        )


CHUNK_BYTES = (
    16 << 20
)  # conversions of a file's matrix go this many source bytes at a time (see _chunks)


def _chunks(a):
    """Row ranges [r0, r1) of matrix `a`, each about CHUNK_BYTES of it and a multiple of 4 rows (a
    group of the blocked layout). After each range is converted, the caller releases its pages if
    `a` is a view of a read-only file mapping (`_drop_file_pages`): then the source of a copy is
    resident one chunk at a time, not the whole matrix on top of its copy, and the peak RSS of a
    load stays near the size of the weights."""
    rows = a.shape[0]
    step = max(4, CHUNK_BYTES // max(1, a.itemsize * (a.shape[1] if a.ndim > 1 else 1)) // 4 * 4)
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)] or [(0, 0)]


def quantize_int8(a, blocked=False, block_rows=None):
    """Symmetric per-row int8 quantisation: (q int8 (rows, cols), scale float32 (rows,)) with
    W[o] ~= q[o] * scale[o], scale[o] = max|W[o]| / 127 and q = round(W / scale) in [-127, 127].

    a: float32/float16/float64 or uint16 (bfloat16 bits), 2-D. Runs in C on all threads of the
    pool (`rwkv5.set_num_threads`) with the GIL released; Ctrl-C interrupts it. The result is the
    same to the bit as `quantize_int8_numpy`, its readable NumPy twin. blocked=True returns q in the
    4-row blocked layout (as `block_matrix(q)`, written directly, without a row-major copy).
    block_rows: ignored (the NumPy version's block size; kept for callers that pass it). A view of a
    read-only file mapping has its pages released as it is read (`_chunks`).
    Symmetric rather than asymmetric (per-row zero point): measured on the trained 730K fixture over
    4 KB of English, both change perplexity by under 0.05% (sym -0.037%, asym -0.022%); the largest
    logit change is 0.69 (sym) vs 0.45 (asym) of a range of 12.4, and 0.17 vs 0.14 of 5.2 on a random
    L6 C512 model. Symmetric keeps the kernels a plain widened dot product (no per-call sum(x)
    zero-point term).
    """
    a = native_order(np.asarray(a))
    if a.ndim != 2:
        raise ValueError(f"quantize_int8: expected a 2-D matrix, got shape {a.shape}")
    if a.dtype not in (np.float16, np.float32, np.float64, np.uint16):
        raise TypeError(
            f"quantize_int8: matrix dtype must be float16/float32/float64/uint16(bf16), got {a.dtype}"
        )
    a = np.ascontiguousarray(a)
    rows, cols = a.shape
    q = (
        _zeros_aligned(_blocked_shape(rows, cols, 1), np.int8)
        if blocked
        else np.empty((rows, cols), np.int8)
    )
    scale = np.empty(rows, np.float32)
    for r0, r1 in _chunks(a):
        part = a[r0:r1]
        qpart = q[r0 // 4 : -(-r1 // 4)] if blocked else q[r0:r1]
        bad = _model.quantize_int8(part, qpart, scale[r0:r1])
        if bad >= 0:
            raise ValueError(f"quantize_int8: row {r0 + bad} of the matrix has non-finite values")
        _drop_file_pages(part)
    return q, scale


def quantize_int8_numpy(a, block_rows=4096):
    """The NumPy twin of `quantize_int8` (row-major q; the same bits), one thread: the definition
    the C code is tested against. Rows are converted `block_rows` at a time so the float32
    temporaries stay small."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"quantize_int8: expected a 2-D matrix, got shape {a.shape}")
    rows, cols = a.shape
    q = np.empty((rows, cols), np.int8)
    scale = np.empty(rows, np.float32)
    for r0 in range(0, rows, block_rows):
        w = as_float(a[r0 : r0 + block_rows], np.float32)
        if not np.all(np.isfinite(w)):
            raise ValueError("quantize_int8: the matrix has non-finite values")
        amax = np.abs(w).max(axis=1) if cols else np.zeros(len(w), np.float32)
        s = (amax / np.float32(127.0)).astype(np.float32)
        safe = np.where(s > 0, s, np.float32(1))
        q[r0 : r0 + block_rows] = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)
        scale[r0 : r0 + block_rows] = s
    return q, scale


def quantize_int4(a):
    """Symmetric 4-bit quantisation in groups of 32 weights: uint8 blocks (rows, ceil(cols/64) * 36),
    the storage of dtype="int4" (docs/formats.md, csrc/model/dtypes.h).

    Each group of 32 consecutive weights of a row gets one fp16 scale s = -m / 8, m its weight of
    largest magnitude (sign kept, so m itself is exactly q = -8), and q = round(W / s) in [-8, 7]:
    W ~= q * s. A block of 64 weights is 36 bytes: the two scales, then each group's 16 bytes, byte b
    holding q of weight b (low nibble, two's complement) and of weight b + 16 (high nibble);
    weights past the row's end are 0 (0.5625 bytes per weight). ggml's Q4_0 is the same up to the
    nibble's offset and the pairing of the scales. `dequantize_int4(blocks, cols)` is the inverse.

    a: float32/float16/float64 or uint16 (bfloat16 bits), 2-D. Runs in C on all threads of the pool
    with the GIL released (Ctrl-C interrupts it), CHUNK_BYTES of `a` at a time, releasing the pages
    of a read-only file mapping as it goes (`_chunks`). Raises ValueError naming the first row with
    a non-finite value or a weight too large for an fp16 group scale (|w| >= 524160).
    Group size 32 and symmetric were chosen by measurement (docs/formats.md has the table).
    """
    a = native_order(np.asarray(a))
    if a.ndim != 2:
        raise ValueError(f"quantize_int4: expected a 2-D matrix, got shape {a.shape}")
    if a.dtype not in (np.float16, np.float32, np.float64, np.uint16):
        raise TypeError(
            f"quantize_int4: matrix dtype must be float16/float32/float64/uint16(bf16), got {a.dtype}"
        )
    a = np.ascontiguousarray(a)
    rows, cols = a.shape
    out = np.empty((rows, -(-cols // 64) * 36), np.uint8)  # (every byte is written)
    for r0, r1 in _chunks(a):
        part = a[r0:r1]
        bad, why = _model.quantize_int4(part, out[r0:r1])
        if bad >= 0:
            what = (
                "has non-finite values"
                if why == 1
                else "has a weight too large for an fp16 group scale (|w| >= 524160)"
            )
            raise ValueError(f"quantize_int4: row {r0 + bad} of the matrix {what}")
        _drop_file_pages(part)
    return out


def _blocked_shape(rows, cols, itemsize):
    e = 64 // itemsize
    return (-(-rows // 4), -(-cols // e), 4, e)


def _zeros_aligned(shape, dtype):
    """A zeroed array starting on a 64-byte boundary (the kernels read the blocked layout a line at
    a time). Large zeroed allocations are fresh pages from the OS: the zeros cost nothing until written."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off : off + nbytes].view(dtype).reshape(shape)


LAYOUTS = ("auto", "rows", "blocked")


def block_matrix(a, block_rows=None):
    """The 4-row blocked layout of a 2-D matrix: a new 64-byte aligned array of shape
    (ceil(rows/4), ceil(cols/E), 4, E), E = 64 // itemsize, zero padded, holding a[o, i] at
    [o // 4, i // E, o % 4, i % E]. The 4 rows of a group are one sequential stream of 64-byte
    lines, which the one-token (matrix x vector) kernels read faster than 4 separate rows (see
    docs/performance.md). Copied in C on all threads (GIL released), CHUNK_BYTES of `a` at a time;
    when `a` is a view of a read-only file mapping, its pages are released as they are copied
    (`_chunks`). block_rows is ignored."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"block_matrix: expected a 2-D matrix, got shape {a.shape}")
    out = _zeros_aligned(_blocked_shape(*a.shape, a.itemsize), a.dtype)
    a = np.ascontiguousarray(a)
    for r0, r1 in _chunks(a):
        _model.block_copy(a[r0:r1], out[r0 // 4 : -(-r1 // 4)])
        _drop_file_pages(a[r0:r1])
    return out


def _mmap_base(a):
    """The `mmap.mmap` that array `a` is a view of (a checkpoint reader's mapping of its file, or
    its private copy with `mmap=False`), else None."""
    import mmap

    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def _drop_file_pages(a):
    """`a` has been copied: if it is a view into a read-only file mmap (as the checkpoint readers
    return), tell the kernel this process no longer needs the pages wholly inside it
    (madvise MADV_DONTNEED), so a converted model does not hold the file's pages in its RSS on top
    of its own copy. Nothing can be lost: the mapping is read-only, and pages touched again come
    back from the page cache. Anything else is left alone."""
    import mmap

    base = _mmap_base(a) if isinstance(a, np.ndarray) else None
    if base is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        if not memoryview(base).readonly:
            return
        off = a.ctypes.data - np.frombuffer(base, np.uint8).ctypes.data
        page = mmap.PAGESIZE
        lo, hi = -(-off // page) * page, (off + a.nbytes) // page * page
        if 0 <= lo < hi <= len(base):
            base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (ValueError, OSError, BufferError):  # closed, or the platform refuses: keep the pages
        pass


def _as_matrix(a, dtype, layout="rows", shape=None):
    """A large matrix in the storage the C kernels read (see `Model.from_state_dict` for layout),
    copying only when needed. A matrix whose shape is not `shape` stays row-major, for the C
    checks to name it."""
    blocked = lambda m: layout != "rows" and m.shape == shape  # noqa: E731
    if isinstance(a, QuantizedMatrix) and dtype in (
        None,
        a.form,
    ):  # a saved quantised form: as stored
        q = a.q
        if layout == "rows" and q.ndim == 4:
            q = unblock(q, a.shape)
        return (q,) + a.parts
    if dtype == "int8":
        src = np.asarray(a)  # (an rwkv.cpp quantised matrix: its float32 values)
        out, copied = quantize_int8(src, blocked=layout != "rows" and src.shape == shape), True
    elif dtype == "int4":  # blocks of 64 weights with their scales: row-major only
        src = np.asarray(a)  # (an rwkv.cpp quantised matrix: its float32 values)
        out, copied = (quantize_int4(src),), True
    elif isinstance(a, np.ndarray) and a.ndim == 2 and blocked(a):
        # "auto" and "blocked": every type, fp32 included, converted and blocked a chunk at a time
        src = native_order(a)
        out = None
        for r0, r1 in _chunks(src):
            part = _as_row_major(src[r0:r1], dtype)
            if out is None:
                out = _zeros_aligned(_blocked_shape(*src.shape, part.itemsize), part.dtype)
            _model.block_copy(part, out[r0 // 4 : -(-r1 // 4)])
            _drop_file_pages(src[r0:r1])
        copied = True
    else:
        out = _as_row_major(a, dtype)
        copied = not (isinstance(a, np.ndarray) and np.may_share_memory(out, a))
        if blocked(out):  # (a matrix that is not an array: an rwkv.cpp quantised one)
            out, copied = block_matrix(out), True
    if copied:  # (a quantised rwkv.cpp matrix releases the file's blocks it was dequantized from)
        _drop_file_pages(getattr(a, "blocks", a))
    return out


def _c_matrix(m):
    """A matrix as the C binding takes it, tagged with its storage type: (name, array) for an
    fp32/fp16/bf16 array (bf16: uint16 bits), ("int8", q, scale) for a quantised (q, scale)."""
    return (_storage_name(m),) + (tuple(m) if isinstance(m, tuple) else (m,))


def _storage_name(m):
    """The storage type of a matrix as the model holds it (an array, or a quantised tuple (q, ...))."""
    return _NAME_OF[(m[0] if isinstance(m, tuple) else m).dtype]


def _as_row_major(a, dtype):
    a = native_order(a)
    if a.dtype not in (np.float16, np.float32, np.float64, np.uint16):
        raise TypeError(f"matrix dtype must be float16/float32/float64/uint16(bf16), got {a.dtype}")
    if dtype is None:
        target = np.float32 if a.dtype == np.float64 else a.dtype
    else:
        target = _DTYPE_NAMES[dtype]
    if a.dtype != target:
        if target == np.uint16:
            a = float32_to_bf16_bits(as_float(a, np.float32))
        else:
            a = as_float(a, np.float32).astype(target)
    if not a.flags.c_contiguous:
        a = np.array(a, order="C", copy=True)
    # unaligned is fine: the kernels read matrices with unaligned loads, so views into a file
    # (rwkv.cpp tensors start at arbitrary byte offsets) are used in place
    return a


def _detach(x):
    """`x` (an array, a tuple of them, or None) with every view of a checkpoint's mmap replaced by
    a copy (whose file pages are then released): see `Model.from_state_dict`."""
    if isinstance(x, tuple):
        return tuple(_detach(a) for a in x)
    if isinstance(x, np.ndarray) and _mmap_base(x) is not None:
        out = np.empty(x.shape, x.dtype)
        if x.ndim == 0:
            out[()] = x
        for r0, r1 in _chunks(x) if x.ndim else ():  # the source resident one chunk at a time
            out[r0:r1] = x[r0:r1]
            _drop_file_pages(x[r0:r1])
        return out
    return x


def _as_vector(a, n):
    v = np.require(as_float(a, np.float32).reshape(-1), np.float32, ["C", "A"])
    assert v.shape == (n,)
    return v


class Model:
    """An RWKV-5 model whose forward pass runs in C. Build it with `Model.from_state_dict`
    (or `rwkv5.load`)."""

    def __init__(self, *_, **__):
        raise TypeError("use Model.from_state_dict(sd) or rwkv5.load(path)")

    @classmethod
    def from_state_dict(cls, sd, gn_eps=None, dtype=None, layout="auto") -> "Model":
        """Build a model from an RWKV-LM-named state dict (docs/model.md §3, raw values).

        sd: name -> NumPy array of float32/float16/float64, or uint16 meaning raw bfloat16 bits.
        gn_eps: GroupNorm eps (default 64e-5 = RWKV-LM; use 1e-5 to reproduce rwkv.cpp).
        dtype: None keeps each large matrix as given (float64 becomes fp32; a `QuantizedMatrix` of a
        saved quantised file stays quantised, as stored); "fp32", "fp16" or
        "bf16" converts them; "int8" quantises them per output row (`quantize_int8`, in C on all
        threads; a matrix already int8 is kept as it is; the embedding
        is kept as given, since only one of its rows is read per token); "int4" quantises them to
        4 bits in groups of 32 with an fp16 scale each (`quantize_int4`, in C on all threads;
        row-major whatever `layout` says; docs/formats.md). Small vectors are always fp32. Arrays already in the right dtype and
        layout are used in place (not copied), e.g. views of a memory-mapped file; the model keeps
        references to them. A view of a read-only file mmap that is copied has its pages released
        from the process afterwards (madvise), so the copy does not double the resident size. When
        every large matrix is copied, the embedding and vectors that are views of a checkpoint's
        mmap are copied too, so the model keeps no mapping of the file alive.
        layout: how the large matrices other than the embedding are stored. "auto" (default) and
        "blocked": a 4-row blocked copy (`block_matrix`, made on all threads), which one-token
        decoding streams closer to the memory bandwidth (bf16: ~15-20% more tokens/s than "rows" on
        one thread, fp32 ~5-30% depending on the machine; same results to the bit). "rows": row-major
        as given, in place (zero copy, nothing to do at load) when the dtype matches. Cost of the
        copy: the time to read the weights once at load; memory stays one copy, since the file's
        pages of each copied matrix are released (peak RSS about the weights' size plus one matrix).
        The model keeps no mapping of the file then, so "rows" is the choice for a quick start on
        a file already in the page cache, or to share its pages between processes.
        Raises ValueError naming a missing or mis-shaped tensor.
        """
        if dtype is not None and dtype not in _DTYPE_NAMES:
            raise ValueError(
                f"dtype must be None or one of {', '.join(map(repr, STORAGE_DTYPES))}, got {dtype!r}"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be 'auto', 'rows' or 'blocked', got {layout!r}")
        gn_eps = GN_EPS_DEFAULT if gn_eps is None else float(gn_eps)
        if not (gn_eps > 0 and np.isfinite(gn_eps)):
            raise ValueError(f"gn_eps must be a positive finite number, got {gn_eps}")
        arch = detect_architecture(sd)
        params, matrices = {}, []  # full name -> what the C code reads (the table PARAMS)
        for name, layer, p in model_params(arch):
            if name == "emb.weight":  # one row per token is gathered: row-major, never quantised
                params[name] = _as_row_major(sd[name], None if dtype in ("int8", "int4") else dtype)
                if isinstance(sd[name], np.ndarray) and not np.may_share_memory(
                    params[name], sd[name]
                ):
                    _drop_file_pages(sd[name])  # converted: the file's pages are not needed
            elif p.kind == "matrix":
                params[name] = _as_matrix(sd[name], dtype, layout, p.shape(arch))
            elif p.kind == "vector":
                params[name] = _as_vector(sd[name], *p.shape(arch))
            else:  # decay (ln w = -exp(time_decay)) and bonus u, per channel (docs/model.md §4.3)
                logw, _, u = decay_and_bonus(sd, arch, layer)
                params[name] = np.require(
                    (logw if p.kind == "decay" else u).reshape(-1),
                    np.float64 if p.kind == "decay" else np.float32,
                    ["C", "A"],
                )
            if p.kind == "matrix":
                matrices.append(name)
        # Once no large matrix is a view of the checkpoint's mmap (all converted, blocked or
        # quantised), a view kept for the embedding or a vector would be all that holds the file
        # mapped (a SIGBUS if it is truncated on disk later; the whole file's copy in memory
        # with mmap=False): copy those too, so the mapping goes with the reader's objects.
        if not any(
            _mmap_base(params[n][0] if isinstance(params[n], tuple) else params[n]) is not None
            for n in matrices
            if n != "emb.weight"
        ):
            params = {n: _detach(a) for n, a in params.items()}
        # (a quantised model keeps its embedding as given: it is named by its matrices' type)
        quantised = any(isinstance(params[n], tuple) for n in matrices)
        kinds = {
            _storage_name(params[n]) for n in matrices if not (quantised and n == "emb.weight")
        }
        self = object.__new__(cls)
        self.config = ModelConfig(
            arch.version,
            arch.n_layer,
            arch.n_embd,
            arch.n_head,
            arch.head_size,
            arch.n_ffn,
            arch.vocab_size,
            gn_eps,
            kinds.pop() if len(kinds) == 1 else "mixed",
        )
        self._arch: Architecture = arch
        cfg = (
            arch.n_layer,
            arch.n_embd,
            arch.n_head,
            arch.head_size,
            arch.n_ffn,
            arch.vocab_size,
            int(arch.version != "5.0"),
            gn_eps,
        )
        c_params = {n: _c_matrix(a) if n in matrices else a for n, a in params.items()}
        self._c = _model.CModel(cfg, c_params)  # holds references to every array it reads
        self._weights = params  # full name -> array, or (q, scale) for int8
        self._initial_state = None  # a State from state-tuning (set by rwkv5.load: _set_time_state)
        return self

    def _set_time_state(self, att_kv, where="checkpoint"):
        """Start every new_state() from the initial state of a state-tuning checkpoint: its (L, H, N, N)
        ``att_kv`` (rwkv5.formats.checkpoint.time_state_to_att_kv), zero att_x and ffn_x."""
        from .formats.state_io import state_from_time_state

        self._initial_state = State(*state_from_time_state(att_kv, self.config, where))

    # ------------------------------------------------------------------------------------------

    def new_state(self, batch=None, from_file=None) -> State:
        """A fresh state for one sequence, or for `batch` sequences (leading B axis).

        Zeros, unless the checkpoint carried a state-tuning initial state or `from_file` names a
        state file (both handled by rwkv5.formats.state_io).
        """
        if batch is not None:
            batch = self._check_batch(batch)
        if from_file is not None or self._initial_state is not None:
            if from_file is not None:
                from .formats.state_io import initial_state_from_file

                base = initial_state_from_file(from_file, self.config)
            else:
                base = self._initial_state
            arrays = [np.array(a, np.float32) for a in (base.att_x, base.att_kv, base.ffn_x)]
            if batch is not None:
                arrays = [np.repeat(a[None], batch, axis=0) for a in arrays]
            return State(*arrays)
        c = self.config
        lead = () if batch is None else (batch,)
        return State(
            np.zeros(lead + (c.n_layer, c.n_embd), np.float32),
            np.zeros(lead + (c.n_layer, c.n_head, c.head_size, c.head_size), np.float32),
            np.zeros(lead + (c.n_layer, c.n_embd), np.float32),
        )

    def save(self, path) -> int:
        """Write the model to `path` as a safetensors checkpoint that `rwkv5.load` reads back to
        the same logits: RWKV-LM names, matrices in the storage type held (int8 and int4 ones in the
        quantised form of `rwkv5.formats.quantized`, which loads zero copy without quantising
        again), the GroupNorm eps and a state-tuning initial state included (see
        `rwkv5.saving`). Written atomically; returns the file size in bytes.

        >>> model.save("model.safetensors"); rwkv5.load("model.safetensors")  # doctest: +SKIP
        """
        from .saving import save_model

        return save_model(self, path)

    @staticmethod
    def _check_batch(batch):
        if (
            isinstance(batch, (bool, np.bool_))
            or not isinstance(batch, (int, np.integer))
            or batch < 1
        ):
            raise ValueError(f"batch must be a positive int or None, got {batch!r}")
        return int(batch)

    def _tokens(self, tokens):
        """tokens -> int32 (B, T) array and whether the input was one sequence. The C code copies
        the ids and checks them again on its copy (another thread may change this array meanwhile)."""
        if isinstance(tokens, np.ndarray):
            a = tokens
        else:
            try:
                a = np.asarray(tokens)
            except ValueError as e:
                raise ValueError(
                    f"tokens: expected a sequence of token ids or a list of sequences ({e})"
                ) from None
            if (
                a.dtype == object or a.dtype.kind == "f"
            ):  # Python ints beyond int64/uint64, or mixed
                self._check_int_objects(
                    a if a.dtype == object else np.asarray(tokens, dtype=object)
                )
        if a.dtype == object:
            raise TypeError("tokens: expected integers, got objects of mixed types")
        if a.dtype.kind == "b":
            raise TypeError("tokens: expected integer token ids, got bool")
        if a.dtype.kind not in "iu":
            if a.size == 0:
                raise ValueError("tokens: empty token list")
            raise TypeError(f"tokens: expected integer token ids, got dtype {a.dtype}")
        if a.ndim not in (1, 2):
            raise ValueError(f"tokens: expected shape (T,) or (B, T), got {a.shape}")
        if a.size == 0:
            raise ValueError(f"tokens: empty token list (shape {a.shape})")
        if a.size > MAX_POSITIONS:
            raise ValueError(
                f"tokens: shape {a.shape} has {a.size} positions, more than the {MAX_POSITIONS} "
                "(2**30 - 1) one call can take (split the batch or the sequence)"
            )
        V = self.config.vocab_size
        lo, hi = a.min(), a.max()
        if lo < 0 or hi >= V:
            self._raise_outside(a)
        single = a.ndim == 1
        return np.ascontiguousarray(a.reshape(1, -1) if single else a, dtype=np.int32), single

    def _raise_outside(self, a):
        V = self.config.vocab_size
        bad = np.argwhere((a < 0) | (a >= V))
        if len(bad) == 0:  # changed by another thread since min/max: the C code checks its own copy
            return
        bad = tuple(int(i) for i in bad[0])
        where = ", ".join(map(str, bad))
        raise ValueError(
            f"tokens[{where}] = {int(a[bad])} is outside the vocabulary [0, {self.config.vocab_size})"
        )

    def _check_int_objects(self, a):
        """A list of Python ints NumPy could not hold in one integer dtype (beyond 2**64, or
        negative ones beside ones beyond 2**63): name the first id outside the vocabulary."""
        if a.dtype != object or a.ndim not in (1, 2):
            return
        V = self.config.vocab_size
        for where, x in np.ndenumerate(a):
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
                return  # not all integers: the dtype checks below say so
            if not 0 <= x < V:
                raise ValueError(
                    f"tokens[{', '.join(map(str, where))}] = {int(x)} is outside the vocabulary [0, {V})"
                )

    def _state_arrays(self, state, B, single):
        """(att_x, att_kv, ffn_x) float32 (B, ...) arrays for the C code to write the new state into,
        and None or the caller's state arrays to read it from (the C code copies each layer's part
        as it first uses it; the caller's state is never modified)."""
        c = self.config
        shapes = {
            "att_x": (c.n_layer, c.n_embd),
            "att_kv": (c.n_layer, c.n_head, c.head_size, c.head_size),
            "ffn_x": (c.n_layer, c.n_embd),
        }
        if state is None:
            s = self.new_state(B)
            return (
                s.att_x,
                s.att_kv,
                s.ffn_x,
            ), None  # fresh arrays: the C code may write into them
        if not isinstance(state, State):
            raise TypeError(f"state: expected rwkv5.State or None, got {type(state).__name__}")
        src = []
        for name, shp in shapes.items():
            a = getattr(state, name)
            if not isinstance(a, np.ndarray):
                raise TypeError(f"state.{name}: expected a numpy array, got {type(a).__name__}")
            if a.dtype.kind != "f" or a.dtype.itemsize != 4:
                raise TypeError(f"state.{name}: expected dtype float32, got {a.dtype}")
            if (
                a.shape != shp and a.shape != (B,) + shp
            ):  # (shp): one sequence's state, for every sequence
                want = f"{shp}" if single else f"{(B,) + shp} or {shp}"
                raise ValueError(
                    f"state.{name}: expected shape {want} for this model and batch, got {a.shape}"
                )
            # read in place when native-order, C-contiguous and aligned; else an aligned copy (a
            # big-endian state is converted, a view at an odd byte offset is copied)
            src.append(np.require(a, np.float32, ["C", "A"]))
        if (
            len({x.ndim - len(shp) for x, shp in zip(src, shapes.values())}) > 1
        ):  # all batched or none
            src = [
                np.require(np.broadcast_to(x, (B,) + shp), np.float32, ["C", "A"])
                for x, shp in zip(src, shapes.values())
            ]
        out = tuple(np.empty((B,) + shp, np.float32) for shp in shapes.values())
        return out, tuple(src)

    def forward(
        self, tokens, state: Optional[State] = None, mode: str = "auto", full_output: bool = False
    ):
        """Run tokens through the model; returns (logits, new_state).

        tokens: a list or 1-D int array (T,) -> logits (V,), or (T, V) with full_output;
                a 2-D (B, T) int array -> (B, V) or (B, T, V);
                a list of B sequences of different lengths -> (B, V), or a list of (T_i, V) arrays
                with full_output; each sequence's state stops at its own length (the same as
                running each alone).
        state: None (zeros) or a State; a single-sequence state is used for every sequence of a
               batch. It is never modified; a new State comes back (batched iff the input was).
               Its arrays are float32 of either byte order; ones that are big-endian, not
               C-contiguous or not aligned are copied first.
        mode: "recurrent" (one position per step), "parallel" (chunks of 64 positions, matrix
              form), or "auto" (parallel from 2 tokens on). Both agree to float32 rounding.
        Logits are float32. The GIL is released while computing.
        """
        return self._run(tokens, state, mode, full_output, False)

    def hidden_states(
        self, tokens, state: Optional[State] = None, mode: str = "auto", full_output: bool = False
    ):
        """Like :meth:`forward`, but returns the final hidden states LN(x; ln_out) — what the head
        reads — instead of logits: (C,) for the last position, (T, C) with full_output, with a
        leading B axis for a batch. Returns (hidden, new_state)."""
        return self._run(tokens, state, mode, full_output, True)

    def _run(self, tokens, state, mode, full_output, hidden):
        if mode not in ("auto", "parallel", "recurrent"):
            raise ValueError(f"mode must be 'auto', 'parallel' or 'recurrent', got {mode!r}")
        if _is_ragged(tokens):
            return self._forward_ragged(tokens, state, mode, full_output, hidden)
        tok, single = self._tokens(tokens)
        B, T = tok.shape
        if (
            single
            and state is not None
            and isinstance(state, State)
            and state.batch_size is not None
        ):
            raise ValueError(
                f"state: a batched state (B={state.batch_size}) was given for a single sequence"
            )
        (att_x, att_kv, ffn_x), src = self._state_arrays(state, B, single)
        if mode == "auto":
            mode = "parallel" if T >= AUTO_PARALLEL_MIN_T else "recurrent"
        logits = self._c.forward(
            tok,
            att_x,
            att_kv,
            ffn_x,
            1 if mode == "parallel" else 0,
            bool(full_output),
            bool(hidden),
            src,
        )
        if single:
            return logits[0], State(att_x[0], att_kv[0], ffn_x[0])
        return logits, State(att_x, att_kv, ffn_x)

    def _forward_ragged(self, seqs, state, mode, full_output, hidden=False):
        seqs = list(seqs)
        B = len(seqs)
        if state is not None and isinstance(state, State) and state.batch_size not in (None, B):
            raise ValueError(
                f"state: expected batch {B} (one per sequence), got {state.batch_size}"
            )
        outs, states = [], []
        for b, seq in enumerate(seqs):
            sb = (
                state[b]
                if (state is not None and isinstance(state, State) and state.batch_size)
                else state
            )
            try:
                lg, st = self._run(
                    np.asarray(seq) if not isinstance(seq, np.ndarray) else seq,
                    sb,
                    mode,
                    full_output,
                    hidden,
                )
            except (ValueError, TypeError) as e:
                raise type(e)(f"sequence {b}: {e}") from None
            if np.ndim(lg) != (2 if full_output else 1):
                raise ValueError(f"tokens: sequence {b} must be 1-D")
            outs.append(lg)
            states.append(st)
        return (outs if full_output else np.stack(outs)), State.stack(states)

    # --- using the model (thin wrappers; the logic lives in generation.py and scoring.py) ---

    def generate(self, prompt, max_tokens: int = 200, **kwargs):
        """Generate text after ``prompt`` (str, bytes or token ids); yields text pieces as they complete.

        Keyword arguments as :func:`rwkv5.generation.generate`: temperature=1.0, top_p=0.85, top_k=0,
        presence_penalty=0.2, frequency_penalty=0.2, penalty_decay=0.996, stop=None, seed=None,
        state=None, tokenizer=None (the World tokenizer, or bytes for a 256-token vocabulary).

        >>> print("".join(model.generate("Once upon a time", max_tokens=50, seed=0)))  # doctest: +SKIP
        """
        from .generation import generate

        return generate(self, prompt, max_tokens=max_tokens, **kwargs)

    def generate_batch(self, prompts, max_tokens: int = 200, **kwargs):
        """Generate a completion for each prompt, stepping all of them as one batch; returns a list of str."""
        from .generation import generate_batch

        return generate_batch(self, prompts, max_tokens=max_tokens, **kwargs)

    def embed(self, texts, pool: str = "last", tokenizer=None, chunk_len: int = 1024) -> np.ndarray:
        """Embeddings of texts (or token lists): the final hidden states after ln_out, pooled.

        pool="last": the state after the last token (RWKV's recurrent summary of the whole text);
        pool="mean": the mean over every position. Returns float32 (len(texts), n_embd). Long texts
        run in parallel mode in slices of ``chunk_len`` positions, so memory stays bounded.

        >>> vecs = model.embed(["a cat", "a dog"], pool="mean")   # doctest: +SKIP
        """
        from .generation import as_tokens, default_tokenizer

        if pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
        if isinstance(texts, (str, bytes)):
            raise TypeError(
                "texts: expected a list of texts or token lists, got a single "
                f"{type(texts).__name__} (wrap it in a list)"
            )
        tok = tokenizer or default_tokenizer(self)
        out = np.empty((len(texts), self.config.n_embd), np.float32)
        for i, text in enumerate(texts):
            ids = as_tokens(text, tok)
            if not ids:
                raise ValueError(f"texts[{i}]: expected at least one token, got an empty text")
            state, total = None, np.zeros(self.config.n_embd, np.float64)
            for start in range(0, len(ids), chunk_len):
                h, state = self.hidden_states(
                    ids[start : start + chunk_len], state, full_output=(pool == "mean")
                )
                if pool == "mean":
                    total += h.sum(axis=0, dtype=np.float64)
                else:
                    out[i] = h
            if pool == "mean":
                out[i] = total / len(ids)
        return out

    def score(self, text_or_tokens, tokenizer=None, state=None, chunk_len: int = 256):
        """Loss (nats/token), perplexity and next-token accuracy of a text (rwkv5.scoring.Score)."""
        from .generation import as_tokens, default_tokenizer
        from .scoring import score

        tokens = as_tokens(text_or_tokens, tokenizer or default_tokenizer(self))
        return score(self, tokens, state=state, chunk_len=chunk_len)

    def perplexity(self, text_or_tokens, tokenizer=None, state=None, chunk_len: int = 256) -> float:
        """exp(mean negative log-likelihood) of each token given the ones before it (parallel mode,
        chunk by chunk so memory stays bounded)."""
        return self.score(
            text_or_tokens, tokenizer=tokenizer, state=state, chunk_len=chunk_len
        ).perplexity

    def __repr__(self):
        c = self.config
        return (
            f"<rwkv5.Model {c.version} L{c.n_layer} C{c.n_embd} H{c.n_head}x{c.head_size} F{c.n_ffn} "
            f"V{c.vocab_size} {c.dtype} gn_eps={c.gn_eps:g}>"
        )


def _is_ragged(tokens):
    """A list/tuple of sequences whose lengths differ."""
    if isinstance(tokens, np.ndarray) or not isinstance(tokens, (list, tuple)) or len(tokens) == 0:
        return False
    if not all(isinstance(s, (list, tuple, np.ndarray)) for s in tokens):
        return False
    return len({len(s) for s in tokens}) > 1


__all__ = [
    "Model",
    "State",
    "ModelConfig",
    "quantize_int8",
    "quantize_int8_numpy",
    "quantize_int4",
    "dequantize_int4",
    "block_matrix",
]
