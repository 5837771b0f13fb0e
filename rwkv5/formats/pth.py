"""Read torch ``.pth`` state dicts without torch and without ``pickle.load``.

A modern ``torch.save`` file is a ZIP archive (see :mod:`.zipfile_reader`) holding
``<top>/data.pkl`` — a pickle describing the dict of tensors — and one raw little-endian
member ``<top>/data/<key>`` per storage. Unpickling is arbitrary code execution by design
(any ``GLOBAL`` + ``REDUCE`` calls any importable callable), so this module does not unpickle:
it *interprets* the few opcodes a state-dict pickle uses, on a private stack of plain
values, and knows exactly five callables by name. Nothing is imported or called on the
file's behalf; a name outside the allowlist stops the interpreter with ``ValueError`` at
the ``GLOBAL`` opcode itself.

Accepted opcodes (protocols 2–5): PROTO, FRAME, STOP, MARK, EMPTY_DICT, EMPTY_LIST,
EMPTY_TUPLE, TUPLE, TUPLE1/2/3, BINUNICODE, SHORT_BINUNICODE, BINUNICODE8, BININT, BININT1,
BININT2, LONG1, NEWTRUE, NEWFALSE, NONE, GLOBAL, STACK_GLOBAL, BINPERSID, REDUCE, BINPUT,
LONG_BINPUT, MEMOIZE, BINGET, LONG_BINGET, SETITEM, SETITEMS, APPEND, APPENDS.

Accepted globals: ``collections.OrderedDict`` (called with no arguments: an empty dict),
``torch._utils._rebuild_tensor_v2``, ``torch._utils._rebuild_parameter`` (returns its
tensor), and the storage types ``torch.FloatStorage`` / ``HalfStorage`` /
``BFloat16Storage`` / ``DoubleStorage``, which may only appear inside a persistent id
``('storage', <type>, key, location, numel)``.

Tensors: ``_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
backward_hooks[, metadata])``. A C-contiguous view is a zero-copy NumPy view of the file's
mmap (read-only). A non-contiguous one (e.g. a saved transpose) is materialised with
``as_strided`` + copy, because the C kernels need contiguous rows; the total bytes copied
this way are capped at the file size so that a hostile file of many views of one storage
cannot make us allocate more than the file itself. bfloat16 storages become ``uint16``
arrays holding the raw bf16 bits (NumPy has no bfloat16).
"""

from __future__ import annotations

import reprlib
import struct

import numpy as np

from ._files import open_regular
from .zipfile_reader import StoredZip

__all__ = ["read_pth", "PthFile", "STORAGE_DTYPES"]

# storage class name -> (NumPy dtype of one element, our dtype name)
STORAGE_DTYPES = {
    "FloatStorage": (np.dtype("<f4"), "fp32"),
    "HalfStorage": (np.dtype("<f2"), "fp16"),
    "BFloat16Storage": (np.dtype("<u2"), "bf16"),  # raw bf16 bits
    "DoubleStorage": (np.dtype("<f8"), "fp64"),
}

_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
} | {("torch", name) for name in STORAGE_DTYPES}

_MAX_PICKLE = 256 << 20  # a 7B state-dict pickle is ~100 KB; refuse absurd ones up front

# Objects the interpreter may build, in (estimated) bytes: 4 x the file's size, at least 16 MiB and
# never more than 256 MiB. A real checkpoint's pickle builds ~20 bytes of objects per pickle byte
# (~0.5 MB for 270 tensors) and its pickle is a tiny part of the file, so it stays far below this;
# a hostile pickle that is nearly the whole file (say 16 M EMPTY_DICT opcodes, 72 bytes of
# objects per byte) is stopped after a few times the file's size instead of growing to GBs.
_OBJ_BYTES_PER_FILE_BYTE = 4
_MIN_OBJ_BYTES = 16 << 20
_MAX_OBJ_BYTES = 256 << 20

