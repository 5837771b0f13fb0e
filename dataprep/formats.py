"""Output formats: RWKV-LM binidx (docs/dataprep.md) and our zstd token shards (docs/zst-shards.md).

Each format has a writer, a reader that validates everything it reads, and is used by `verify`.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Iterator

import numpy as np

from . import _dataprep

# ----------------------------------------------------------------------------- binidx

IDX_MAGIC = b"MMIDIDX\x00\x00"
IDX_VERSION = 1
DTYPE_CODE_U16 = 8
_IDX_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, len, doc_count (34 bytes)


class FormatError(ValueError):
    """A file does not have the layout its format requires."""


def write_idx(path: str, sizes: np.ndarray) -> None:
    """Write a binidx .idx for items of the given token counts (uint16 items, one document each).

    Layout (all little-endian): magic, u64 version 1, u8 dtype code 8, u64 len, u64 doc_count,
    int32 sizes[len], int64 pointers[len] (byte offsets in .bin), int64 doc_idx = [0, 1, ..., len].
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size and (sizes.min() < 1 or sizes.max() > np.iinfo(np.int32).max):
        raise ValueError("sizes: every item must have 1..2**31-1 tokens")
    n = int(sizes.size)
    pointers = np.zeros(n, dtype="<i8")
    if n > 1:
        np.cumsum(sizes[:-1] * 2, out=pointers[1:])
    with open(path, "wb") as f:
        f.write(_IDX_HEADER.pack(IDX_MAGIC, IDX_VERSION, DTYPE_CODE_U16, n, n + 1))
        f.write(sizes.astype("<i4").tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(n + 1, dtype="<i8").tobytes())


def read_idx(path: str):
    """Read and validate a binidx .idx: returns (sizes int32, pointers int64, doc_idx int64)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _IDX_HEADER.size:
        raise FormatError(
            f"{path}: {len(data)} bytes, shorter than the {_IDX_HEADER.size}-byte binidx header"
        )
    magic, version, code, n, doc_count = _IDX_HEADER.unpack_from(data)
    if magic != IDX_MAGIC:
        raise FormatError(f"{path}: magic {magic!r}, expected {IDX_MAGIC!r}")
    if version != IDX_VERSION:
        raise FormatError(f"{path}: version {version}, expected {IDX_VERSION}")
    if code != DTYPE_CODE_U16:
        raise FormatError(f"{path}: dtype code {code}, expected {DTYPE_CODE_U16} (uint16)")
    want = _IDX_HEADER.size + 4 * n + 8 * n + 8 * doc_count
    if len(data) != want:
        raise FormatError(
            f"{path}: {len(data)} bytes, expected {want} for {n} items and {doc_count} doc_idx entries"
        )
    o = _IDX_HEADER.size
    sizes = np.frombuffer(data, "<i4", n, o)
    pointers = np.frombuffer(data, "<i8", n, o + 4 * n)
    doc_idx = np.frombuffer(data, "<i8", doc_count, o + 12 * n)
    return sizes, pointers, doc_idx


class BinIdx:
    """A binidx pair PREFIX.bin / PREFIX.idx, validated on open; doc i -> uint16 array (with its 0)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.sizes, self.pointers, self.doc_idx = read_idx(prefix + ".idx")
        n = len(self.sizes)
        if n and (self.sizes.min() < 0):
            raise FormatError(f"{prefix}.idx: negative item size")
        expect = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(self.sizes[:-1].astype(np.int64) * 2, out=expect[1:])
        if not np.array_equal(expect, self.pointers):
            raise FormatError(f"{prefix}.idx: pointers are not the running byte offsets of sizes")
        bin_size = os.path.getsize(prefix + ".bin")
        total = int(self.sizes.astype(np.int64).sum())
        if bin_size != 2 * total:
            raise FormatError(
                f"{prefix}.bin: {bin_size} bytes, the .idx says {2 * total} ({total} tokens)"
            )
        self.n_tokens = total
        self.tokens = (
            np.memmap(prefix + ".bin", dtype="<u2", mode="r") if total else np.zeros(0, "<u2")
        )

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self.sizes)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range (0..{n - 1})")
        i %= n
        start = int(self.pointers[i]) // 2
        return np.asarray(self.tokens[start : start + int(self.sizes[i])])

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]


# ----------------------------------------------------------------------------- zst shards

ZST_MAGIC = b"RWKV5ZST"
ZST_VERSION = 1
_ZST_HEADER = struct.Struct("<8sIIQQQQQI")  # 60 bytes + u32 crc32c = 64
ZST_HEADER_SIZE = 64
DEFAULT_FRAME_TOKENS = 1 << 20


