"""Opening checkpoint files: only regular files, then either mapped or read into private memory.

Every checkpoint reader opens its file through :func:`open_regular` and gets its bytes from
:func:`map_or_read`, so the two policies below hold for every format:

* Only a regular file is read. A FIFO opened for reading blocks until a writer appears (forever,
  from the caller's point of view), and a device such as ``/dev/zero`` never ends; both are
  refused with ``ValueError`` before a byte is read. The file is opened with ``O_NONBLOCK`` and
  checked with ``fstat``, so a FIFO swapped in after a ``stat`` cannot block the open either.
* ``mmap=True`` maps the file read-only: tensors are zero-copy views and only the pages used are
  resident. The catch: if the file is truncated on disk while mapped (a training run re-saving
  to the same path), touching a page past the new end raises SIGBUS, which kills the process.
  ``mmap=False`` reads the whole file into private anonymous memory (same API as the mapping, so
  the readers do not change) and closes it: nothing done to the file afterwards can affect the
  arrays.
"""

from __future__ import annotations

import mmap as _mmap
import os
import stat

__all__ = ["open_regular", "map_or_read"]

_READ_CHUNK = 64 << 20


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path, what="a checkpoint"):
    """Open ``path`` for binary reading; ``ValueError`` if it is anything but a regular file
    (checked before any read, without blocking on a FIFO). Missing files raise ``OSError``.
    ``what`` names the file's role in the message."""
    path = os.fspath(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: is {_kind(st.st_mode)}; {what} must be a regular file")
    fd = os.open(
        path,
        os.O_RDONLY
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0),
    )
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between the stat and the open
            raise ValueError(f"{path}: is {_kind(st.st_mode)}; {what} must be a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def map_or_read(f, size: int, path, mmap: bool = True):
    """The first ``size`` bytes of the open file ``f`` as an ``mmap.mmap``: a read-only map of the
    file (``mmap=True``), or an anonymous private mapping holding a copy (``mmap=False``). The
    caller may close ``f`` afterwards either way. ``size`` must be > 0."""
    if mmap:
        return _mmap.mmap(f.fileno(), size, access=_mmap.ACCESS_READ)
    buf = _mmap.mmap(-1, size)
    view = memoryview(buf)
    try:
        f.seek(0)
        pos = 0
        while pos < size:
            n = f.readinto(view[pos : min(size, pos + _READ_CHUNK)])
            if not n:
                raise ValueError(
                    f"{os.fspath(path)}: file shrank to {pos} bytes while being read "
                    f"(it had {size}); was it rewritten during the load?"
                )
            pos += n
    finally:
        view.release()
    return buf
