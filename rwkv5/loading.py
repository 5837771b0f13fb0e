"""``rwkv5.load``: open a checkpoint of any supported format and build a :class:`rwkv5.Model`.

Reading the file (format detection, Hugging Face names, state-tuning tensors, default GroupNorm
epsilon per format) is :mod:`rwkv5.formats.checkpoint`; its names are re-exported here.
"""

from __future__ import annotations

import numbers
import os

from . import storage
from .formats.checkpoint import (
    DEFAULT_GN_EPS,
    DTYPES,
    bf16_bits_to_f32,
    convert_array,
    f32_to_bf16_bits,
    read_checkpoint,
    sniff_format,
)
from .model import STORAGE_DTYPES, Model

__all__ = [
    "load",
    "read_checkpoint",
    "sniff_format",
    "convert_array",
    "f32_to_bf16_bits",
    "bf16_bits_to_f32",
    "DTYPES",
    "DEFAULT_GN_EPS",
]


#: what rwkv5.load accepts: None (as stored) and every storage type of the model's matrices (int8
#: is quantised at load, per output row)
LOAD_DTYPES = (None,) + STORAGE_DTYPES


def _check_dtype(dtype):
    if dtype not in LOAD_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(repr, LOAD_DTYPES))}; got {dtype!r}")


def load(path, dtype=None, gn_eps=None, layout="auto", mmap=True):
    """Load an RWKV-5 checkpoint (.pth, safetensors, rwkv.cpp .bin, or a folder of shards).

    >>> model = rwkv5.load("RWKV-5-World-0.4B-v2.pth", dtype="bf16")

    ``dtype``: storage type of the big matrices — None keeps the type the file holds (read
    from the file's mmap; see ``layout`` for when it is copied; the matrices of a quantised rwkv.cpp
    file, Q4_0 … Q8_0, are dequantized exactly to fp32; those of a file saved in the quantised form
    — ``rwkv5 convert --dtype int8|int4``, ``Model.save`` of an int8/int4 model — stay in that type
    and are mapped zero copy), "fp32", "bf16" or "fp16" converts, "int8" quantises the matrices
    symmetrically per output row (see ``rwkv5.model.quantize_int8``, all threads; the embedding is
    kept; a quantised file is used as stored), "int4" to 4 bits in groups of 32 with an fp16 scale
    each (``rwkv5.model.quantize_int4``, all threads; docs/formats.md). ``gn_eps``: GroupNorm epsilon;
    None means the format's default (64e-5 for .pth/safetensors, 1e-5 for rwkv.cpp).
    ``layout``: "auto" (default) stores the large matrices of every dtype (fp32 included) in the 4-row
    blocked layout that one-token decoding reads fastest (a copy made at load on all threads; the
    file's pages of a copied matrix are released from the process, so memory stays one copy),
    "rows" keeps them as in the file (zero copy: instant load, pages shared with other processes
    mapping the file, slower decoding), "blocked" is "auto"; see ``Model.from_state_dict``. When
    every large matrix ends up copied (converted, blocked or quantised), the embedding and the
    vectors are copied too, so the model keeps no view of the file and the file is unmapped once
    ``load`` returns. A quantised safetensors file (``rwkv5 convert --dtype int8``) is stored
    blocked already: it is mapped, not copied.

    ``mmap``: True (default) maps the file read-only; the model then reads the weights it did
    not copy straight from the mapping. **Risk**: if the file is truncated or rewritten in
    place while it is mapped (e.g. a training run calling ``torch.save`` on the same path, which
    truncates it first), the next read of a page past its new end kills the process with SIGBUS,
    which Python cannot catch. Writing the new file under another name and renaming it over the
    old one (``os.replace``) is safe: the mapping keeps the old file's data. ``mmap=False`` reads the whole file into private memory (its size in RAM, at
    load time) and closes it: nothing that later happens to the file can affect the model.
    Only regular files are read: a FIFO or a device raises ``ValueError`` before any read.

    ``path`` may be a URL (``s3://``, ``gs://``, ``hf://``, ``https://``, ...; needs the store's
    extra, e.g. ``pip install 'rwkv5[s3]'``): the object (or every object under a prefix, for a
    folder of shards) is copied to a temporary local folder in ranged reads, loaded from there as
    above, and the copy is removed when ``load`` returns (see ``rwkv5.storage.local_copy``).
    """
    if storage.is_url(path):
        with storage.local_copy(path) as local:
            return load(local, dtype=dtype, gn_eps=gn_eps, layout=layout, mmap=mmap)
    _check_dtype(dtype)
    if not isinstance(mmap, bool):
        raise TypeError(f"mmap must be True or False, got {mmap!r}")
    if gn_eps is not None and (
        isinstance(gn_eps, bool)
        or not isinstance(gn_eps, numbers.Real)
        or not (0 < float(gn_eps) < float("inf"))
    ):
        raise ValueError(f"gn_eps must be a positive finite number, got {gn_eps!r}")
    sd, info = read_checkpoint(path, mmap=mmap)
    eps = info["gn_eps"] if gn_eps is None else float(gn_eps)
    # Model.from_state_dict takes float32/float16/float64 or uint16 (= bf16 bits), which is the
    # convention every reader here follows, and converts to ``dtype`` itself.
    model = Model.from_state_dict(sd, gn_eps=eps, dtype=dtype, layout=layout)
    if info["time_state"] is not None:
        model._set_time_state(info["time_state"], where=os.fspath(path))
    return model