# Estimated bytes each opcode adds (the object it creates plus its stack slot; 8 for the rest).
# Strings, tuples, SETITEMS/APPENDS and new memo keys add their size-dependent part where they run.
_OP_COST = [8] * 256
for _op, _cost in {
    0x28: 64,
    0x7D: 72,
    0x5D: 64,
    0x74: 48,
    0x85: 56,
    0x86: 64,
    0x87: 72,
    0x4A: 40,
    0x4B: 40,
    0x4D: 40,
    0x8A: 48,
    0x63: 72,
    0x93: 72,
    0x51: 128,
    0x52: 256,
}.items():
    _OP_COST[_op] = _cost
_MAX_DIM = 1 << 48  # any single shape/stride/offset beyond this is not a real tensor
_MAX_NDIM = 64


class _Mark:
    __slots__ = ()


_MARK = _Mark()


class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __repr__(self):
        return f"{self.module}.{self.name}"


class _Storage:
    """A persistent-id storage reference: dtype, key and numel, resolved against the zip."""

    __slots__ = ("dtype", "kind", "key", "numel", "member")

    def __init__(self, dtype, kind, key, numel, member):
        self.dtype, self.kind, self.key, self.numel, self.member = dtype, kind, key, numel, member


class PthFile:
    """A parsed .pth: ``state_dict`` (name -> ndarray) and ``kinds`` (name -> "fp32"/"fp16"/"bf16"/"fp64")."""

    def __init__(self, path, verify_crc: bool = False, mmap: bool = True):
        self.path = str(path)
        with open_regular(path) as f:
            head = f.read(4)
        if head[:1] == b"\x80":
            raise ValueError(
                f"{self.path}: legacy (pre-torch-1.6, non-ZIP) torch serialization is not "
                "supported; re-save it with a current torch.save"
            )
        if head != b"PK\x03\x04":
            raise ValueError(
                f"{self.path}: not a torch .pth ZIP archive (first bytes {head!r}, expected b'PK\\x03\\x04')"
            )
        self.zip = StoredZip(path, verify_crc=verify_crc, mmap=mmap)
        pkl = [n for n in self.zip.members if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError(
                f"{self.path}: expected exactly one '<folder>/data.pkl' member, found {len(pkl)}"
            )
        self.top = pkl[0][: -len("/data.pkl")]
        bo = self.top + "/byteorder"
        if bo in self.zip.members and self.zip.read(bo) != b"little":
            raise ValueError(
                f"{self.path}: byteorder {self.zip.read(bo)!r} is not supported (expected b'little')"
            )
        if self.zip.members[pkl[0]].size > _MAX_PICKLE:
            raise ValueError(
                f"{self.path}: data.pkl is {self.zip.members[pkl[0]].size} bytes, "
                f"more than the {_MAX_PICKLE} a state dict can need"
            )
        self._copy_budget = self.zip.size
        self.kinds: dict[str, str] = {}
        self.zero_copy: dict[str, bool] = {}
        obj = _Interpreter(self, self.zip.read(pkl[0])).run()
        if not isinstance(obj, dict):
            raise ValueError(
                f"{self.path}: the pickle's top object is a {type(obj).__name__}, expected a dict of tensors"
            )
        sd = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{self.path}: state-dict key {_short(k)} is not a string")
            if not isinstance(v, _Tensor):
                raise ValueError(
                    f"{self.path}: state-dict entry {k!r} is a {type(v).__name__}, expected a tensor"
                )
            sd[k] = v.array
            self.kinds[k] = v.kind
            self.zero_copy[k] = v.zero_copy
        self.state_dict = sd

    # -- tensor reconstruction -------------------------------------------------------------

    def storage(self, pid) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(
                f"{self.path}: persistent id {_short(pid)} is not ('storage', type, key, location, numel)"
            )
        _, typ, key, location, numel = pid
        if not (isinstance(typ, _Global) and typ.module == "torch" and typ.name in STORAGE_DTYPES):
            raise ValueError(
                f"{self.path}: storage type {_short(typ)} is not one of "
                f"{sorted('torch.' + n for n in STORAGE_DTYPES)}"
            )
        if not isinstance(key, str) or not key or "/" in key or key in (".", ".."):
            raise ValueError(f"{self.path}: storage key {_short(key)} is not a plain member name")
        if not isinstance(location, str):
            raise ValueError(f"{self.path}: storage location {_short(location)} is not a string")
        if not _is_int(numel) or numel < 0 or numel > _MAX_DIM:
            raise ValueError(f"{self.path}: storage {key!r} has invalid numel {_short(numel)}")
        dtype, kind = STORAGE_DTYPES[typ.name]
        name = f"{self.top}/data/{key}"
        member = self.zip.members.get(name)
        if member is None:
            raise ValueError(f"{self.path}: storage {key!r} has no member {name!r}")
        if numel * dtype.itemsize > member.size:
            raise ValueError(
                f"{self.path}: storage {key!r} declares {numel} elements of {dtype.itemsize} bytes "
                f"= {numel * dtype.itemsize} bytes but its member holds only {member.size} bytes"
            )
        return _Storage(dtype, kind, key, numel, member)

    def rebuild_tensor(self, args) -> "_Tensor":
        if not isinstance(args, tuple) or len(args) not in (6, 7):
            raise ValueError(
                f"{self.path}: _rebuild_tensor_v2 expects 6 or 7 arguments, got {_describe(args)}"
            )
        st, offset, size, stride, requires_grad, hooks = args[:6]
        if not isinstance(st, _Storage):
            raise ValueError(
                f"{self.path}: _rebuild_tensor_v2's first argument is {_describe(st)}, expected a storage"
            )
        if not isinstance(requires_grad, bool):
            raise ValueError(
                f"{self.path}: requires_grad is {_describe(requires_grad)}, expected a bool"
            )
        if not (isinstance(hooks, dict) and not hooks):
            raise ValueError(
                f"{self.path}: backward hooks must be an empty OrderedDict, got {_describe(hooks)}"
            )
        if len(args) == 7 and not isinstance(args[6], (dict, type(None))):
            raise ValueError(
                f"{self.path}: tensor metadata is {_describe(args[6])}, expected a dict"
            )
        where = f"{self.path}: tensor on storage {st.key!r}"
        if not _is_int(offset) or not 0 <= offset <= _MAX_DIM:
            raise ValueError(
                f"{where}: storage_offset {_short(offset)} is negative or out of range"
            )
        for nm, tup in (("size", size), ("stride", stride)):
            if (
                not isinstance(tup, tuple)
                or len(tup) > _MAX_NDIM
                or not all(_is_int(d) and 0 <= d <= _MAX_DIM for d in tup)
            ):
                raise ValueError(
                    f"{where}: {nm} {_short(tup)} must be a tuple of at most {_MAX_NDIM} "
                    f"integers in [0, 2**48]"
                )
        if len(size) != len(stride):
            raise ValueError(f"{where}: size {size} and stride {stride} have different lengths")
        numel = 1
        for d in size:
            numel *= d
        itemsize = st.dtype.itemsize
        base = st.member.data_offset
        if numel == 0:
            return _Tensor(np.zeros(size, st.dtype), st.kind, True)
        last = offset + sum((d - 1) * s for d, s in zip(size, stride))
        if last >= st.numel:
            raise ValueError(
                f"{where}: view (offset {offset}, size {size}, stride {stride}) reaches element "
                f"{last}, past the end of its {st.numel}-element storage"
            )
        if _is_c_contiguous(size, stride):
            start = base + offset * itemsize
            if start % itemsize:
                # A misaligned member (never written by torch, which aligns to 64): copy so the
                # kernels get aligned data.
                arr = np.frombuffer(self.zip.mm, st.dtype, numel, start).copy().reshape(size)
                return _Tensor(arr, st.kind, False)
            arr = np.frombuffer(self.zip.mm, st.dtype, numel, start).reshape(size)
            return _Tensor(arr, st.kind, True)
        # Non-contiguous (e.g. a transposed weight): materialise a C-contiguous copy.
        nbytes = numel * itemsize
        if nbytes > self._copy_budget:
            raise ValueError(
                f"{where}: materialising non-contiguous views would copy more bytes than the "
                f"file holds ({self.zip.size}); refusing (overlapping or broadcast views?)"
            )
        self._copy_budget -= nbytes
        flat = np.frombuffer(self.zip.mm, st.dtype, st.numel, base)
        if base % itemsize:
            flat = flat.copy()
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
        )
        return _Tensor(np.ascontiguousarray(view), st.kind, False)


