"""safetensors read/write with our own code (no dependency on the ``safetensors`` package).

Why our own: the format is tiny — an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
then one raw little-endian data buffer — and reading it ourselves lets us (1) return
zero-copy NumPy views of one mmap of the file, including bfloat16 as uint16 bits, which the
package's NumPy API cannot express, and (2) validate strictly and say exactly what is wrong.
Compatibility with the package is tested in both directions (tests/test_safetensors.py).

Validation on read (everything the format requires):

* header length ≤ 100 MB and 8 + length ≤ file size; header is UTF-8 JSON, an object, with no
  duplicate keys;
* each tensor entry has exactly ``dtype``, ``shape``, ``data_offsets``; dtype is known;
  shape is a list of non-negative ints; ``prod(shape) * itemsize == end - begin``;
* offsets sorted by begin are contiguous from 0 with no overlap or hole, and the last end
  equals the data buffer's length (so every byte of the file belongs to exactly one tensor);
* ``__metadata__``, if present, maps str to str.

The writer writes a temporary file in the destination's folder, fsyncs it and renames it
over the destination, so a reader never sees a half-written file. Tensors are laid out by
decreasing item size (then name) and the header is padded with spaces to a multiple of 8,
so every tensor's data is aligned to its item size.
"""

from __future__ import annotations

import json
import os
import reprlib
import struct
import sys
import tempfile

import numpy as np

from ._files import map_or_read, open_regular

__all__ = ["read_safetensors", "write_safetensors", "SafetensorsFile", "DTYPES", "MAX_HEADER"]

MAX_HEADER = 100_000_000

# safetensors dtype -> NumPy dtype (BF16 is read as its raw uint16 bits)
DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_FROM_NUMPY = {
    np.dtype(v).newbyteorder("<") if v.itemsize > 1 else v: k
    for k, v in DTYPES.items()
    if k != "BF16"
}


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxdict, _repr.maxstring, _repr.maxother = 3, 8, 4, 60, 60


def _short(x) -> str:
    """repr bounded in depth and length, for header values quoted in errors (they may nest deep)."""
    return _repr.repr(x)


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r} in the JSON header")
        d[k] = v
    return d


class SafetensorsFile:
    """A validated safetensors file: ``tensors`` (name -> read-only ndarray view of the mmap),
    ``dtypes`` (name -> safetensors dtype string) and ``metadata`` (dict of str)."""

    def __init__(self, path, mmap: bool = True):
        self.path = os.fspath(path)
        with open_regular(self.path) as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ValueError(
                    f"{self.path}: {size} bytes is too short for a safetensors file (8-byte header length)"
                )
            (hlen,) = struct.unpack("<Q", f.read(8))
            if hlen > MAX_HEADER:
                raise ValueError(
                    f"{self.path}: safetensors header length {hlen} exceeds the {MAX_HEADER}-byte limit"
                )
            if 8 + hlen > size:
                raise ValueError(
                    f"{self.path}: safetensors header length {hlen} runs past the end of the "
                    f"{size}-byte file (truncated?)"
                )
            raw = f.read(hlen)
            self.mm = map_or_read(f, size, self.path, mmap) if size > 8 + hlen else None
        self.data_start = 8 + hlen
        data_len = size - self.data_start
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(
                f"{self.path}: safetensors header is not valid UTF-8 JSON: {e}"
            ) from None
        except RecursionError:
            raise ValueError(
                f"{self.path}: safetensors header nests JSON arrays/objects deeper than "
                f"this Python's recursion limit ({sys.getrecursionlimit()}); a tensor "
                "table is two levels deep"
            ) from None
        if not isinstance(header, dict):
            raise ValueError(
                f"{self.path}: safetensors header is a JSON {type(header).__name__}, expected an object"
            )
        meta = header.pop("__metadata__", None)
        if meta is None:
            meta = {}
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise ValueError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata = meta
        entries = []
        for name, e in header.items():
            where = f"{self.path}: tensor {name!r}"
            if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
                raise ValueError(
                    f"{where}: entry must be an object with exactly dtype, shape, data_offsets; "
                    f"got {_short(e)}"
                )
            dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
            if not isinstance(dt, str) or dt not in DTYPES:  # (a list or dict is unhashable)
                raise ValueError(
                    f"{where}: unknown dtype {_short(dt)} (known: {', '.join(DTYPES)})"
                )
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
                raise ValueError(
                    f"{where}: shape {_short(shape)} must be a list of non-negative integers"
                )
            if not (
                isinstance(offs, list)
                and len(offs) == 2
                and all(type(o) is int for o in offs)
                and 0 <= offs[0] <= offs[1]
            ):
                raise ValueError(
                    f"{where}: data_offsets {_short(offs)} must be [begin, end] with 0 <= begin <= end"
                )
            n = 1
            for d in shape:
                n *= d
            if n * DTYPES[dt].itemsize != offs[1] - offs[0]:
                raise ValueError(
                    f"{where}: shape {shape} x {dt} is {n * DTYPES[dt].itemsize} bytes but "
                    f"data_offsets {offs} span {offs[1] - offs[0]}"
                )
            entries.append((offs[0], offs[1], name, dt, shape, n))
        entries.sort(key=lambda t: (t[0], t[1]))
        pos = 0
        for begin, end, name, *_ in entries:
            if begin != pos:
                what = (
                    "overlaps the previous tensor"
                    if begin < pos
                    else f"leaves a hole [{pos}, {begin})"
                )
                raise ValueError(
                    f"{self.path}: tensor {name!r} at data_offsets [{begin}, {end}] {what}"
                )
            pos = end
        if pos != data_len:
            raise ValueError(
                f"{self.path}: tensors cover {pos} bytes but the data buffer has {data_len} "
                f"({'truncated file' if pos > data_len else 'trailing bytes'})"
            )
        self.tensors: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, str] = {}
        # Keep the header's order (the order the writer chose), not the offset order.
        order = {name: i for i, name in enumerate(header)}
        for begin, end, name, dt, shape, n in sorted(entries, key=lambda t: order[t[2]]):
            dtype = DTYPES[dt]
            if n == 0:
                arr = np.zeros(shape, dtype)
            else:
                start = self.data_start + begin
                arr = np.frombuffer(self.mm, dtype, n, start)
                if start % dtype.itemsize:
                    arr = arr.copy()  # misaligned (other writers): copy so kernels get aligned rows
                arr = arr.reshape(shape)
            self.tensors[name] = arr
            self.dtypes[name] = dt


