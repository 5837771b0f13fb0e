"""Object storage (S3, GCS, the Hugging Face hub, HTTP(S), any fsspec protocol) for the readers and
writers of rwkv5 and rwkv5-prep.

Local paths never come here: callers test ``is_url(path)`` first, and only a URL imports fsspec (an
optional dependency: ``pip install 'rwkv5[s3]'``, ``[gcs]``, ``[hf]``, ``[http]``). Everything that
talks to a store goes through ``retry``: transient failures (connection refused or reset, timeouts,
HTTP 5xx, throttling) are retried with exponential backoff and counted; a missing object or a
refused permission fails at once with one line naming the URL.

    >>> from rwkv5 import storage
    >>> storage.is_url("s3://bucket/corpus/a.jsonl"), storage.is_url("corpus/a.jsonl")
    (True, False)
    >>> with storage.open_read("s3://bucket/corpus/a.jsonl") as f:   # doctest: +SKIP
    ...     head = f.read(1 << 20)

Options: ``storage_options`` (a dict, merged over the defaults that ``set_default_options`` sets,
e.g. from the command line's ``--storage-option KEY=VALUE``) are passed to the fsspec filesystem;
the standard environment of each store (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``HF_TOKEN``, ...) is read by its own client.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import threading
import time

__all__ = [
    "StorageError",
    "is_url",
    "local_copy",
    "download",
    "parse_storage_options",
    "set_default_options",
    "filesystem",
    "open_read",
    "glob",
    "find",
    "exists",
    "isdir",
    "size",
    "info",
    "fingerprint",
    "cat",
    "retry",
    "retry_counts",
    "BLOCK_SIZE",
    "READ_AHEAD",
]

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

# protocol -> (the package fsspec needs for it, the extra of rwkv5 that installs it)
PROTOCOL_PACKAGES = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "hf": ("huggingface_hub", "hf"),
    "http": ("aiohttp", "http"),
    "https": ("aiohttp", "http"),
}

BLOCK_SIZE = 8 << 20  # bytes per ranged GET: large enough that per-request latency is amortized
READ_AHEAD = 2  # blocks fetched ahead of the reader by its fetch thread


class StorageError(OSError):
    """A one-line failure of an object-store operation that names the URL (the more specific
    FileNotFoundError / PermissionError are raised for a missing object / a refused access)."""


def is_url(path) -> bool:
    """True for ``scheme://...`` with a scheme other than ``file`` (a local path or a ``file://``
    URL is read by the local code, which never imports fsspec)."""
    if not isinstance(path, str):
        return False
    m = _URL.match(path)
    return m is not None and m.group(1).lower() != "file"


def local_path(path):
    """A ``file://`` URL as the local path it names; any other path unchanged."""
    if isinstance(path, str) and path[:7].lower() == "file://":
        return path[7:]
    return path


def protocol(url: str) -> str:
    m = _URL.match(url)
    return m.group(1).lower() if m else "file"


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_storage_options(items) -> dict:
    """``KEY=VALUE`` strings (``--storage-option``, repeatable) as a dict of fsspec options; values
    ``true``/``false``/``none``/integers/floats are parsed, anything else stays a string; a dotted
    KEY sets a nested option (``client_kwargs.region_name=eu-west-1``)."""
    out: dict = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--storage-option: expected KEY=VALUE, got {item!r}")
        d = out
        *parents, leaf = key.split(".")
        for p in parents:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ValueError(
                    f"--storage-option: {key!r} sets a field of {p!r}, which is a value"
                )
        d[leaf] = _parse_value(value)
    return out


_DEFAULT_OPTIONS: dict = {}


def set_default_options(options: dict) -> None:
    """The storage options used when a call passes none of its own (the CLI sets them from
    ``--storage-option``)."""
    global _DEFAULT_OPTIONS
    _DEFAULT_OPTIONS = dict(options or {})


