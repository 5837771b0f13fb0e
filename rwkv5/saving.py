"""``Model.save``: the weights a :class:`rwkv5.Model` holds, written back as a safetensors checkpoint.

The file has RWKV-LM names and raw values (docs/model.md §3), so ``rwkv5.load`` (and any tool
that reads RWKV-LM safetensors) reads it back:

* matrices in the storage type the model holds them (fp32, fp16, bf16); a blocked copy is written
  row-major. A quantised (int8, int4) model's matrices are written in the quantised form of
  :mod:`rwkv5.formats.quantized` (int8: q blocked, the scales beside it; int4: its blocks, scales
  inside; docs/formats.md), which ``rwkv5.load`` maps without quantising again: the same logits to
  the bit. Other readers see ``I8`` tensors with ``.scale`` companions or ``U8`` blocks, not an
  RWKV-LM checkpoint;
* vectors as float32, the ``time_mix`` ones in RWKV-LM's ``(1, 1, C)`` shape;
* ``time_decay`` in float64 as ``ln(-ln w)`` from the ``ln w`` the model computes with, and the
  bonus as ``time_faaaa`` (a 5.0 ``time_first`` model is written as the same model with
  ``time_faaaa = exp(time_first)``);
* a state-tuning initial state as ``blocks.{i}.att.time_state`` in the file layout
  ``[h][value][key]`` (docs/model.md §5);
* the GroupNorm epsilon in the metadata (``gn_eps``), so the file computes what the model did.
"""

from __future__ import annotations

import numpy as np

__all__ = ["model_tensors", "save_model"]


def _row_major(a, shape):
    """A matrix as the model holds it -> (rows, cols) row-major; undoes `block_matrix`."""
    if a.ndim == 4:  # (ceil(rows/4), ceil(cols/E), 4, E) blocked, zero padded
        g, c, four, e = a.shape
        a = a.transpose(0, 2, 1, 3).reshape(g * four, c * e)[: shape[0], : shape[1]]
    if a.shape != shape:
        raise AssertionError(f"matrix of shape {a.shape}, expected {shape}")
    return np.ascontiguousarray(a)


def _matrix(m, shape):
    return _row_major(m, shape)


def model_tensors(model):
    """(tensors, dtypes, metadata, first) for write_safetensors: everything `model` computes with."""
    from ._checkpoint import model_params

    a, c = model._arch, model.config
    H, N = c.n_head, c.head_size
    per_channel = c.version == "5.2"
    from .formats.quantized import flatten, form_of

    t, quantised = {}, {}
    for name, layer, p in model_params(a):  # model._weights holds these names (the table PARAMS)
        w = model._weights[name]
        if p.kind == "matrix" and isinstance(w, tuple):  # (q, *parts): in the quantised form
            quantised[name] = (form_of(w), w, p.shape(a))
        elif p.kind == "matrix":
            t[name] = _matrix(w, p.shape(a))
        elif p.kind == "decay":  # ln w -> time_decay = ln(-ln w)
            with np.errstate(
                divide="ignore"
            ):  # ln w = 0 (w = 1) gives time_decay = -inf, as it came
                d = np.log(-w.reshape(H, N))
            t[name] = d if per_channel else np.ascontiguousarray(d[:, 0])
        elif p.kind == "bonus":  # u, written as time_faaaa whatever the file had
            u = w.reshape(H, N)
            t[name] = u if per_channel else np.ascontiguousarray(u[:, 0])
        elif ".time_mix_" in name:
            t[name] = w.reshape(1, 1, c.n_embd)
        else:
            t[name] = w
    if model._initial_state is not None:
        for i, kv in enumerate(np.asarray(model._initial_state.att_kv)):
            t[f"blocks.{i}.att.time_state"] = np.ascontiguousarray(kv.transpose(0, 2, 1))
    dtypes = {k: "BF16" for k, v in t.items() if v.dtype == np.uint16}
    meta = {
        "format": "rwkv5-checkpoint",
        "gn_eps": repr(float(c.gn_eps)),
        "dtype": c.dtype,
        "saved_by": "rwkv5 Model.save",
    }
    first = []
    if quantised:
        qt, qd, qm, first = flatten(quantised)
        t.update(qt)
        dtypes.update(qd)
        meta.update(qm)
    return t, dtypes, meta, first


def save_model(model, path, metadata=None) -> int:
    """Write `model` to `path` (safetensors, atomically); returns the file size in bytes.
    `metadata` (str -> str) is added to the file's metadata."""
    from .formats.safetensors import write_safetensors

    tensors, dtypes, meta, first = model_tensors(model)
    meta.update(metadata or {})
    return write_safetensors(path, tensors, metadata=meta, dtypes=dtypes, first=first)