def read_safetensors(path, mmap: bool = True):
    """Return ``(tensors, dtypes, metadata)``; see :class:`SafetensorsFile`. ``mmap=False`` reads the
    file into private memory instead of mapping it (the arrays are then views of that copy)."""
    f = SafetensorsFile(path, mmap=mmap)
    return f.tensors, f.dtypes, f.metadata


def write_safetensors(path, tensors, metadata=None, dtypes=None, first=()):
    """Write ``tensors`` (name -> ndarray) to ``path`` atomically.

    ``dtypes`` optionally names the safetensors dtype per tensor; it is needed only for bfloat16
    (``"BF16"``), which is passed as a uint16 array of raw bits. Other dtypes come from the
    array. ``metadata`` must map str to str. ``first``: names laid out first, in that order, with
    the data starting on a 64-byte boundary of the file (the header is padded for it): each of them
    starts 64-byte aligned while the ones before it have sizes that are multiples of 64.
    """
    path = os.fspath(path)
    dtypes = dict(dtypes or {})
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise TypeError("metadata must be a dict mapping str to str")
    unknown = set(dtypes) - set(tensors)
    if unknown:
        raise ValueError(f"dtypes names tensors that are not given: {sorted(unknown)}")
    items = []
    for name, a in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} is not allowed")
        a = np.asarray(a)
        dt = dtypes.get(name)
        if dt is None:
            key = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
            dt = _FROM_NUMPY.get(key)
            if dt is None:
                raise TypeError(f"tensor {name!r}: dtype {a.dtype} has no safetensors equivalent")
        elif dt not in DTYPES:
            raise ValueError(f"tensor {name!r}: unknown safetensors dtype {dt!r}")
        elif DTYPES[dt].kind != a.dtype.kind or DTYPES[dt].itemsize != a.dtype.itemsize:
            raise TypeError(
                f"tensor {name!r}: array dtype {a.dtype} does not match safetensors dtype {dt} "
                f"(expected {DTYPES[dt]})"
            )
        items.append((name, a, dt))
    rank = {name: i for i, name in enumerate(first)}
    if set(rank) - set(tensors):
        raise ValueError(
            f"first names tensors that are not given: {sorted(set(rank) - set(tensors))}"
        )
    items.sort(key=lambda t: (rank.get(t[0], len(rank)), -DTYPES[t[2]].itemsize, t[0]))
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    pos = 0
    for name, a, dt in items:
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * (-(8 + len(hb)) % (64 if first else 8))
    if len(hb) > MAX_HEADER:
        raise ValueError(
            f"safetensors header would be {len(hb)} bytes, above the {MAX_HEADER} limit"
        )
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for _name, a, _dt in items:
                a = np.ascontiguousarray(a)
                if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not _LITTLE):
                    a = a.astype(a.dtype.newbyteorder("<"))
                if a.nbytes:
                    f.write(memoryview(a.reshape(-1)).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return pos + 8 + len(hb)


_LITTLE = np.little_endian


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
