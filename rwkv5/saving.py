"""``Model.save``: the weights a :class:`rwkv5.Model` holds, written back as a safetensors checkpoint.

The file has RWKV-LM names and raw values (docs/model.md §3), so ``rwkv5.load`` (and any tool
that reads RWKV-LM safetensors) reads it back:

* matrices in the storage type the model holds them (fp32, fp16, bf16); a blocked copy is written
  row-major. An int8 model's matrices are written as fp32 ``q * scale`` (safetensors checkpoints
  have no int8 form here): its logits then agree with the int8 model's to float32 rounding, not
  to the bit;
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

# Positions in a layer tuple of Model._weights (see Model.from_state_dict).
_LAYER_VECTORS = {0: "ln1.weight", 1: "ln1.bias", 2: "ln2.weight", 3: "ln2.bias", 15: "att.ln_x.weight",
                  16: "att.ln_x.bias"}
_LAYER_MIX = {4: "att.time_mix_k", 5: "att.time_mix_v", 6: "att.time_mix_r", 7: "att.time_mix_g",
              17: "ffn.time_mix_k", 18: "ffn.time_mix_r"}
_LAYER_MATRICES = {10: "att.receptance.weight", 11: "att.key.weight", 12: "att.value.weight",
                   13: "att.gate.weight", 14: "att.output.weight", 19: "ffn.key.weight",
                   20: "ffn.receptance.weight", 21: "ffn.value.weight"}


def _row_major(a, shape):
    """A matrix as the model holds it -> (rows, cols) row-major; undoes `block_matrix`."""
    if a.ndim == 4:          # (ceil(rows/4), ceil(cols/E), 4, E) blocked, zero padded
        g, c, four, e = a.shape
        a = a.transpose(0, 2, 1, 3).reshape(g * four, c * e)[:shape[0], :shape[1]]
    if a.shape != shape:
        raise AssertionError(f"matrix of shape {a.shape}, expected {shape}")
    return np.ascontiguousarray(a)


def _matrix(m, shape):
    if isinstance(m, tuple):  # int8: (q, per-row scale)
        q, scale = m
        return _row_major(q, shape).astype(np.float32) * scale[:, None]
    return _row_major(m, shape)


def model_tensors(model):
    """(tensors, dtypes, metadata) for write_safetensors: everything `model` computes with."""
    a, c = model._arch, model.config
    C, A, F, V, H, N = c.n_embd, a.dim_att, c.n_ffn, c.vocab_size, c.n_head, c.head_size
    shapes = {"att.receptance.weight": (A, C), "att.key.weight": (A, C), "att.value.weight": (A, C),
              "att.gate.weight": (A, C), "att.output.weight": (C, A), "ffn.key.weight": (F, C),
              "ffn.receptance.weight": (C, C), "ffn.value.weight": (C, F)}
    glob, layers = model._weights
    t = {"emb.weight": _row_major(glob[0], (V, C)), "blocks.0.ln0.weight": glob[1], "blocks.0.ln0.bias": glob[2],
         "ln_out.weight": glob[3], "ln_out.bias": glob[4], "head.weight": _matrix(glob[5], (V, C))}
    per_channel = c.version == "5.2"
    for i, L in enumerate(layers):
        p = f"blocks.{i}."
        for j, name in _LAYER_VECTORS.items():
            t[p + name] = L[j]
        for j, name in _LAYER_MIX.items():
            if L[j] is not None:
                t[p + name] = L[j].reshape(1, 1, C)
        for j, name in _LAYER_MATRICES.items():
            if L[j] is not None:
                t[p + name] = _matrix(L[j], shapes[name])
        logw, u = L[8].reshape(H, N), L[9].reshape(H, N)
        with np.errstate(divide="ignore"):       # ln w = 0 (w = 1) gives time_decay = -inf, as it came
            d = np.log(-logw)
        t[p + "att.time_decay"] = d if per_channel else np.ascontiguousarray(d[:, 0])
        t[p + "att.time_faaaa"] = u if per_channel else np.ascontiguousarray(u[:, 0])
    if model._initial_state is not None:
        for i, kv in enumerate(np.asarray(model._initial_state.att_kv)):
            t[f"blocks.{i}.att.time_state"] = np.ascontiguousarray(kv.transpose(0, 2, 1))
    dtypes = {k: "BF16" for k, v in t.items() if v.dtype == np.uint16}
    meta = {"format": "rwkv5-checkpoint", "gn_eps": repr(float(c.gn_eps)), "dtype": c.dtype,
            "saved_by": "rwkv5 Model.save"}
    return t, dtypes, meta


def save_model(model, path) -> int:
    """Write `model` to `path` (safetensors, atomically); returns the file size in bytes."""
    from .formats.safetensors import write_safetensors

    tensors, dtypes, meta = model_tensors(model)
    return write_safetensors(path, tensors, metadata=meta, dtypes=dtypes)
