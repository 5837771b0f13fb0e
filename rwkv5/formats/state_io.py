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
transpose of ours — see :func:`rwkv5.formats.checkpoint.time_state_to_att_kv`.

This module works on arrays: readers return :class:`StateArrays` (att_x, att_kv, ffn_x), which
:class:`rwkv5.State` wraps (``State.load``, ``Model.new_state(from_file=...)``).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from .checkpoint import read_checkpoint, sniff_format, time_state_to_att_kv  # noqa: F401 (re-exported)
from .safetensors import SafetensorsFile, write_safetensors

__all__ = [
    "save_state",
    "load_state",
    "time_state_to_att_kv",
    "initial_state_from_file",
    "state_from_time_state",
    "StateArrays",
    "STATE_FORMAT",
    "STATE_VERSION",
]

STATE_FORMAT = "rwkv5-state"
STATE_VERSION = "1"
_NAMES = ("att_x", "att_kv", "ffn_x")


class StateArrays(NamedTuple):
    """The three float32 arrays of a recurrent state, as the readers here return them."""

    att_x: np.ndarray
    att_kv: np.ndarray
    ffn_x: np.ndarray


def _check_shapes(shapes: dict, where: str):
    ax, kv, fx = shapes["att_x"], shapes["att_kv"], shapes["ffn_x"]
    if len(ax) not in (2, 3):
        raise ValueError(f"{where}: att_x has shape {tuple(ax)}, expected (L, C) or (B, L, C)")
    if tuple(fx) != tuple(ax):
        raise ValueError(f"{where}: ffn_x shape {tuple(fx)} differs from att_x shape {tuple(ax)}")
    if len(kv) != len(ax) + 2 or tuple(kv[: len(ax) - 1]) != tuple(ax[:-1]) or kv[-1] != kv[-2]:
        lead = "(B, L" if len(ax) == 3 else "(L"
        raise ValueError(
            f"{where}: att_kv has shape {tuple(kv)}, expected {lead}, H, N, N) matching "
            f"att_x {tuple(ax)}"
        )


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
    write_safetensors(
        path,
        arrays,
        metadata={
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "shapes": json.dumps(shapes, sort_keys=True),
        },
    )


def _read_state_arrays(f: SafetensorsFile, where: str):
    meta = f.metadata
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(
            f"{where}: metadata format is {meta.get('format')!r}, expected {STATE_FORMAT!r}"
        )
    if meta.get("version") != STATE_VERSION:
        raise ValueError(
            f"{where}: state file version {meta.get('version')!r} is not supported "
            f"(expected {STATE_VERSION!r})"
        )
    if set(f.tensors) != set(_NAMES):
        raise ValueError(f"{where}: tensors {sorted(f.tensors)}, expected exactly {sorted(_NAMES)}")
    for n in _NAMES:
        if f.dtypes[n] != "F32":
            raise ValueError(f"{where}: {n} has dtype {f.dtypes[n]}, expected F32")
    try:
        recorded = json.loads(meta.get("shapes", ""))
        recorded = {n: list(recorded[n]) for n in _NAMES}
    except (
        ValueError,
        KeyError,
        TypeError,
        RecursionError,
    ):  # (RecursionError: absurdly deep JSON)
        raise ValueError(f"{where}: metadata 'shapes' is missing or malformed") from None
    actual = {n: list(f.tensors[n].shape) for n in _NAMES}
    if recorded != actual:
        raise ValueError(
            f"{where}: tensor shapes {actual} differ from the recorded shapes {recorded}"
        )
    _check_shapes(actual, where)
    # Copies: a State belongs to its caller and must not keep the file mapped.
    return StateArrays(*(np.array(f.tensors[n], np.float32) for n in _NAMES))


def load_state(path) -> StateArrays:
    """Read a state written by :func:`save_state`; returns its :class:`StateArrays`
    (``rwkv5.State.load`` wraps them in an :class:`rwkv5.State`)."""
    path = os.fspath(path)
    return _read_state_arrays(SafetensorsFile(path), path)


def _config_shape(config):
    get = (lambda k: config[k]) if isinstance(config, dict) else (lambda k: getattr(config, k))
    return int(get("n_layer")), int(get("n_embd")), int(get("n_head")), int(get("head_size"))


def initial_state_from_file(path, config) -> StateArrays:
    """The arrays of an initial state for a model with ``config`` from ``path``, which is either a
    state saved by :func:`save_state` or a state-tuning checkpoint (any format ``rwkv5.load``
    reads) holding ``blocks.{i}.att.time_state``. Shapes are checked against the config."""
    path = os.fspath(path)
    L, C, H, N = _config_shape(config)
    if sniff_format(path) == "safetensors":
        f = SafetensorsFile(path)
        if f.metadata.get("format") == STATE_FORMAT:
            att_x, att_kv, ffn_x = _read_state_arrays(f, path)
            if att_x.ndim != 2 or att_x.shape != (L, C) or att_kv.shape != (L, H, N, N):
                raise ValueError(
                    f"{path}: state shapes att_x {att_x.shape}, att_kv {att_kv.shape} do not fit "
                    f"the model: expected ({L}, {C}) and ({L}, {H}, {N}, {N})"
                )
            return StateArrays(att_x, att_kv, ffn_x)
    _sd, info = read_checkpoint(path)
    if info["time_state"] is None:
        raise ValueError(
            f"{path}: neither an rwkv5 state file nor a state-tuning file "
            "(no blocks.{i}.att.time_state tensors)"
        )
    return state_from_time_state(info["time_state"], config, path)


def state_from_time_state(att_kv, config, where="checkpoint") -> StateArrays:
    """The initial state a state-tuning checkpoint carries: its (L, H, N, N) ``att_kv`` (see
    ``time_state_to_att_kv``), checked against ``config``, with zero ``att_x`` and ``ffn_x``."""
    L, C, H, N = _config_shape(config)
    if att_kv.shape != (L, H, N, N):
        raise ValueError(
            f"{where}: time_state gives att_kv of shape {att_kv.shape}, the model needs "
            f"({L}, {H}, {N}, {N})"
        )
    return StateArrays(
        np.zeros((L, C), np.float32), np.array(att_kv, np.float32), np.zeros((L, C), np.float32)
    )
