"""A ctypes binding of rwkv.cpp's C API (rwkv.h), for side-by-side benchmarks and checks.

rwkv.cpp is not a dependency and nothing of it is in this repository: the user builds it and points
``RWKV_CPP_LIB`` at the shared library (``librwkv.so``). Only the functions of rwkv.h used here are
declared, from the API's documented signatures:

    rwkv_init_from_file(path, n_threads, n_gpu_layers) -> ctx | NULL
    rwkv_eval(ctx, token, state_in | NULL, state_out, logits_out | NULL) -> bool
    rwkv_eval_sequence_in_chunks(ctx, tokens, len, chunk, state_in | NULL, state_out, logits_out) -> bool
    rwkv_get_state_len(ctx), rwkv_get_logits_len(ctx) -> size_t
    rwkv_quantize_model_file(path_in, path_out, format_name) -> bool
    rwkv_set_print_errors(ctx | NULL, bool), rwkv_get_system_info_string() -> char *, rwkv_free(ctx)
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

ENV = "RWKV_CPP_LIB"
_f32p = ctypes.POINTER(ctypes.c_float)


def library_path():
    """The path in RWKV_CPP_LIB, or None when it is unset. Raises FileNotFoundError if it names no file."""
    p = os.environ.get(ENV)
    if not p:
        return None
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{ENV}={p!r}: no such file (point it at rwkv.cpp's librwkv.so)")
    return p


def _ptr(a):
    return None if a is None else a.ctypes.data_as(_f32p)


class Library:
    def __init__(self, path):
        lib = ctypes.CDLL(os.fspath(path))
        ctx = ctypes.c_void_p
        lib.rwkv_init_from_file.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32]
        lib.rwkv_init_from_file.restype = ctx
        lib.rwkv_eval.argtypes = [ctx, ctypes.c_uint32, _f32p, _f32p, _f32p]
        lib.rwkv_eval.restype = ctypes.c_bool
        lib.rwkv_eval_sequence_in_chunks.argtypes = [
            ctx,
            ctypes.POINTER(ctypes.c_uint32),
            ctypes.c_size_t,
            ctypes.c_size_t,
            _f32p,
            _f32p,
            _f32p,
        ]
        lib.rwkv_eval_sequence_in_chunks.restype = ctypes.c_bool
        lib.rwkv_get_state_len.argtypes = [ctx]
        lib.rwkv_get_state_len.restype = ctypes.c_size_t
        lib.rwkv_get_logits_len.argtypes = [ctx]
        lib.rwkv_get_logits_len.restype = ctypes.c_size_t
        lib.rwkv_quantize_model_file.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.rwkv_quantize_model_file.restype = ctypes.c_bool
        lib.rwkv_set_print_errors.argtypes = [ctx, ctypes.c_bool]
        lib.rwkv_set_print_errors.restype = None
        lib.rwkv_get_system_info_string.argtypes = []
        lib.rwkv_get_system_info_string.restype = ctypes.c_char_p
        lib.rwkv_free.argtypes = [ctx]
        lib.rwkv_free.restype = None
        self.lib = lib
        self.path = os.fspath(path)

    def system_info(self) -> str:
        return self.lib.rwkv_get_system_info_string().decode("utf-8", "replace").strip()

    def quantize(self, src, dst, fmt: str) -> None:
        if not self.lib.rwkv_quantize_model_file(os.fsencode(src), os.fsencode(dst), fmt.encode()):
            raise RuntimeError(f"rwkv.cpp could not quantize {src} to {fmt}")

    def load(self, path, threads: int) -> "Context":
        return Context(self, path, threads)


class Context:
    """One loaded model. ``state`` arrays are rwkv.cpp's own flat float32 layout (not rwkv5's)."""

    def __init__(self, library: Library, path, threads: int):
        self.lib = library.lib
        self.ctx = self.lib.rwkv_init_from_file(os.fsencode(path), threads, 0)
        if not self.ctx:
            raise RuntimeError(f"rwkv.cpp could not load {path}")
        self.state_len = self.lib.rwkv_get_state_len(self.ctx)
        self.n_vocab = self.lib.rwkv_get_logits_len(self.ctx)

    def close(self):
        if self.ctx:
            self.lib.rwkv_free(self.ctx)
            self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def new_state(self):
        return np.zeros(self.state_len, np.float32)

    def eval(self, token: int, state_in, state_out, logits=True):
        """One token; returns the logits (or None with logits=False). state_in None = a fresh state."""
        out = np.empty(self.n_vocab, np.float32) if logits else None
        if not self.lib.rwkv_eval(self.ctx, int(token), _ptr(state_in), _ptr(state_out), _ptr(out)):
            raise RuntimeError("rwkv_eval failed")
        return out

    def eval_sequence(self, tokens, state_in, state_out, chunk: int = 16):
        """A sequence (in rwkv.cpp's chunks); returns the last token's logits."""
        toks = np.ascontiguousarray(tokens, dtype=np.uint32)
        out = np.empty(self.n_vocab, np.float32)
        if not self.lib.rwkv_eval_sequence_in_chunks(
            self.ctx,
            toks.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
            toks.size,
            chunk,
            _ptr(state_in),
            _ptr(state_out),
            _ptr(out),
        ):
            raise RuntimeError("rwkv_eval_sequence_in_chunks failed")
        return out
