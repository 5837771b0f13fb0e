"""A strict, read-only ZIP reader for torch ``.pth`` archives, built on one mmap of the file.

Why not :mod:`zipfile`: we need the *absolute file offset* of each member's data so that a
tensor can be a zero-copy NumPy view of the mmap, and we want to refuse everything a torch
checkpoint never contains instead of handling it. What is accepted:

* one End Of Central Directory record (searched in the last 64 KiB + 22 bytes), optionally
  with a ZIP64 locator + ZIP64 EOCD record (files > 4 GiB or > 65535 members);
* central-directory entries whose ZIP64 extra field (id 0x0001) supplies the 64-bit
  sizes/offset that are 0xFFFFFFFF in the fixed fields;
* members that are STORED (method 0), not encrypted, with compressed size == size;
* names that are relative, use ``/``, contain no ``..``/``.`` component, backslash or NUL,
  and are unique.

Every offset and size is checked against the file: the local header must match its central
entry (name, method), a member's data must end before the central directory, and members
may not overlap (overlapping members are how "zip bombs" without compression are built).
A compressed member is refused — torch never compresses, and inflating is exactly where
decompression bombs live. CRC-32 is checked for small members (the pickle); for the big
storage members it is not, because checking it means reading every byte of a multi-GB
file at load time, defeating lazy mmap; ``verify_crc=True`` checks all of them.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from ._files import map_or_read, open_regular

__all__ = ["ZipMember", "StoredZip"]

_EOCD_SIG = 0x06054B50
_ZIP64_LOCATOR_SIG = 0x07064B50
_ZIP64_EOCD_SIG = 0x06064B50
_CENTRAL_SIG = 0x02014B50
_LOCAL_SIG = 0x04034B50

_EOCD = struct.Struct("<IHHHHIIH")  # 22 bytes
_ZIP64_LOCATOR = struct.Struct("<IIQI")  # 20 bytes
_ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes

# Members up to this size get their CRC checked even when verify_crc is False (the pickle,
# version files): cheap, and it catches a corrupted data.pkl before we interpret it.
_SMALL_MEMBER = 1 << 20


@dataclass(frozen=True)
class ZipMember:
    name: str
    data_offset: int  # absolute offset of the first data byte in the file
    size: int  # bytes of data (STORED: compressed size == size)
    crc32: int


class StoredZip:
    """Members of a STORED-only ZIP archive, addressed by name, backed by one read-only mmap.

    ``zf.data(name)`` returns a memoryview slice of the mmap (no copy). The mmap lives as long
    as this object or any NumPy array made from one of its slices. ``mmap=False`` reads the file
    into private memory instead of mapping it (see :mod:`._files`).
    """

    def __init__(self, path, verify_crc: bool = False, mmap: bool = True):
        self.path = os.fspath(path)
        with open_regular(self.path) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ValueError(f"{self.path}: empty file, expected a ZIP archive (torch .pth)")
            self.mm = map_or_read(f, size, self.path, mmap)
        self.size = size
        self.members: dict[str, ZipMember] = {}
        self._parse(verify_crc)

    # -- parsing ---------------------------------------------------------------------------

    def _err(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: invalid .pth ZIP archive: {what}")

    def _find_eocd(self) -> int:
        mm, size = self.mm, self.size
        if size < _EOCD.size:
            raise self._err(
                f"file is {size} bytes, shorter than an end-of-central-directory record (22)"
            )
        lo = max(0, size - (_EOCD.size + 0xFFFF))
        pos = size - _EOCD.size
        sig = struct.pack("<I", _EOCD_SIG)
        while pos >= lo:
            pos = mm.rfind(sig, lo, pos + 4)
            if pos < 0:
                break
            comment_len = struct.unpack_from("<H", mm, pos + 20)[0]
            if pos + _EOCD.size + comment_len == size:
                return pos
            pos -= 1
        raise self._err("no end-of-central-directory record (truncated file, or not a ZIP)")

    def _parse(self, verify_crc: bool) -> None:
        mm = self.mm
        eocd = self._find_eocd()
        (_, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _) = _EOCD.unpack_from(mm, eocd)
        if disk != 0 or cd_disk != 0 or n_disk != n_total:
            raise self._err("multi-disk archives are not supported")
        cd_end_limit = eocd
        loc = eocd - _ZIP64_LOCATOR.size
        if loc >= 0 and struct.unpack_from("<I", mm, loc)[0] == _ZIP64_LOCATOR_SIG:
            _, z_disk, z64_off, n_disks = _ZIP64_LOCATOR.unpack_from(mm, loc)
            if z_disk != 0 or n_disks != 1:
                raise self._err("multi-disk ZIP64 archives are not supported")
            if z64_off + _ZIP64_EOCD.size > loc:
                raise self._err(f"ZIP64 end record offset {z64_off} is out of range")
            (sig, _rec_size, _vm, _vn, disk, cd_disk, n_disk, n_total, cd_size, cd_offset) = (
                _ZIP64_EOCD.unpack_from(mm, z64_off)
            )
            if sig != _ZIP64_EOCD_SIG:
                raise self._err("ZIP64 locator does not point at a ZIP64 end record")
            if disk != 0 or cd_disk != 0 or n_disk != n_total:
                raise self._err("multi-disk archives are not supported")
            cd_end_limit = z64_off
        if cd_offset + cd_size > cd_end_limit:
            raise self._err(
                f"central directory [{cd_offset}, +{cd_size}) runs past its end record at {cd_end_limit}"
            )
        if n_total > cd_size // _CENTRAL.size:
            raise self._err(f"{n_total} entries cannot fit in a {cd_size}-byte central directory")

        pos = cd_offset
        spans = []
        for _ in range(n_total):
            if pos + _CENTRAL.size > cd_offset + cd_size:
                raise self._err("central directory entry runs past the directory")
            (
                sig,
                _vm,
                _vn,
                flags,
                method,
                _t,
                _d,
                crc,
                csize,
                usize,
                nlen,
                xlen,
                clen,
                disk_start,
                _ia,
                _ea,
                lho,
            ) = _CENTRAL.unpack_from(mm, pos)
            if sig != _CENTRAL_SIG:
                raise self._err(f"bad central directory signature at offset {pos}")
            end = pos + _CENTRAL.size + nlen + xlen + clen
            if end > cd_offset + cd_size:
                raise self._err("central directory entry runs past the directory")
            raw_name = bytes(mm[pos + _CENTRAL.size : pos + _CENTRAL.size + nlen])
            extra = bytes(mm[pos + _CENTRAL.size + nlen : pos + _CENTRAL.size + nlen + xlen])
            pos = end
            name = self._check_name(raw_name, flags)
            usize, csize, lho = self._zip64_fields(name, extra, usize, csize, lho, disk_start)
            if flags & 0x1:
                raise self._err(f"member {name!r} is encrypted")
            if method != 0:
                raise self._err(
                    f"member {name!r} is compressed (method {method}); only STORED members "
                    "are accepted (torch never compresses; compressed members can be zip bombs)"
                )
            if csize != usize:
                raise self._err(
                    f"STORED member {name!r} has compressed size {csize} != size {usize}"
                )
            if name in self.members:
                raise self._err(f"duplicate member name {name!r}")
            # Local header: same name and method; the data follows its name and extra field.
            if lho + _LOCAL.size > cd_offset:
                raise self._err(f"member {name!r}: local header offset {lho} is out of range")
            (lsig, _v, _lflags, lmethod, _t2, _d2, _crc2, _cs2, _us2, lnlen, lxlen) = (
                _LOCAL.unpack_from(mm, lho)
            )
            if lsig != _LOCAL_SIG:
                raise self._err(f"member {name!r}: bad local header signature at offset {lho}")
            if lmethod != method:
                raise self._err(
                    f"member {name!r}: local header method {lmethod} != central {method}"
                )
            data_offset = lho + _LOCAL.size + lnlen + lxlen
            if bytes(mm[lho + _LOCAL.size : lho + _LOCAL.size + lnlen]) != raw_name:
                raise self._err(
                    f"member {name!r}: local header name differs from the central directory"
                )
            if data_offset + usize > cd_offset:
                raise self._err(
                    f"member {name!r}: data [{data_offset}, +{usize}) runs past the start of the "
                    f"central directory at {cd_offset} (truncated or corrupt file)"
                )
            spans.append((lho, data_offset + usize, name))
            self.members[name] = ZipMember(name, data_offset, usize, crc)

        spans.sort()
        for (a0, a1, an), (b0, _b1, bn) in zip(spans, spans[1:]):
            if b0 < a1:
                raise self._err(f"members {an!r} and {bn!r} overlap")
        for m in self.members.values():
            if verify_crc or m.size <= _SMALL_MEMBER:
                self.check_crc(m.name)

    def _check_name(self, raw: bytes, flags: int) -> str:
        # Flag bit 11 says UTF-8; without it the name is CP437 (torch writes ASCII names).
        name = raw.decode("utf-8", errors="replace") if flags & 0x800 else raw.decode("cp437")
        parts = name.split("/")
        if (
            not name
            or name.startswith("/")
            or "\\" in name
            or "\x00" in name
            or any(p in ("..", ".") for p in parts)
            or (len(name) > 1 and name[1] == ":")
        ):
            raise self._err(
                f"member name {name!r} escapes the archive or is not a plain relative path"
            )
        return name

    def _zip64_fields(self, name, extra: bytes, usize, csize, lho, disk_start):
        need = [usize == 0xFFFFFFFF, csize == 0xFFFFFFFF, lho == 0xFFFFFFFF, disk_start == 0xFFFF]
        if any(need):
            p = 0
            z64 = None
            while p + 4 <= len(extra):
                hid, hlen = struct.unpack_from("<HH", extra, p)
                if p + 4 + hlen > len(extra):
                    raise self._err(f"member {name!r}: truncated extra field")
                if hid == 0x0001:
                    z64 = extra[p + 4 : p + 4 + hlen]
                    break
                p += 4 + hlen
            if z64 is None:
                raise self._err(
                    f"member {name!r}: sizes are 0xFFFFFFFF but there is no ZIP64 extra field"
                )
            q = 0
            vals = []
            for flag, width in zip(need, (8, 8, 8, 4)):
                if flag:
                    if q + width > len(z64):
                        raise self._err(f"member {name!r}: ZIP64 extra field too short")
                    vals.append(int.from_bytes(z64[q : q + width], "little"))
                    q += width
                else:
                    vals.append(None)
            usize = vals[0] if need[0] else usize
            csize = vals[1] if need[1] else csize
            lho = vals[2] if need[2] else lho
            disk_start = vals[3] if need[3] else disk_start
        if disk_start != 0:
            raise self._err(
                f"member {name!r} starts on disk {disk_start}; multi-disk archives are not supported"
            )
        return usize, csize, lho

    # -- access ----------------------------------------------------------------------------

    def check_crc(self, name: str) -> None:
        m = self.members[name]
        crc = 0
        step = 1 << 24
        for off in range(m.data_offset, m.data_offset + m.size, step):
            crc = zlib.crc32(self.mm[off : min(off + step, m.data_offset + m.size)], crc)
        if crc != m.crc32:
            raise self._err(
                f"member {name!r}: CRC-32 mismatch (stored {m.crc32:#010x}, computed {crc:#010x})"
            )

    def data(self, name: str) -> memoryview:
        m = self.members[name]
        return memoryview(self.mm)[m.data_offset : m.data_offset + m.size]

    def read(self, name: str) -> bytes:
        m = self.members[name]
        return bytes(self.mm[m.data_offset : m.data_offset + m.size])
