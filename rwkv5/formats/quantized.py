"""The saved form of a quantised model: a safetensors file whose large matrices are stored as the
kernels read them, so that ``rwkv5.load`` maps them (zero copy) instead of quantising again.

Written by ``rwkv5 convert --dtype int8|int4`` and by ``Model.save`` of a quantised model; the
layout is specified in docs/formats.md ("Quantised safetensors"). For each quantised matrix ``NAME``
of logical shape (rows, cols):

* ``NAME``: its elements as the kernels read them: int8 in the 4-row blocked layout
  (``rwkv5.model.block_matrix``: shape (ceil(rows/4), ceil(cols/E), 4, E) with E elements per
  64-byte line, zero padded); int4 as its blocks, row-major (rows, ceil(cols/64) * 36) bytes;
* ``NAME.<part>``: the type's other arrays (int8: ``NAME.scale``, float32 (rows,); int4: none, its
  scales are inside the blocks);
* the metadata key ``rwkv5_quantized``: JSON ``{"version": 1, "dtype": "int8", "layout":
  "blocked4", "matrices": {NAME: [rows, cols], ...}}`` (int4: ``"layout": "rows"``).

The writer places the quantised matrices first, from a 64-byte aligned start of the data, so every
one starts on a cache line. Everything else (embedding, vectors, ``time_*``) is as in any
checkpoint. ``FORMS`` is the one table of the quantised types: a new one is a row (its stored
element type, layout, the shapes of its parts and its dequantisation), plus its kernels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FORMS",
    "META_KEY",
    "QuantizedMatrix",
    "group_quantized",
    "flatten",
    "block",
    "unblock",
    "form_of",
    "dequantize_int4",
    "INT4_BLOCK",
    "INT4_BLOCK_BYTES",
]

META_KEY = "rwkv5_quantized"
VERSION = 1

#: int4 blocks (RWKV5_I4, csrc/model/dtypes.h): 64 weights in 36 bytes, two groups of 32 with an
#: fp16 scale each
INT4_BLOCK, INT4_BLOCK_BYTES = 64, 36


def dequantize_int4(blocks, cols):
    """The float32 (rows, cols) matrix q * s that int4 blocks (rwkv5.model.quantize_int4) stand for."""
    blocks = np.asarray(blocks, np.uint8)
    rows = blocks.shape[0]
    nb = -(-cols // INT4_BLOCK)
    if blocks.ndim != 2 or blocks.shape[1] != nb * INT4_BLOCK_BYTES:
        raise ValueError(
            f"dequantize_int4: expected ({rows}, {nb * INT4_BLOCK_BYTES}) blocks for {cols} "
            f"columns, got {blocks.shape}"
        )
    b = blocks.reshape(rows, nb, INT4_BLOCK_BYTES)
    s = np.ascontiguousarray(b[:, :, :4]).view("<f2").astype(np.float32).reshape(rows, nb, 2, 1)
    nib = b[:, :, 4:].reshape(rows, nb, 2, 16)
    q = np.stack([nib & 15, nib >> 4], axis=3).astype(np.int8)  # (rows, nb, group, half, byte)
    q = ((q ^ 8) - 8).reshape(rows, nb, 2, 32)
    return (q * s).reshape(rows, nb * INT4_BLOCK)[:, :cols].astype(np.float32)


def _blocked4(itemsize):
    """The 4-row blocked layout's shape for elements of `itemsize` bytes."""
    e = 64 // itemsize
    return lambda rows, cols: (-(-rows // 4), -(-cols // e), 4, e)


def _int4_nonfinite(q):
    """Whether int4 blocks hold an fp16 scale that is inf or NaN (exponent bits all ones)."""
    s = q.reshape(q.shape[0], -1, INT4_BLOCK_BYTES)[:, :, :4].view("<u2")
    return bool(((s & 0x7C00) == 0x7C00).any())


@dataclass(frozen=True)
class QuantForm:
    st_dtype: str  # safetensors dtype of the stored elements
    np_dtype: np.dtype  # the NumPy dtype they are held in
    layout: str  # the file's "layout": "blocked4" (4-row blocked elements) or "rows" (row-major)
    shape: object  # (rows, cols) -> the stored shape of the elements
    parts: tuple  # ((suffix, safetensors dtype, shape(rows, cols)), ...) after the elements
    dequantize: object  # (q row-major, parts, (rows, cols)) -> float32 W
    nonfinite: object  # (q, parts) -> None, or where a stored scale is inf/nan (a corrupt file)


FORMS = {
    # W[o][i] = q[o][i] * scale[o]
    "int8": QuantForm(
        "I8",
        np.dtype(np.int8),
        "blocked4",
        _blocked4(1),
        (("scale", "F32", lambda rows, cols: (rows,)),),
        lambda q, parts, shape: q.astype(np.float32) * parts[0][:, None],
        lambda q, parts: None if np.all(np.isfinite(parts[0])) else ".scale",
    ),
    # W[o][i] = q * the scale of i's group of 32, both inside the row's 36-byte blocks
    "int4": QuantForm(
        "U8",
        np.dtype(np.uint8),
        "rows",
        lambda rows, cols: (rows, -(-cols // INT4_BLOCK) * INT4_BLOCK_BYTES),
        (),
        lambda q, parts, shape: dequantize_int4(q, shape[1]),
        lambda q, parts: " (an fp16 scale of its blocks)" if _int4_nonfinite(q) else None,
    ),
}


def unblock(a, shape):
    """A blocked array (ceil(rows/4), ceil(cols/E), 4, E) -> its (rows, cols) row-major copy."""
    g, c, four, e = a.shape
    return np.ascontiguousarray(
        a.transpose(0, 2, 1, 3).reshape(g * four, c * e)[: shape[0], : shape[1]]
    )


def block(a):
    """A (rows, cols) array -> the 4-row blocked layout (zero padded), in NumPy (for saving a model
    built with layout="rows"; loading uses rwkv5.model.block_matrix, threaded in C)."""
    rows, cols = a.shape
    e = 64 // a.itemsize
    g, c = -(-rows // 4), -(-cols // e)
    p = np.zeros((g * 4, c * e), a.dtype)
    p[:rows, :cols] = a
    return np.ascontiguousarray(p.reshape(g, 4, c, e).transpose(0, 2, 1, 3))


def form_of(held):
    """The name of the quantised type a model's (q, *parts) is in (by q's element type)."""
    for name, form in FORMS.items():
        if held[0].dtype == form.np_dtype and len(held) == 1 + len(form.parts):
            return name
    raise ValueError(f"no quantised type stores {held[0].dtype} with {len(held) - 1} parts")


class QuantizedMatrix:
    """A matrix stored in a quantised type: ``q`` (the elements, blocked) and ``parts`` (int8: the
    per-row scales), as the model holds them. ``np.asarray(m)`` gives its float32 values (computed
    afresh, not kept), so code that wants floats (``convert --dtype bf16``) reads it as any tensor."""

    dtype = np.dtype(np.float32)

    def __init__(self, form, q, parts, shape):
        self.form, self.q, self.parts, self.shape = form, q, tuple(parts), tuple(shape)

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))

    @property
    def held(self):
        """(q, *parts): what Model.from_state_dict keeps for this matrix."""
        return (self.q,) + self.parts

    def dequantize(self) -> np.ndarray:
        q = unblock(self.q, self.shape) if self.q.ndim == 4 else self.q
        return FORMS[self.form].dequantize(q, self.parts, self.shape)

    def __array__(self, dtype=None, copy=None):
        a = self.dequantize()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self):
        return f"QuantizedMatrix({self.form}, shape={self.shape})"


def group_quantized(tensors, dtypes, meta, path):
    """The tensors of a quantised file with each quantised matrix and its parts made one
    QuantizedMatrix; returns (state_dict, dtypes: name -> safetensors dtype, "F32" for a quantised
    matrix, which reads as float32). Validates the
    metadata and every matrix's arrays against FORMS, naming the file and tensor."""
    try:
        info = json.loads(meta[META_KEY])
    except ValueError as e:
        raise ValueError(f"{path}: metadata {META_KEY} is not JSON: {e}") from None
    if not isinstance(info, dict) or info.get("version") != VERSION:
        raise ValueError(
            f"{path}: metadata {META_KEY}: expected an object with version {VERSION}, got "
            f"{str(info)[:80]}"
        )
    form_name, layout, mats = info.get("dtype"), info.get("layout"), info.get("matrices")
    if not isinstance(form_name, str) or form_name not in FORMS:
        raise ValueError(
            f"{path}: metadata {META_KEY}: dtype {str(form_name)[:40]!r} is not one of "
            f"{', '.join(FORMS)}"
        )
    form = FORMS[form_name]
    if layout != form.layout:
        raise ValueError(
            f"{path}: metadata {META_KEY}: layout {str(layout)[:40]!r} is not {form.layout!r} "
            f"(the layout of {form_name})"
        )
    if not isinstance(mats, dict):
        raise ValueError(f"{path}: metadata {META_KEY}: 'matrices' must map names to [rows, cols]")
    sd, taken = {}, set()
    for name, shape in mats.items():
        where = f"{path}: tensor {name!r}"
        if not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(type(d) is int and d > 0 for d in shape)
        ):
            raise ValueError(f"{where}: metadata shape {str(shape)[:40]} is not [rows, cols]")
        rows, cols = shape
        arrays = []
        for suffix, st, shp in (("", form.st_dtype, form.shape),) + form.parts:
            key = name + ("." + suffix if suffix else "")
            if key not in tensors:
                raise ValueError(
                    f"{path}: tensor {key!r} of the {form_name} matrix {name!r} is missing"
                )
            if dtypes[key] != st or tuple(tensors[key].shape) != tuple(shp(rows, cols)):
                raise ValueError(
                    f"{path}: tensor {key!r}: expected {st} {tuple(shp(rows, cols))} for a "
                    f"{form_name} matrix of shape ({rows}, {cols}), got {dtypes[key]} "
                    f"{tuple(tensors[key].shape)}"
                )
            arrays.append(tensors[key])
            taken.add(key)
        where = form.nonfinite(arrays[0], arrays[1:])
        if where is not None:  # ".scale": that tensor; " (...)": inside the matrix's own tensor
            key, what = (name + where, "") if where.startswith(".") else (name, where)
            raise ValueError(f"{path}: tensor {key!r} has non-finite values{what}")
        sd[name] = QuantizedMatrix(form_name, arrays[0], arrays[1:], (rows, cols))
    kinds = {}
    for key, a in tensors.items():
        if key not in taken:
            sd[key] = a
            kinds[key] = dtypes[key]
    for name in mats:
        kinds[name] = "F32"  # read as floats by whatever does not take the quantised form
    return sd, kinds


def flatten(matrices):
    """{name: (form name, (q, *parts) as the model holds them, (rows, cols))} -> (tensors,
    safetensors dtypes, metadata, the names to lay out first (64-byte aligned)), for
    write_safetensors. A row-major q of a blocked form is blocked here."""
    out, dts, shapes, first = {}, {}, {}, []
    forms = {f for f, _, _ in matrices.values()}
    if len(forms) > 1:
        raise ValueError(f"a quantised file holds one quantised type, got {sorted(forms)}")
    for name, (form_name, held, shape) in matrices.items():
        form = FORMS[form_name]
        q = held[0]
        if form.layout == "blocked4" and q.ndim == 2:
            q = block(q)
        if tuple(q.shape) != form.shape(*shape):
            raise ValueError(
                f"{name}: a {form_name} matrix is written as {form.shape(*shape)} "
                f"({form.layout}); got shape {q.shape}"
            )
        out[name], dts[name] = q, form.st_dtype
        first.append(name)
        for (suffix, st, _), a in zip(form.parts, held[1:]):
            out[f"{name}.{suffix}"], dts[f"{name}.{suffix}"] = a, st
        shapes[name] = [int(shape[0]), int(shape[1])]
    kind = forms.pop() if forms else None
    meta = {
        META_KEY: json.dumps(
            {
                "version": VERSION,
                "dtype": kind,
                "layout": FORMS[kind].layout if kind else "blocked4",
                "matrices": shapes,
            },
            separators=(",", ":"),
        )
    }
    return out, dts, meta, first