def default_options() -> dict:
    return dict(_DEFAULT_OPTIONS)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _install_hint(proto: str) -> str:
    pkg, extra = PROTOCOL_PACKAGES.get(proto, (None, None))
    if extra:
        return f"pip install 'rwkv5[{extra}]' (or pip install {pkg})"
    return "pip install fsspec and the fsspec package for this protocol"


def filesystem(url: str, storage_options: dict = None):
    """``(fs, path)``: the fsspec filesystem for ``url`` and the path inside it. fsspec is imported
    here; when it or the protocol's package is missing, one StorageError naming the extra."""
    proto = protocol(url)
    try:
        import fsspec
        import fsspec.core
    except ImportError:
        raise StorageError(f"{url}: reading URLs needs fsspec: {_install_hint(proto)}") from None
    opts = _merge(_DEFAULT_OPTIONS, storage_options or {})
    if proto in ("s3", "s3a"):
        # one attempt per call inside s3fs and botocore: `retry` below does the retrying, so that
        # every retry is counted and backs off the same way on every store (an explicit option wins)
        opts = _merge({"config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}}}, opts)
    try:
        fs, path = fsspec.core.url_to_fs(url, **opts)
        if proto in ("s3", "s3a"):
            fs.retries = 1  # s3fs's own retry loop (a class attribute, default 5)
        return fs, path
    except ImportError as e:
        raise StorageError(
            f"{url}: the {proto}:// protocol needs a package that is not installed "
            f"({_one_line(e)}): {_install_hint(proto)}"
        ) from None
    except ValueError as e:
        if "protocol" in str(e).lower():
            raise StorageError(f"{url}: unknown protocol {proto}:// ({_one_line(e)})") from None
        raise StorageError(f"{url}: {_one_line(e)}") from None
    except TypeError as e:  # an option the filesystem does not take
        raise StorageError(f"{url}: bad storage option ({_one_line(e)})") from None


# ---- retries ---------------------------------------------------------------------------------

_counts_lock = threading.Lock()
_counts = {"retries": 0, "failures": 0}

# names of exception classes (anywhere in the cause chain) that mean "try again"
_TRANSIENT_NAMES = frozenset(
    (
        "ConnectionError",
        "ConnectionResetError",
        "ConnectionRefusedError",
        "ConnectionAbortedError",
        "BrokenPipeError",
        "TimeoutError",
        "IncompleteReadError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ResponseStreamingError",
        "ClientConnectorError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ClientPayloadError",
        "ServerTimeoutError",
        "IncompleteRead",
        "ProtocolError",
        "RemoteDisconnected",
    )
)
# error codes / phrases of the stores that mean "try again"
_TRANSIENT_TEXT = re.compile(
    r"SlowDown|Throttl|TooManyRequests|RequestTimeout|InternalError|"
    r"ServiceUnavailable|Service Unavailable|Bad Gateway|Gateway Timeout|"
    r"\b(429|500|502|503|504)\b|rateLimitExceeded|backendError"
)
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _chain(e):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_transient(e: BaseException) -> bool:
    """True when ``e`` (or an exception it was raised from) is a failure worth retrying."""
    if isinstance(e, _PERMANENT):
        return False
    for x in _chain(e):
        if isinstance(x, _PERMANENT):
            return False
        if type(x).__name__ in _TRANSIENT_NAMES or isinstance(x, (ConnectionError, TimeoutError)):
            return True
        status = getattr(x, "status", None) or getattr(x, "code", None)
        if isinstance(status, int) and (status == 429 or 500 <= status <= 599):
            return True
        resp = getattr(x, "response", None)
        if isinstance(resp, dict):
            code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int) and (code == 429 or 500 <= code <= 599):
                return True
        if _TRANSIENT_TEXT.search(str(x)):
            return True
    return False


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _named(e: BaseException, url: str, what: str) -> OSError:
    """``e`` as one line naming the URL, keeping FileNotFoundError / PermissionError."""
    if isinstance(e, FileNotFoundError):
        return FileNotFoundError(f"{url}: not found ({what}: {_one_line(e)})")
    if isinstance(e, PermissionError):
        return PermissionError(f"{url}: permission denied ({what}: {_one_line(e)})")
    return StorageError(f"{url}: {what} failed: {type(e).__name__}: {_one_line(e)}")


def _retry_settings():
    attempts = int(os.environ.get("RWKV5_STORAGE_RETRIES", "8"))
    base = float(os.environ.get("RWKV5_STORAGE_BACKOFF", "0.5"))
    return max(1, attempts), max(0.0, base)


def retry(fn, *args, url: str = "", what: str = "read", counter: dict = None, **kwargs):
    """``fn(*args, **kwargs)``, retried with exponential backoff (0.5 s doubling, at most 16 s
    between attempts; ``RWKV5_STORAGE_RETRIES`` attempts, default 8, ``RWKV5_STORAGE_BACKOFF`` the
    first delay) while it fails with a transient error. Every retry is counted in
    ``retry_counts()`` (and in ``counter["retries"]`` when given). A permanent error (not found,
    permission, bad request) or the last transient one raises an OSError naming ``url`` and
    ``what``."""
    attempts, delay = _retry_settings()
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 (classified below; anything else re-raised)
            if isinstance(e, StorageError):
                raise
            if not is_transient(e) or attempt == attempts:
                if is_transient(e):
                    with _counts_lock:
                        _counts["failures"] += 1
                    raise StorageError(
                        f"{url}: {what} failed after {attempts} attempts: "
                        f"{type(e).__name__}: {_one_line(e)}"
                    ) from None
                if isinstance(e, OSError) or type(e).__module__.split(".")[0] in (
                    "botocore",
                    "aiohttp",
                    "fsspec",
                    "s3fs",
                    "gcsfs",
                    "huggingface_hub",
                ):
                    raise _named(e, url, what) from None
                raise
            with _counts_lock:
                _counts["retries"] += 1
            if counter is not None:
                counter["retries"] = counter.get("retries", 0) + 1
            time.sleep(min(16.0, delay))
            delay *= 2


def retry_counts() -> dict:
    """``{"retries": N, "failures": M}`` of this process so far: transient errors retried, and
    operations that failed after the last attempt."""
    with _counts_lock:
        return dict(_counts)


def reset_retry_counts() -> None:
    with _counts_lock:
        _counts.update(retries=0, failures=0)


# ---- metadata and listing ----------------------------------------------------------------------


def info(url: str, storage_options: dict = None) -> dict:
    """The store's metadata of one object (``size``, ``type``, and an ETag / mtime when it has
    them)."""
    fs, path = filesystem(url, storage_options)
    return retry(fs.info, path, url=url, what="stat")


def size(url: str, storage_options: dict = None) -> int:
    return int(info(url, storage_options)["size"])


def fingerprint(url: str, storage_options: dict = None) -> dict:
    """What identifies one version of an object, for a manifest and the input-unchanged check:
    ``{"url", "bytes", "etag" and/or "mtime"}`` (whatever the store reports)."""
    meta = info(url, storage_options)
    out = {"url": url, "bytes": int(meta["size"])}
    for key in ("ETag", "etag", "md5Hash", "crc32c", "blob_id", "oid"):
        if meta.get(key):
            out["etag"] = str(meta[key]).strip('"')
            break
    for key in ("LastModified", "mtime", "updated", "last_modified", "last_commit"):
        v = meta.get(key)
        if v is not None and not isinstance(v, dict):
            out["mtime"] = v.isoformat() if hasattr(v, "isoformat") else str(v)
            break
    return out


def exists(url: str, storage_options: dict = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(retry(fs.exists, path, url=url, what="exists"))


def isdir(url: str, storage_options: dict = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(retry(fs.isdir, path, url=url, what="stat"))


def _urls(fs, url: str, paths) -> list:
    """Store paths back as URLs with the scheme of ``url`` (``s3a://`` stays ``s3a://``)."""
    proto = protocol(url)
    out = []
    for p in paths:
        u = fs.unstrip_protocol(p)
        if protocol(u) != proto and "://" in u:
            u = f"{proto}://{u.split('://', 1)[1]}"
        out.append(u)
    return sorted(out)


def glob(pattern: str, storage_options: dict = None) -> list:
    """The URLs of the objects matching ``pattern`` (``*``, ``?``, ``[...]``, ``**``), sorted."""
    fs, path = filesystem(pattern, storage_options)
    found = retry(fs.glob, path, url=pattern, what="list", detail=True)
    return _urls(fs, pattern, [p for p, meta in found.items() if meta.get("type") != "directory"])


def find(url: str, storage_options: dict = None) -> list:
    """The URLs of every object under the prefix ``url`` ("folder"), sorted."""
    fs, path = filesystem(url, storage_options)
    return _urls(fs, url, retry(fs.find, path, url=url, what="list"))


def cat(url: str, start: int = None, end: int = None, storage_options: dict = None) -> bytes:
    """Bytes ``start:end`` of an object (the whole object when both are None: for small ones)."""
    fs, path = filesystem(url, storage_options)
    return retry(fs.cat_file, path, start=start, end=end, url=url, what="read")


# ---- streamed reading --------------------------------------------------------------------------


class RangeReader(io.RawIOBase):
    """A read-only binary file over one object, read in ranged GETs of ``block_size`` bytes by a
    fetch thread that keeps ``read_ahead`` blocks ahead of the reader (so the network and the
    consumer, e.g. the tokenizer, overlap). At most ``read_ahead + 1`` blocks are in memory,
    never the whole object. Seekable: a seek outside the blocks at hand restarts the fetching at
    the new offset (pyarrow reads a Parquet footer and then its row groups this way).

    ``start``/``end`` restrict it to a byte range of the object (offsets stay those of the
    object); each GET is retried as ``retry`` says.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict = None,
        *,
        start: int = 0,
        end: int = None,
        block_size: int = None,
        read_ahead: int = None,
        counter: dict = None,
        size: int = None,
    ):
        super().__init__()
        self.url = url
        self._fs, self._path = filesystem(url, storage_options)
        self._size = (
            int(size)
            if size is not None
            else int(retry(self._fs.size, self._path, url=url, what="stat"))
        )
        self._end = self._size if end is None or end < 0 else min(int(end), self._size)
        self._start = max(0, min(int(start), self._end))
        self._block = max(1 << 12, int(BLOCK_SIZE if block_size is None else block_size))
        self._ahead = max(0, int(READ_AHEAD if read_ahead is None else read_ahead))
        self._counter = counter
        self._pos = self._start
        self._buf = b""  # the block at hand, covering [self._buf_at, self._buf_at + len)
        self._buf_at = self._start
        self._cond = threading.Condition()
        self._ready: dict = {}  # block offset -> bytes or an exception
        self._next_fetch = self._start
        self._expect = self._start
        self._gen = 0  # bumped on every restart: a stale fetch thread stops
        self._thread = None
        self._closed_flag = False

    # the fetch thread: GET blocks in order, at most read_ahead + 1 waiting
    def _fetch_loop(self, gen: int) -> None:
        while True:
            with self._cond:
                while (
                    gen == self._gen
                    and not self._closed_flag
                    and self._next_fetch < self._end
                    and len(self._ready) > self._ahead
                ):
                    self._cond.wait()
                if gen != self._gen or self._closed_flag or self._next_fetch >= self._end:
                    return
                at = self._next_fetch
                self._next_fetch = min(self._end, at + self._block)
                stop = self._next_fetch
            try:
                data = retry(
                    self._fs.cat_file,
                    self._path,
                    start=at,
                    end=stop,
                    url=self.url,
                    what=f"read of bytes {at}..{stop}",
                    counter=self._counter,
                )
                if len(data) != stop - at:
                    data = StorageError(
                        f"{self.url}: read of bytes {at}..{stop} returned {len(data)} bytes "
                        f"(the object changed or was truncated while being read)"
                    )
            except BaseException as e:  # handed to the reader, which raises it
                data = e
            with self._cond:
                if gen != self._gen:
                    return
                self._ready[at] = data
                self._cond.notify_all()
                if isinstance(data, BaseException):
                    return

    def _restart(self, at: int) -> None:
        """Drop what was fetched and start a fetch thread at block offset ``at``."""
        with self._cond:
            self._gen += 1
            self._ready.clear()
            self._next_fetch = at
            self._cond.notify_all()
        self._expect = at
        self._thread = threading.Thread(
            target=self._fetch_loop, args=(self._gen,), daemon=True, name="rwkv5-storage-fetch"
        )
        self._thread.start()

    def _next_block(self) -> bool:
        """Make the block holding self._pos the one at hand; False at the end."""
        if self._pos >= self._end:
            return False
        want = self._pos - (self._pos - self._start) % self._block
        if self._thread is None or want != self._expect:  # first read, or a seek: fetch from here
            self._restart(want)
        with self._cond:
            while want not in self._ready:
                self._cond.wait()
            data = self._ready.pop(want)
            self._cond.notify_all()
        if isinstance(data, BaseException):
            self._thread = None
            raise data
        self._buf, self._buf_at = data, want
        self._expect = want + len(data)
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._closed_flag:
            raise ValueError("I/O operation on closed file")
        mv = memoryview(b).cast("B")
        n = 0
        while n < len(mv) and self._pos < self._end:
            off = self._pos - self._buf_at
            if not self._buf or off < 0 or off >= len(self._buf):
                if not self._next_block():
                    break
                off = self._pos - self._buf_at
            k = min(len(mv) - n, len(self._buf) - off)
            mv[n : n + k] = self._buf[off : off + k]
            n += k
            self._pos += k
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._end - self._pos
        buf = bytearray(max(0, min(size, self._end - self._pos)))
        n = self.readinto(buf)
        return bytes(buf[:n])

    def readall(self) -> bytes:
        return self.read(-1)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + int(offset))
        return self._pos

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        with self._cond:
            self._closed_flag = True
            self._gen += 1
            self._ready.clear()
            self._cond.notify_all()
        self._buf = b""
        super().close()


def open_read(
    url: str,
    storage_options: dict = None,
    *,
    start: int = 0,
    end: int = None,
    block_size: int = None,
    read_ahead: int = None,
    counter: dict = None,
    size: int = None,
) -> RangeReader:
    """A binary file object reading ``url`` (optionally only bytes ``start:end``) in ranged reads
    of ``block_size`` (default BLOCK_SIZE) with ``read_ahead`` (default READ_AHEAD) blocks fetched
    ahead by a thread (``RangeReader``)."""
    return RangeReader(
        url,
        storage_options,
        start=start,
        end=end,
        block_size=block_size,
        read_ahead=read_ahead,
        counter=counter,
        size=size,
    )


def download(url: str, local: str, storage_options: dict = None) -> None:
    """Copy the object ``url`` into the local file ``local``, streamed in ranged reads (bounded
    memory, each read retried as ``retry`` says)."""
    with open_read(url, storage_options) as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


@contextlib.contextmanager
def local_copy(url: str, storage_options: dict = None):
    """A local copy of an object (or of every object under a prefix, keeping their relative names)
    in a temporary folder (``TMPDIR``), for readers that need a local file (a checkpoint that is
    memory-mapped): yields its local path; the folder is removed at the end (a mapping made
    meanwhile stays valid: the pages outlive the name)."""
    tmp = tempfile.mkdtemp(prefix="rwkv5-copy-")
    try:
        if isdir(url, storage_options):
            root = url.rstrip("/") + "/"
            for u in find(url, storage_options):
                dst = os.path.join(tmp, *u[len(root) :].split("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                download(u, dst, storage_options)
            yield tmp
        else:
            dst = os.path.join(tmp, url.rstrip("/").rsplit("/", 1)[-1] or "object")
            download(url, dst, storage_options)
            yield dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