def write_zst_shard(
    path: str,
    token_file: str,
    sizes: np.ndarray,
    n_vocab: int,
    level: int = 3,
    frame_tokens: int = DEFAULT_FRAME_TOKENS,
) -> None:
    """Compress the uint16 token stream in token_file (documents of the given sizes, back to back)
    into one zst shard at path (see docs/zst-shards.md)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    n_tokens = int(sizes.sum())
    if os.path.getsize(token_file) != 2 * n_tokens:
        raise ValueError(
            f"{token_file}: {os.path.getsize(token_file)} bytes, expected {2 * n_tokens}"
        )
    n_frames = (n_tokens + frame_tokens - 1) // frame_tokens
    frames = np.zeros((n_frames, 2), dtype="<u8")
    with open(path, "wb") as out, open(token_file, "rb") as src:
        out.write(b"\0" * ZST_HEADER_SIZE)
        off = ZST_HEADER_SIZE
        for i in range(n_frames):
            raw = src.read(2 * frame_tokens)
            comp = _dataprep.zstd_compress(raw, level)
            out.write(comp)
            frames[i] = (off, len(comp))
            off += len(comp)
        index_offset = off
        doc_offsets = np.zeros(len(sizes) + 1, dtype="<u8")
        np.cumsum(sizes, out=doc_offsets[1:])
        index = frames.tobytes() + doc_offsets.tobytes()
        out.write(index)
        out.write(struct.pack("<I", _dataprep.crc32c(index)))
        head = _ZST_HEADER.pack(
            ZST_MAGIC,
            ZST_VERSION,
            DTYPE_CODE_U16,
            len(sizes),
            n_tokens,
            n_frames,
            index_offset,
            frame_tokens,
            n_vocab,
        )
        out.seek(0)
        out.write(head + struct.pack("<I", _dataprep.crc32c(head)))


class ZstShard:
    """One zst shard, validated on open (header and index checksums, sizes); frames are
    decompressed (and their zstd checksums checked) as documents are read."""

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "rb")
        try:
            self._open()
        except BaseException:
            self._f.close()
            raise
        self._cache = (-1, None)

    def _open(self):
        path, f = self.path, self._f
        size = os.fstat(f.fileno()).st_size
        head = f.read(ZST_HEADER_SIZE)
        if len(head) < ZST_HEADER_SIZE:
            raise FormatError(
                f"{path}: {size} bytes, shorter than the {ZST_HEADER_SIZE}-byte header"
            )
        (magic, version, code, n_docs, n_tokens, n_frames, index_offset, frame_tokens, n_vocab) = (
            _ZST_HEADER.unpack_from(head)
        )
        (crc,) = struct.unpack_from("<I", head, 60)
        if magic != ZST_MAGIC:
            raise FormatError(f"{path}: magic {magic!r}, expected {ZST_MAGIC!r}")
        if version != ZST_VERSION:
            raise FormatError(f"{path}: version {version}, expected {ZST_VERSION}")
        if crc != _dataprep.crc32c(head[:60]):
            raise FormatError(f"{path}: header checksum mismatch")
        if code != DTYPE_CODE_U16 or frame_tokens < 1:
            raise FormatError(
                f"{path}: dtype code {code} / frame_tokens {frame_tokens} not supported"
            )
        if n_frames != (n_tokens + frame_tokens - 1) // frame_tokens:
            raise FormatError(
                f"{path}: {n_frames} frames cannot hold {n_tokens} tokens of {frame_tokens} per frame"
            )
        want = index_offset + 16 * n_frames + 8 * (n_docs + 1) + 4
        if size != want:
            raise FormatError(f"{path}: {size} bytes, expected {want} from the header counts")
        f.seek(index_offset)
        index = f.read(16 * n_frames + 8 * (n_docs + 1))
        (icrc,) = struct.unpack("<I", f.read(4))
        if icrc != _dataprep.crc32c(index):
            raise FormatError(f"{path}: index checksum mismatch")
        self.frames = (
            np.frombuffer(index, "<u8", 2 * n_frames).reshape(n_frames, 2).astype(np.int64)
        )
        self.doc_offsets = np.frombuffer(index, "<u8", n_docs + 1, 16 * n_frames).astype(np.int64)
        if (
            self.doc_offsets[0] != 0
            or self.doc_offsets[-1] != n_tokens
            or np.any(np.diff(self.doc_offsets) < 1)
        ):
            raise FormatError(f"{path}: document offsets are not increasing from 0 to {n_tokens}")
        ends = self.frames[:, 0] + self.frames[:, 1]
        if n_frames and (
            self.frames[0, 0] != ZST_HEADER_SIZE
            or ends[-1] != index_offset
            or np.any(self.frames[1:, 0] != ends[:-1])
        ):
            raise FormatError(
                f"{path}: frame table does not tile the bytes between header and index"
            )
        self.n_docs, self.n_tokens, self.n_vocab, self.frame_tokens = (
            n_docs,
            n_tokens,
            n_vocab,
            frame_tokens,
        )
        self.sizes = np.diff(self.doc_offsets)

    def frame(self, i: int) -> np.ndarray:
        if self._cache[0] == i:
            return self._cache[1]
        off, clen = self.frames[i]
        self._f.seek(int(off))
        comp = self._f.read(int(clen))
        n = min(self.frame_tokens, self.n_tokens - i * self.frame_tokens)
        try:
            raw = _dataprep.zstd_decompress(comp, 2 * n)
        except ValueError as e:
            raise FormatError(f"{self.path}: frame {i} at byte {off}: {e}") from None
        arr = np.frombuffer(raw, "<u2")
        self._cache = (i, arr)
        return arr

    def tokens(self, start: int, stop: int) -> np.ndarray:
        # Frames are decompressed (their sizes checked) before the result is allocated: the
        # header's counts alone must not make a tiny hostile file allocate a huge array.
        parts = []
        pos = start
        while pos < stop:
            fi = pos // self.frame_tokens
            fr = self.frame(fi)
            a = pos - fi * self.frame_tokens
            b = min(len(fr), stop - fi * self.frame_tokens)
            parts.append(fr[a:b])
            pos += b - a
        if not parts:
            return np.empty(0, dtype=np.uint16)
        return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()

    def __len__(self) -> int:
        return self.n_docs

    def __getitem__(self, i: int) -> np.ndarray:
        if not -self.n_docs <= i < self.n_docs:
            raise IndexError(f"document {i} out of range (0..{self.n_docs - 1})")
        i %= self.n_docs
        return self.tokens(int(self.doc_offsets[i]), int(self.doc_offsets[i + 1]))

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.n_docs):
            yield self[i]

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
