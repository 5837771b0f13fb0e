"""Helpers shared by the loader tests: hand-built pickles and ZIP archives (so hostile files can
be crafted opcode by opcode), and torch-side reference loading."""

from __future__ import annotations

import struct
import zipfile

import numpy as np


# -- pickle opcodes, written by hand ----------------------------------------------------------


def S(s: str) -> bytes:  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def I(n: int) -> bytes:  # BININT, or LONG1 beyond 32 bits
    if -(1 << 31) <= n < (1 << 31):
        return b"J" + struct.pack("<i", n)
    nb = (n.bit_length() + 8) // 8
    return b"\x8a" + bytes([nb]) + n.to_bytes(nb, "little", signed=True)


def G(module: str, name: str) -> bytes:  # GLOBAL
    return b"c" + f"{module}\n{name}\n".encode()


def tup(*parts: bytes) -> bytes:  # MARK ... TUPLE
    return b"(" + b"".join(parts) + b"t"


def tensor_pkl(storage="FloatStorage", key="0", numel=4, offset=0, size=(4,), stride=(1,)) -> bytes:
    """The bytes torch writes for one tensor: REDUCE(_rebuild_tensor_v2, (PERSID(...), ...))."""
    pid = tup(S("storage"), G("torch", storage), S(key), S("cpu"), I(numel)) + b"Q"
    args = tup(
        pid,
        I(offset),
        tup(*map(I, size)),
        tup(*map(I, stride)),
        b"\x89",
        G("collections", "OrderedDict") + b")R",
    )
    return G("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def dict_pkl(items) -> bytes:
    """PROTO 2, EMPTY_DICT, MARK, key/value..., SETITEMS, STOP."""
    body = b"".join(S(k) + v for k, v in items)
    return b"\x80\x02}(" + body + b"u."


def write_zip(path, members, top="archive", compress=None, raw_names=False):
    """A torch-layout ZIP (STORED unless ``compress``); ``members`` maps names (under ``top``) to bytes."""
    with zipfile.ZipFile(path, "w", compression=compress or zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name if raw_names else f"{top}/{name}", data)


def write_pth(path, pkl: bytes, storages: dict, top="archive"):
    members = {"data.pkl": pkl, "byteorder": b"little", "version": b"3\n"}
    members.update({f"data/{k}": v for k, v in storages.items()})
    write_zip(path, members, top=top)


def write_zip64(path, members: dict, align=64):
    """A STORED ZIP archive in which *every* size and offset goes through ZIP64 (0xFFFFFFFF in the
    fixed fields, real values in the 0x0001 extra field) and a ZIP64 end record + locator is
    present, as for a > 4 GiB checkpoint. Member data is aligned to ``align`` by padding the local
    extra field (what torch's writer does)."""
    import zlib

    out = bytearray()
    central = bytearray()
    for name, data in members.items():
        nb = name.encode()
        off = len(out)
        crc = zlib.crc32(data)
        z64_local = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        base = off + 30 + len(nb) + len(z64_local)
        pad = (-(base + 4)) % align
        local_extra = z64_local + struct.pack("<HH", 0xCAFE, pad) + b"\0" * pad
        out += (
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                45,
                0,
                0,
                0,
                0,
                crc,
                0xFFFFFFFF,
                0xFFFFFFFF,
                len(nb),
                len(local_extra),
            )
            + nb
            + local_extra
            + data
        )
        z64 = struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                45,
                45,
                0,
                0,
                0,
                0,
                crc,
                0xFFFFFFFF,
                0xFFFFFFFF,
                len(nb),
                len(z64),
                0,
                0,
                0,
                0,
                0xFFFFFFFF,
            )
            + nb
            + z64
        )
    cd_off = len(out)
    out += central
    z64_eocd_off = len(out)
    n = len(members)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, z64_eocd_off, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(out)


def torch_to_np(t) -> np.ndarray:
    """A torch tensor as the NumPy array our readers return (bf16 -> uint16 raw bits)."""
    import torch

    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def torch_load_np(path, weights_only=True) -> dict:
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=weights_only)
    return {k: torch_to_np(v) for k, v in sd.items()}


def assert_same_arrays(ours: dict, ref: dict):
    assert list(ours) == list(ref)
    for k in ref:
        a, b = ours[k], ref[k]
        assert a.dtype == b.dtype, (k, a.dtype, b.dtype)
        assert a.shape == b.shape, (k, a.shape, b.shape)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), k


def mmap_backed(a) -> bool:
    """True when ``a``'s memory belongs to an mmap (following .base and memoryview.obj)."""
    import mmap

    base = a
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return False


def random_rwkv5_torch_sd(
    version="5.2",
    n_layer=2,
    n_embd=128,
    head_size=64,
    vocab=256,
    n_ffn=None,
    seed=0,
    time_first=False,
    time_state=False,
):
    """rwkv5.testing.random_state_dict as torch fp32 tensors in RWKV-LM file order (emb, the blocks,
    ln_out, head), plus random ``blocks.{i}.att.time_state`` (H, N, N) tensors when time_state."""
    import torch

    from rwkv5.testing import random_state_dict

    sd = random_state_dict(
        version,
        n_layer=n_layer,
        n_embd=n_embd,
        head_size=head_size,
        vocab_size=vocab,
        n_ffn=n_ffn,
        seed=seed,
        time_first=time_first,
    )
    if time_state:
        rng = np.random.default_rng(seed + 1)
        H, N = n_embd // head_size, head_size
        for i in range(n_layer):
            sd[f"blocks.{i}.att.time_state"] = (
                rng.standard_normal((H, N, N)).astype(np.float32) * 0.3
            )
    first, last = ["emb.weight"], ["ln_out.weight", "ln_out.bias", "head.weight"]
    order = first + [k for k in sd if k not in first and k not in last] + last
    return {k: torch.from_numpy(np.ascontiguousarray(sd[k], np.float32)) for k in order}