class _Tensor:
    __slots__ = ("array", "kind", "zero_copy")

    def __init__(self, array, kind, zero_copy):
        self.array, self.kind, self.zero_copy = array, kind, zero_copy


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_c_contiguous(size, stride) -> bool:
    expect = 1
    for d, s in zip(reversed(size), reversed(stride)):
        if d != 1 and s != expect:
            return False
        expect *= d
    return True


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxtuple, _repr.maxstring, _repr.maxother = 3, 8, 60, 60


def _short(x) -> str:
    """repr bounded in depth and length: file content may nest tuples arbitrarily deep."""
    return _repr.repr(x)


def _describe(x) -> str:
    if isinstance(x, (_Global, _Mark)):
        return repr(x)
    r = repr(x) if isinstance(x, (int, str, bool, type(None))) else type(x).__name__
    return r if len(r) < 80 else r[:77] + "..."


class _Interpreter:
    """Executes the state-dict subset of pickle on plain Python values. See the module doc."""

    def __init__(self, owner: PthFile, data: bytes):
        self.owner = owner
        self.data = data
        self.pos = 0
        self.stack: list = []
        self.metastack: list = []
        self.memo: dict = {}
        zsize = owner.zip.size
        self.budget = min(_MAX_OBJ_BYTES, max(_MIN_OBJ_BYTES, _OBJ_BYTES_PER_FILE_BYTE * zsize))
        self.used = 0  # estimated bytes of the objects built so far (nothing is credited back)

    def _over_budget(self):
        return self._err(
            f"the pickle builds more than {self.budget} bytes of objects (the limit is "
            f"{_OBJ_BYTES_PER_FILE_BYTE} x the file's {self.owner.zip.size} bytes, at least "
            f"{_MIN_OBJ_BYTES} and at most {_MAX_OBJ_BYTES}); a state dict needs far less"
        )

    def _err(self, what):
        return ValueError(f"{self.owner.path}: data.pkl byte {self.pos}: {what}")

    def _take(self, n):
        if self.pos + n > len(self.data):
            raise self._err(f"truncated pickle (needs {n} more bytes)")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def _line(self):
        end = self.data.find(b"\n", self.pos, self.pos + 256)
        if end < 0:
            raise self._err("unterminated GLOBAL name")
        b = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return b.decode("ascii")
        except UnicodeDecodeError:
            raise self._err(f"non-ASCII GLOBAL name {b!r}") from None

    def _pop(self):
        if not self.stack:
            raise self._err("stack underflow")
        return self.stack.pop()

    def _pop_mark(self):
        if not self.metastack:
            raise self._err("no MARK on the stack")
        items = self.stack
        self.stack = self.metastack.pop()
        for x in items:
            if x is _MARK:
                raise self._err("unexpected MARK")
        return items

    def _global(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise self._err(
                f"refusing global {module}.{name}: only "
                f"{', '.join(sorted(m + '.' + n for m, n in _ALLOWED_GLOBALS))} are allowed"
            )
        self.stack.append(_Global(module, name))

    def _charge(self, n):
        self.used += n
        if self.used > self.budget:
            raise self._over_budget()

    def _string(self, n):
        b = self._take(n)
        self._charge(n + 80)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise self._err("invalid UTF-8 in a string") from None

    def run(self):
        u = struct.unpack_from
        cost = _OP_COST
        while True:
            if self.pos >= len(self.data):
                raise self._err("truncated pickle (no STOP)")
            op = self.data[self.pos]
            self.used += cost[op]
            if self.used > self.budget:
                raise self._over_budget()
            self.pos += 1
            if op == 0x80:  # PROTO
                proto = self._take(1)[0]
                if not 2 <= proto <= 5:
                    raise self._err(f"pickle protocol {proto} is not supported (2..5)")
            elif op == 0x95:  # FRAME (length is advisory)
                self._take(8)
            elif op == 0x2E:  # STOP
                if len(self.stack) != 1 or self.metastack:
                    raise self._err("STOP with a malformed stack")
                return self.stack[0]
            elif op == 0x28:  # MARK
                self.metastack.append(self.stack)
                self.stack = []
            elif op == 0x7D:  # EMPTY_DICT
                self.stack.append({})
            elif op == 0x5D:  # EMPTY_LIST
                self.stack.append([])
            elif op == 0x29:  # EMPTY_TUPLE
                self.stack.append(())
            elif op == 0x74:  # TUPLE
                items = tuple(self._pop_mark())  # (evaluate before self.stack is rebound)
                self._charge(8 * len(items))
                self.stack.append(items)
            elif op in (0x85, 0x86, 0x87):  # TUPLE1/2/3
                n = op - 0x84
                if len(self.stack) < n:
                    raise self._err("stack underflow")
                items = self.stack[-n:]
                if any(x is _MARK for x in items):
                    raise self._err("unexpected MARK")
                del self.stack[-n:]
                self.stack.append(tuple(items))
            elif op == 0x58:  # BINUNICODE
                self.stack.append(self._string(u("<I", self._take(4))[0]))
            elif op == 0x8C:  # SHORT_BINUNICODE
                self.stack.append(self._string(self._take(1)[0]))
            elif op == 0x8D:  # BINUNICODE8
                self.stack.append(self._string(u("<Q", self._take(8))[0]))
            elif op == 0x4A:  # BININT
                self.stack.append(u("<i", self._take(4))[0])
            elif op == 0x4B:  # BININT1
                self.stack.append(self._take(1)[0])
            elif op == 0x4D:  # BININT2
                self.stack.append(u("<H", self._take(2))[0])
            elif op == 0x8A:  # LONG1
                n = self._take(1)[0]
                if n > 9:
                    raise self._err(f"LONG1 of {n} bytes is larger than any tensor size")
                self.stack.append(int.from_bytes(self._take(n), "little", signed=True))
            elif op == 0x88:  # NEWTRUE
                self.stack.append(True)
            elif op == 0x89:  # NEWFALSE
                self.stack.append(False)
            elif op == 0x4E:  # NONE
                self.stack.append(None)
            elif op == 0x63:  # GLOBAL
                module = self._line()
                name = self._line()
                self._global(module, name)
            elif op == 0x93:  # STACK_GLOBAL
                name = self._pop()
                module = self._pop()
                if not (isinstance(module, str) and isinstance(name, str)):
                    raise self._err("STACK_GLOBAL needs two strings")
                self._global(module, name)
            elif op == 0x51:  # BINPERSID
                self.stack.append(self.owner.storage(self._pop()))
            elif op == 0x52:  # REDUCE
                args = self._pop()
                func = self._pop()
                self.stack.append(self._reduce(func, args))
            elif op == 0x71:  # BINPUT
                self._put(self._take(1)[0])
            elif op == 0x72:  # LONG_BINPUT
                self._put(u("<I", self._take(4))[0])
            elif op == 0x94:  # MEMOIZE
                self._put(len(self.memo))
            elif op == 0x68:  # BINGET
                self._get(self._take(1)[0])
            elif op == 0x6A:  # LONG_BINGET
                self._get(u("<I", self._take(4))[0])
            elif op == 0x73:  # SETITEM
                value = self._pop()
                key = self._pop()
                self._setitems(self._top(), [key, value])
            elif op == 0x75:  # SETITEMS
                items = self._pop_mark()
                self._charge(24 * len(items))  # ~48 bytes of dict per key/value pair
                self._setitems(self._top(), items)
            elif op == 0x61:  # APPEND
                value = self._pop()
                self._appends(self._top(), [value])
            elif op == 0x65:  # APPENDS
                items = self._pop_mark()
                self._charge(8 * len(items))
                self._appends(self._top(), items)
            else:
                raise self._err(
                    f"refusing pickle opcode {bytes([op])!r} (0x{op:02x}): not used by a torch state dict"
                )

    def _top(self):
        if not self.stack:
            raise self._err("stack underflow")
        return self.stack[-1]

    def _put(self, idx):
        if not self.stack:
            raise self._err("stack underflow")
        if self.stack[-1] is _MARK:
            raise self._err("cannot memoize a MARK")
        if idx not in self.memo:
            self._charge(104)  # a dict entry and its int key
        self.memo[idx] = self.stack[-1]

    def _get(self, idx):
        if idx not in self.memo:
            raise self._err(f"memo key {idx} was never stored")
        self.stack.append(self.memo[idx])

    def _setitems(self, target, items):
        if not isinstance(target, dict):
            raise self._err(f"SETITEM(S) on a {_describe(target)}, expected a dict")
        if len(items) % 2:
            raise self._err("SETITEMS with an odd number of items")
        for k, v in zip(items[::2], items[1::2]):
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise self._err(f"dict key {_describe(k)} is not a string")
            target[k] = v

    def _appends(self, target, items):
        if not isinstance(target, list):
            raise self._err(f"APPEND(S) on a {_describe(target)}, expected a list")
        target.extend(items)

    def _reduce(self, func, args):
        if not isinstance(func, _Global):
            raise self._err(f"REDUCE on {_describe(func)}, which is not an allowlisted callable")
        if not isinstance(args, tuple):
            raise self._err(f"REDUCE arguments are {_describe(args)}, expected a tuple")
        key = (func.module, func.name)
        if key == ("collections", "OrderedDict"):
            if args:
                raise self._err("collections.OrderedDict called with arguments")
            return {}
        if key == ("torch._utils", "_rebuild_tensor_v2"):
            return self.owner.rebuild_tensor(args)
        if key == ("torch._utils", "_rebuild_parameter"):
            if (
                len(args) != 3
                or not isinstance(args[0], _Tensor)
                or not isinstance(args[1], bool)
                or not (isinstance(args[2], dict) and not args[2])
            ):
                raise self._err("_rebuild_parameter expects (tensor, requires_grad, empty hooks)")
            return args[0]
        raise self._err(
            f"REDUCE on {func!r}, which is not a callable (storage types are only valid in persistent ids)"
        )


def read_pth(path, verify_crc: bool = False, mmap: bool = True):
    """Read a torch.save'd flat state dict. Returns ``(state_dict, kinds)``.

    ``state_dict`` maps names to NumPy arrays (bf16 as uint16 raw bits); ``kinds`` maps names
    to "fp32"/"fp16"/"bf16"/"fp64". Contiguous tensors are read-only views of an mmap of the
    file (the mmap stays open while any array refers to it); with ``mmap=False`` they are views
    of a private copy of the file, which is closed on return.
    """
    f = PthFile(path, verify_crc=verify_crc, mmap=mmap)
    return f.state_dict, f.kinds
