"""Saving and loading recurrent states, and reading state-tuning files.

A saved :class:`rwkv5.State` is a safetensors file (written atomically, see
:mod:`.safetensors`) with three float32 tensors ``att_x`` (L, C), ``att_kv`` (L, H, N, N)
and ``ffn_x`` (L, C) — a batched state adds a leading B to each — and metadata
``format = "rwkv5-state"``, ``version = "1"``, ``shapes`` (JSON of the three shapes). On
load all of that is checked: format and version, exactly these three tensors, F32, shapes
equal to the recorded ones and consistent with each other (same B and L; att_x and ffn_x of
one shape; att_kv's last two axes square).

State-tuning files (RWKV-LM "state tuning") are ordinary checkpoints that hold
``blocks.{i}.att.time_state`` tensors of shape (H, N, N) per layer. Their layout is the
transpose of ours — see :func:`time_state_to_att_kv`.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .safetensors import SafetensorsFile, write_safetensors

__all__ = ["save_state", "load_state", "time_state_to_att_kv", "initial_state_from_file",
           "attach_initial_state", "initial_state", "STATE_FORMAT", "STATE_VERSION"]

STATE_FORMAT = "rwkv5-state"
STATE_VERSION = "1"
_NAMES = ("att_x", "att_kv", "ffn_x")


def _state_class():
    from .. import model as _model   # the Model side owns State
    return _model.State


def _make_state(att_x, att_kv, ffn_x):
    return _state_class()(att_x=att_x, att_kv=att_kv, ffn_x=ffn_x)


def _check_shapes(shapes: dict, where: str):
    ax, kv, fx = shapes["att_x"], shapes["att_kv"], shapes["ffn_x"]
    if len(ax) not in (2, 3):
        raise ValueError(f"{where}: att_x has shape {tuple(ax)}, expected (L, C) or (B, L, C)")
    if tuple(fx) != tuple(ax):
        raise ValueError(f"{where}: ffn_x shape {tuple(fx)} differs from att_x shape {tuple(ax)}")
    if len(kv) != len(ax) + 2 or tuple(kv[:len(ax) - 1]) != tuple(ax[:-1]) or kv[-1] != kv[-2]:
        lead = "(B, L" if len(ax) == 3 else "(L"
        raise ValueError(f"{where}: att_kv has shape {tuple(kv)}, expected {lead}, H, N, N) matching "
                         f"att_x {tuple(ax)}")


def save_state(state, path) -> None:
    """Write ``state`` (anything with float32 ``att_x``, ``att_kv``, ``ffn_x``) to ``path`` atomically."""
    arrays = {}
    for n in _NAMES:
        a = getattr(state, n, None)
        if a is None:
            raise TypeError(f"state has no {n!r} array (expected an rwkv5.State)")
        a = np.asarray(a)
        if a.dtype != np.float32:
            raise TypeError(f"state.{n} has dtype {a.dtype}, expected float32")
        arrays[n] = a
    shapes = {n: list(a.shape) for n, a in arrays.items()}
    _check_shapes(shapes, "save_state")
    write_safetensors(path, arrays, metadata={"format": STATE_FORMAT, "version": STATE_VERSION,
                                              "shapes": json.dumps(shapes, sort_keys=True)})


def _read_state_arrays(f: SafetensorsFile, where: str):
    meta = f.metadata
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"{where}: metadata format is {meta.get('format')!r}, expected {STATE_FORMAT!r}")
    if meta.get("version") != STATE_VERSION:
        raise ValueError(f"{where}: state file version {meta.get('version')!r} is not supported "
                         f"(expected {STATE_VERSION!r})")
    if set(f.tensors) != set(_NAMES):
        raise ValueError(f"{where}: tensors {sorted(f.tensors)}, expected exactly {sorted(_NAMES)}")
    for n in _NAMES:
        if f.dtypes[n] != "F32":
            raise ValueError(f"{where}: {n} has dtype {f.dtypes[n]}, expected F32")
    try:
        recorded = json.loads(meta.get("shapes", ""))
        recorded = {n: list(recorded[n]) for n in _NAMES}
    except (ValueError, KeyError, TypeError, RecursionError):   # (RecursionError: absurdly deep JSON)
        raise ValueError(f"{where}: metadata 'shapes' is missing or malformed") from None
    actual = {n: list(f.tensors[n].shape) for n in _NAMES}
    if recorded != actual:
        raise ValueError(f"{where}: tensor shapes {actual} differ from the recorded shapes {recorded}")
    _check_shapes(actual, where)
    # Copies: a State belongs to its caller and must not keep the file mapped.
    return tuple(np.array(f.tensors[n], np.float32) for n in _NAMES)


def load_state(path):
    """Read a state written by :func:`save_state`; returns an :class:`rwkv5.State`."""
    path = os.fspath(path)
    return _make_state(*_read_state_arrays(SafetensorsFile(path), path))


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
        raise ValueError(f"{where}: time_state layers {sorted(time_states)} are not 0..{n_layer - 1}")
    shape = None
    out = None
    for i in range(n_layer):
        t = np.asarray(time_states[i])
        if t.ndim != 3 or t.shape[1] != t.shape[2]:
            raise ValueError(f"{where}: blocks.{i}.att.time_state has shape {t.shape}, expected (H, N, N)")
        if shape is None:
            shape = t.shape
            out = np.empty((n_layer,) + shape, np.float32)
        elif t.shape != shape:
            raise ValueError(f"{where}: blocks.{i}.att.time_state has shape {t.shape}, layer 0 has {shape}")
        out[i] = t.transpose(0, 2, 1)
    return out


def _config_shape(config):
    get = (lambda k: config[k]) if isinstance(config, dict) else (lambda k: getattr(config, k))
    return int(get("n_layer")), int(get("n_embd")), int(get("n_head")), int(get("head_size"))


def initial_state_from_file(path, config):
    """An initial :class:`rwkv5.State` for a model with ``config`` from ``path``, which is either a
    state saved by :func:`save_state` or a state-tuning checkpoint (any format ``rwkv5.load``
    reads) holding ``blocks.{i}.att.time_state``. Shapes are checked against the config."""
    path = os.fspath(path)
    L, C, H, N = _config_shape(config)
    from ..loading import read_checkpoint, sniff_format
    if sniff_format(path) == "safetensors":
        f = SafetensorsFile(path)
        if f.metadata.get("format") == STATE_FORMAT:
            att_x, att_kv, ffn_x = _read_state_arrays(f, path)
            if att_x.ndim != 2 or att_x.shape != (L, C) or att_kv.shape != (L, H, N, N):
                raise ValueError(f"{path}: state shapes att_x {att_x.shape}, att_kv {att_kv.shape} do not fit "
                                 f"the model: expected ({L}, {C}) and ({L}, {H}, {N}, {N})")
            return _make_state(att_x, att_kv, ffn_x)
    _sd, info = read_checkpoint(path)
    if info["time_state"] is None:
        raise ValueError(f"{path}: neither an rwkv5 state file nor a state-tuning file "
                         "(no blocks.{i}.att.time_state tensors)")
    return _zero_state_with_kv(info["time_state"], L, C, H, N, path)


def _zero_state_with_kv(att_kv, L, C, H, N, where):
    if att_kv.shape != (L, H, N, N):
        raise ValueError(f"{where}: time_state gives att_kv of shape {att_kv.shape}, the model needs "
                         f"({L}, {H}, {N}, {N})")
    return _make_state(np.zeros((L, C), np.float32), np.array(att_kv, np.float32), np.zeros((L, C), np.float32))


def attach_initial_state(model, att_kv, where="checkpoint"):
    """Give ``model`` the initial state carried by its checkpoint's time_state tensors:
    ``model.new_state()`` then starts from it instead of zeros."""
    L, C, H, N = _config_shape(model.config)
    model._initial_state = _zero_state_with_kv(att_kv, L, C, H, N, where)


def initial_state(model, batch=None, from_file=None):
    """What ``Model.new_state(batch, from_file)`` returns when it is not a zero state: the state
    from ``from_file`` (see :func:`initial_state_from_file`) or else the model's state-tuning
    state, as a fresh copy, repeated ``batch`` times along a new leading axis if batch is given."""
    if from_file is not None:
        base = initial_state_from_file(from_file, model.config)
    else:
        base = model._initial_state
    arrays = [np.array(getattr(base, n), np.float32) for n in _NAMES]
    if batch is not None:
        arrays = [np.repeat(a[None], batch, axis=0) for a in arrays]
    return _make_state(*arrays)
