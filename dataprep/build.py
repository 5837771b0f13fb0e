"""The corpus -> shards pipeline: plan tasks -> run each task -> merge on the driver.

* plan_tasks(inputs, options): the sorted input list cut into tasks (whole files, and byte ranges
  of large .jsonl files cut right after a newline). Task ids follow the sorted input list, so
  names and contents never depend on the number of workers or on the engine.
* run_task(task, options, workdir, n_threads) (tasks.py, shared with the engines): tokenize one
  task into its part files and completion record; picklable, runs in any Executor.
* merge(...): dedup, epochs/shuffle, sharding, binidx/zst writing, manifest — on the driver.

Nothing is ever written under a final name except by rename from a complete temporary file; a
build holds an exclusive lock on PREFIX.work/ and publishes its set in the order sets.publish
gives (old manifest out, stale files out, new files in, new manifest last). An --out URL, or a
work area on an object store, goes through remote.py: the build runs against a local staging
folder, mirrors its task records to the store, and uploads the set in the same order.
"""

from __future__ import annotations

import glob as _glob
import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Sequence

import numpy as np

from .. import storage
from . import _dataprep, columnar, remote
from .formats import sha256_file, write_idx, write_zst_shard
from .errors import DataprepError, printable_path
from .mixing import MIX_DEFAULTS, check_mix_options, mixing, plan_mix
from .remote import publish_set
from .tasks import (  # noqa: F401 (re-exported for the engines and tests)
    MAX_WORKERS,
    VOCAB_NAME,
    _int_option,
    _task_stem,
    _write_json_atomic,
    check_workers,
    collect_resumed,
    default_vocab,
    default_vocab_path,
    finish_task,
    load_done,
    load_tokenizer,
    run_task,
    tokenize_task,
)

META_DTYPE = np.dtype(
    [
        ("n_bytes", "<u8"),
        ("h1", "<u8"),
        ("h2", "<u8"),
        ("n_tokens", "<u4"),
        ("lang", "<u2"),
        ("script", "u1"),
        ("repaired", "u1"),
    ]
)
assert META_DTYPE.itemsize == _dataprep.META_RECORD_SIZE
SCRIPT_NAMES = _dataprep.SCRIPT_NAMES
PLAN_VERSION = 2
MAX_LISTED = 100
LANG_MAX = _dataprep.LANG_MAX  # bytes of UTF-8 kept of a language tag


# ----------------------------------------------------------------------------- tokenizer

# ----------------------------------------------------------------------------- inputs and plan

# Parquet and Arrow IPC files are told by their magic bytes (columnar.sniff); folders are searched
# for these names, and a folder written by datasets' save_to_disk is read as the files its
# state.json lists
COLUMNAR_SUFFIXES = (".parquet", ".arrow")
# An input is a codec around a record format; both tables live in C (dataprep.h) and are read
# here, never copied: CODECS[name] = {"name", "suffix", "magic"}, RECORD_FORMATS[name] = {"name",
# "json", "splittable"}.
CODECS = {c["name"]: c for c in _dataprep.CODECS}
RECORD_FORMATS = {f["name"]: f for f in _dataprep.RECORD_FORMATS}
# File-name suffixes of the record formats (before the codec's suffix, if any): (suffix, format,
# picked up by a folder search). "txt" is read as txt-file or txt-blank by --txt-mode. Plain .json
# is read only when named explicitly (a folder may hold our own manifests), and so is a bare
# compressed file (.zst alone: a folder may hold our own zst shards), which is read as JSON lines.
RECORD_SUFFIXES = (
    (".jsonl", "jsonl", True),
    (".ndjson", "jsonl", True),
    (".json", "jsonl", False),
    (".txt", "txt", True),
)
# a folder search picks up every record suffix marked True, plain or compressed, and compressed .json
# (.json.gz: MADLAD-400, mC4)
_FOLDER_SUFFIXES = (
    tuple(
        rs + c["suffix"]
        for rs, _, folder in RECORD_SUFFIXES
        for c in sorted(CODECS.values(), key=lambda c: c["suffix"], reverse=True)
        if folder or c["suffix"]
    )
    + COLUMNAR_SUFFIXES
)


def read_head(path: str, storage_options: dict = None) -> bytes:
    """The first bytes of a file (or object), as many as codec detection looks at."""
    if storage.is_url(path):
        return storage.cat(path, 0, _dataprep.CODEC_HEAD, storage_options=storage_options)
    with open(path, "rb") as f:
        return f.read(_dataprep.CODEC_HEAD)


def input_type(path: str, txt_mode: str, head: bytes = None) -> tuple:
    """(record format, codec) of an input file: the codec from the magic bytes at the start of the
    file (head) when they are a codec's, else from the name; the record format from the name
    without the codec's suffix. DataprepError for a type we do not read."""
    p = path.lower()
    codec = "plain"
    for c in CODECS.values():
        if c["suffix"] and p.endswith(c["suffix"]):
            codec, p = c["name"], p[: -len(c["suffix"])]
            break
    if head is not None:
        codec = _dataprep.detect_codec(head) or codec
    for suffix, fmt, _ in RECORD_SUFFIXES:
        if p.endswith(suffix):
            break
    else:
        if codec == "plain":
            codec_suffixes = ", ".join(c["suffix"] for c in CODECS.values() if c["suffix"])
            raise DataprepError(
                f"{path}: unsupported input type (expected "
                f"{', '.join(s for s, _, _ in RECORD_SUFFIXES)}, each optionally compressed: "
                f"{codec_suffixes}; or .parquet, .arrow)"
            )
        fmt = "jsonl"
    if fmt == "txt":
        fmt = "txt-file" if txt_mode == "file" else "txt-blank"
    return fmt, codec


def _check_utf8_name(path: str, what: str) -> None:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise DataprepError(
            f"{what} {printable_path(path)}: the name is not valid UTF-8 (the manifest records "
            f"names as UTF-8 text); rename it"
        ) from None


def _expand_url(arg: str, storage_options: dict, ours, unread: list) -> list:
    """One URL input: an object, a glob over objects, or a prefix ("folder") searched for the
    suffixes _FOLDER_SUFFIXES lists (the other objects under it go to `unread`)."""
    if any(c in arg.split("://", 1)[1] for c in "*?["):
        hits = [h for h in storage.glob(arg, storage_options) if not ours(h)]
        if not hits:
            raise DataprepError(f"input {arg!r}: the pattern matches no object")
        return hits
    if storage.isdir(arg, storage_options):
        out = []
        for u in storage.find(arg, storage_options):
            if ours(u) or u.rsplit("/", 1)[-1] == columnar.DATASET_DICT_META:
                continue
            if u.lower().endswith(_FOLDER_SUFFIXES):
                out.append(u)
            elif unread is not None:
                unread.append(u)
        return out
    if not storage.exists(arg, storage_options):
        raise DataprepError(f"input {arg}: no such object or prefix")
    return [arg]


def expand_inputs(
    inputs, exclude_prefix: str = None, unread: list = None, storage_options: dict = None
) -> list:
    """Files, globs and folders -> sorted unique real paths (symlinks resolved, a file reached by
    two paths read once). Folders are searched recursively, following symlinked folders and never
    entering one twice (loops), for the suffixes _FOLDER_SUFFIXES lists; every other file found there
    is appended to `unread` (when given) so the caller can report it. Folder and glob hits that
    belong to the output set (exclude_prefix*, its work folder) are left out. A single str or
    path is one input. URLs (s3://, gs://, hf://, https://, ...; rwkv5/storage.py) name an object,
    a glob over objects or a prefix searched like a folder; they are kept as given."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    out = set()
    prefixes = []
    if exclude_prefix is not None:
        prefixes = sorted({os.path.abspath(exclude_prefix), os.path.realpath(exclude_prefix)})
    ours_res = [
        re.compile(re.escape(x) + r"(_\d{5})?\.(bin|idx|zst|manifest\.json)$") for x in prefixes
    ]

    def ours(path):
        if storage.is_url(path) or storage.is_url(exclude_prefix):
            return exclude_prefix is not None and (
                re.match(
                    re.escape(str(exclude_prefix)) + r"(_\d{5})?\.(bin|idx|zst|manifest\.json)$",
                    path,
                )
                is not None
                or path.startswith(str(exclude_prefix) + ".work/")
            )
        for p in {os.path.abspath(path), os.path.realpath(path)}:
            for x, rx in zip(prefixes, ours_res):
                if rx.match(p) or p.startswith(x + ".work" + os.sep):
                    return True
        return False

    def add(path):
        real = os.path.realpath(path)
        _check_utf8_name(real, "input")
        out.add(real)

    for arg in inputs:
        arg = os.fsdecode(os.fspath(arg))
        if arg == "":
            raise DataprepError("input '': an empty path")
        if storage.is_url(arg):
            for u in _expand_url(arg, storage_options, ours, unread):
                _check_utf8_name(u, "input")
                out.add(u)
            continue
        arg = storage.local_path(arg)
        if os.path.isdir(arg):
            visited = {(st.st_dev, st.st_ino) for st in [os.stat(arg)]}
            for root, dirs, files in os.walk(arg, followlinks=True):
                keep = []
                for d in sorted(dirs):
                    try:
                        st = os.stat(os.path.join(root, d))
                    except OSError:
                        continue  # a dangling symlink: nothing to read
                    if (
                        st.st_dev,
                        st.st_ino,
                    ) not in visited:  # a symlink loop, or a folder seen already
                        visited.add((st.st_dev, st.st_ino))
                        keep.append(d)
                dirs[:] = keep
                saved = columnar.saved_dataset_files(root, files)
                if saved is not None:  # a datasets save_to_disk folder: its listed data files
                    for p in saved[0]:
                        if not ours(p):
                            add(p)
                    files = [
                        f
                        for f in files
                        if f not in saved[1] and os.path.join(root, f) not in saved[0]
                    ]
                for name in sorted(files):
                    p = os.path.join(root, name)
                    if ours(p):
                        continue
                    if name == columnar.DATASET_DICT_META:
                        continue
                    if name.lower().endswith(_FOLDER_SUFFIXES) and os.path.isfile(p):
                        add(p)
                    elif unread is not None:
                        unread.append(printable_path(os.path.abspath(p)))
        elif os.path.isfile(arg):
            add(arg)
        elif any(c in arg for c in "*?["):
            hits = [h for h in _glob.glob(arg, recursive=True) if os.path.isfile(h) and not ours(h)]
            if not hits:
                raise DataprepError(f"input {printable_path(arg)!r}: the pattern matches no file")
            for h in hits:
                add(h)
        else:
            raise DataprepError(f"input {printable_path(arg)!r}: no such file or folder")
    if not out:
        raise DataprepError(
            "no input files (folders are searched for " + ", ".join(_FOLDER_SUFFIXES) + ")"
        )
    return sorted(out)


class _ObjectSeeker:
    """seek/read over an object by ranged reads (for _cut_points, which reads a little at each cut)."""

    def __init__(self, url: str, storage_options: dict):
        self.url, self.opts, self.pos = url, storage_options, 0

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int) -> bytes:
        data = storage.cat(self.url, self.pos, self.pos + n, storage_options=self.opts)
        self.pos += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _cut_points(path: str, size: int, task_size: int, storage_options: dict = None) -> list:
    """Byte offsets that split a text file into ranges of about task_size, each cut right after a
    newline (so every range holds whole lines)."""
    cuts = [0]
    with _ObjectSeeker(path, storage_options) if storage.is_url(path) else open(path, "rb") as f:
        target = task_size
        while target < size:
            f.seek(target)
            pos = target
            while True:
                buf = f.read(1 << 16)
                if not buf:
                    pos = size
                    break
                k = buf.find(b"\n")
                if k >= 0:
                    pos += k + 1
                    break
                pos += len(buf)
            if pos >= size:
                break
            cuts.append(pos)
            target = pos + task_size
    cuts.append(size)
    return cuts


def lang_of_path(path: str, regex) -> dict:
    """--lang-from-path: {"lang": the regex's group in the path} ({} without the option). A path it
    does not match is an error naming it; a group that matched nothing means no language. The value
    is cut to DP_LANG_MAX (63) bytes of UTF-8 at a character boundary, as --lang-field values are."""
    if not regex:
        return {}
    m = re.search(regex, path)
    if m is None:
        raise DataprepError(
            f"{printable_path(path)}: --lang-from-path {regex!r} does not match the path"
        )
    lang = (
        (m.group(1) or "").encode("utf-8", "surrogateescape")[:LANG_MAX].decode("utf-8", "ignore")
    )
    return {"lang": lang}


def plan_tasks(files: Sequence[str], options: dict) -> list:
    tasks = []
    for fi, path in enumerate(files):
        if isinstance(path, dict):  # a file of records spilled from a Python iterable
            tasks.append(
                {
                    "id": len(tasks),
                    "file": fi,
                    "path": path["path"],
                    "format": "records",
                    "codec": "plain",
                    "part": 0,
                    "start": 0,
                    "end": -1,
                    "first_row": path["first_record"],
                    "bytes": path["bytes"],
                    "sha256": path["sha256"],
                    "label": "records",
                }
            )
            continue
        lang = lang_of_path(path, options.get("lang_from_path"))
        so = options.get("storage_options")
        # the input's size and mtime (an object's size and ETag) when planned: checked again when a
        # task has read it (tasks.check_unchanged)
        version = _input_version(path, so)
        fmt = columnar.sniff(path, so)
        if fmt is not None:  # Parquet (cut by row groups) or Arrow IPC
            for part, (a, b, first, nbytes) in enumerate(columnar.plan(path, fmt, options)):
                tasks.append(
                    {
                        "id": len(tasks),
                        "file": fi,
                        "path": path,
                        "format": fmt,
                        "codec": "plain",
                        **lang,
                        "part": part,
                        "start": a,
                        "end": b,
                        "first_row": first,
                        "bytes": nbytes,
                        **version,
                    }
                )
            continue
        fmt, codec = input_type(path, options["txt_mode"], read_head(path, so))
        size = version["input_bytes"]
        if RECORD_FORMATS[fmt]["splittable"] and codec == "plain" and size > options["task_size"]:
            cuts = _cut_points(path, size, options["task_size"], so)
        else:
            cuts = [0, size]
        for part, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            whole = len(cuts) == 2
            tasks.append(
                {
                    "id": len(tasks),
                    "file": fi,
                    "path": path,
                    "format": fmt,
                    "codec": codec,
                    **lang,
                    "part": part,
                    "start": 0 if whole else a,
                    "end": -1 if whole else b,
                    **version,
                }
            )
    return tasks


def _input_version(path: str, storage_options: dict = None) -> dict:
    """What identifies the version of an input a task reads: its size and mtime, or for an object
    its size and ETag (or modification time when the store has no ETag)."""
    if storage.is_url(path):
        fp = storage.fingerprint(path, storage_options)
        return {"input_bytes": fp["bytes"], "input_etag": fp.get("etag") or fp.get("mtime") or ""}
    st = os.stat(path)
    return {"input_bytes": st.st_size, "input_mtime_ns": st.st_mtime_ns}


# ----------------------------------------------------------------------------- one task


# ----------------------------------------------------------------------------- helpers


def parse_size(text) -> tuple:
    """--shard-size: '1000000' (tokens), '500M' tokens? no: plain numbers are tokens; a unit
    (KB, MB, GB, KiB, MiB, GiB, B) makes it bytes of .bin. Returns ('tokens', n)."""
    if text is None:
        return None
    s = str(text).strip().lower().replace("_", "")
    units = {
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
    }
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u):
            num = s[: -len(u)]
            try:
                n = int(float(num) * units[u]) // 2
            except (ValueError, OverflowError):  # not a number, or inf / nan
                raise DataprepError(
                    f"--shard-size {text!r}: expected a finite size such as 512MB or 1GiB"
                ) from None
            if n < 1:
                raise DataprepError(
                    f"--shard-size {text!r}: must hold at least one token (2 bytes)"
                )
            return n
    try:
        n = int(s)
    except ValueError:
        raise DataprepError(
            f"--shard-size {text!r}: expected a token count (e.g. 100000000) "
            f"or a size with a unit (e.g. 512MB, 1GiB)"
        ) from None
    if n < 1:
        raise DataprepError(f"--shard-size {text!r}: must be >= 1 token")
    return n


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


def magic_prime(data_size: int, ctx_len: int):
    """RWKV-LM's magic_prime (docs/dataprep.md, "Outputs"): the largest prime p <= data_size // ctx_len - 1 with
    p % 3 == 2; None when data_size < 3 * ctx_len."""
    if ctx_len < 1:
        raise ValueError(f"ctx_len must be >= 1, got {ctx_len}")
    if data_size < 3 * ctx_len:
        return None
    p = data_size // ctx_len - 1
    while p >= 2:
        if p % 3 == 2 and _is_prime(p):
            return p
        p -= 1
    return None


def magic_prime_line(n_tokens: int, ctx_len: int) -> str:
    p = magic_prime(n_tokens, ctx_len)
    if p is None:
        return (
            f"warning: {n_tokens} tokens is less than 3 x ctx_len ({3 * ctx_len}); "
            f"RWKV-LM cannot train on this data with --ctx_len {ctx_len}"
        )
    return f"--my_exit_tokens {n_tokens} --magic_prime {p} --ctx_len {ctx_len}"


def _file_fingerprint(path: str, storage_options: dict = None) -> dict:
    if storage.is_url(path):  # {"path": URL, "bytes", "etag" and/or "mtime"}
        fp = storage.fingerprint(path, storage_options)
        return {"path": path, **{k: v for k, v in fp.items() if k != "url"}}
    st = os.stat(path)
    return {"path": path, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


# ----------------------------------------------------------------------------- build

DEFAULTS = dict(
    text_field="text",
    lang_field=None,
    lang_from_path=None,
    format="binidx",
    shard_size=None,
    ctx_len=None,
    shuffle=False,
    seed=0,
    epochs=1,
    dedup=None,
    on_error="fail",
    txt_mode="file",
    repair_utf8=False,
    task_size=64 << 20,
    zst_level=3,
    frame_tokens=1 << 20,
    batch_bytes=0,
    storage_options=None,
    **MIX_DEFAULTS,
)


def _check_options(o: dict) -> None:
    """Validate every option (and normalise integers) before any input is read."""
    if o["format"] not in ("binidx", "zst"):
        raise DataprepError(f"--format: expected binidx or zst, got {o['format']!r}")
    if o["on_error"] not in ("fail", "skip"):
        raise DataprepError(f"--on-error: expected fail or skip, got {o['on_error']!r}")
    if o["dedup"] not in (None, "exact"):
        raise DataprepError(f"--dedup: expected exact, got {o['dedup']!r}")
    if o["txt_mode"] not in ("file", "blank"):
        raise DataprepError(f"--txt-mode: expected file or blank, got {o['txt_mode']!r}")
    o["epochs"] = _int_option("--epochs", o["epochs"], 1)
    if o["ctx_len"] is not None:
        o["ctx_len"] = _int_option("--ctx-len", o["ctx_len"], 1)
    o["task_size"] = _int_option("--task-size", o["task_size"], 1)
    o["seed"] = _int_option("--seed", o["seed"], 0, 2**64 - 1)
    o["zst_level"] = _int_option("--zst-level", o["zst_level"], 1, 22)
    o["frame_tokens"] = _int_option("frame_tokens", o["frame_tokens"], 1, 2**31 - 1)
    o["batch_bytes"] = _int_option("batch_bytes", o["batch_bytes"], 0)
    for k in ("shuffle", "repair_utf8"):
        if not isinstance(o[k], (bool, np.bool_)):
            raise DataprepError(f"--{k.replace('_', '-')}: expected True or False, got {o[k]!r}")
        o[k] = bool(o[k])
    if not isinstance(o["text_field"], str) or not o["text_field"]:
        raise DataprepError(
            f"--text-field: expected a non-empty field name, got {o['text_field']!r}"
        )
    if o["lang_field"] is not None and not isinstance(o["lang_field"], str):
        raise DataprepError(f"--lang-field: expected a field name, got {o['lang_field']!r}")
    if o["lang_from_path"] is not None:
        if o["lang_field"]:
            raise DataprepError(
                "--lang-from-path and --lang-field: give one of them (a document has one language)"
            )
        if not isinstance(o["lang_from_path"], str) or not o["lang_from_path"]:
            raise DataprepError(
                f"--lang-from-path: expected a regular expression, got {o['lang_from_path']!r}"
            )
        try:
            groups = re.compile(o["lang_from_path"]).groups
        except re.error as e:
            raise DataprepError(
                f"--lang-from-path {o['lang_from_path']!r}: not a regular expression ({e})"
            ) from None
        if groups != 1:
            raise DataprepError(
                f"--lang-from-path {o['lang_from_path']!r}: expected exactly one group (...) "
                f"around the language, got {groups}"
            )
    for k in ("text_field", "lang_field"):
        if o[k] and "\0" in o[k]:
            raise DataprepError(
                f"--{k.replace('_', '-')}: a field name cannot hold a NUL character"
            )
    check_mix_options(o)
    if o["storage_options"] is not None and not isinstance(o["storage_options"], dict):
        raise DataprepError(
            f"storage_options: expected a dict of fsspec options, got {type(o['storage_options']).__name__}"
        )


def check_out_prefix(out, option: str = "--out", storage_options: dict = None) -> str:
    """An output prefix (PREFIX.bin, PREFIX.idx, ...) as an absolute path, refused with one line
    when it is empty, names a folder (ends in a separator, or is an existing folder), is not valid
    UTF-8 (the manifest records names as text) or lies in a folder that does not exist."""
    if not isinstance(out, (str, bytes, os.PathLike)):
        raise DataprepError(f"{option}: expected a path, got {type(out).__name__}")
    if storage.is_url(out):  # s3://bucket/out/train: uploaded when complete (remote.py)
        return remote.check_out_url(out, option, storage_options)
    out = storage.local_path(out)
    raw = os.fsdecode(os.fspath(out))
    if raw == "":
        raise DataprepError(f"{option} '': expected a file prefix such as data/train")
    if raw.endswith(("/", os.sep)) or os.path.isdir(raw):
        raise DataprepError(
            f"{option} {printable_path(raw)}: is a folder; give a file prefix inside it "
            f"(e.g. {printable_path(os.path.join(raw, 'train'))})"
        )
    _check_utf8_name(raw, option)
    full = os.path.abspath(raw)
    out_dir = os.path.dirname(full)
    if not os.path.isdir(out_dir):
        raise DataprepError(f"{option} {full}: folder {out_dir} does not exist")
    return full


def output_names(prefix: str, fmt: str, n_shards, sharded: bool) -> list:
    """Shard file stems: PREFIX when not sharded, else PREFIX_00000, PREFIX_00001, ..."""
    if not sharded:
        return [prefix]
    return [f"{prefix}_{i:05d}" for i in range(n_shards)]


def build(
    inputs: Sequence[str],
    out: str,
    *,
    workers: int = None,
    executor: Executor = None,
    progress: bool = False,
    restart: bool = False,
    keep_work: bool = False,
    vocab: str = None,
    allow_empty: bool = False,
    log=None,
    work_dir: str = None,
    **opts,
) -> dict:
    """Build PREFIX outputs from the inputs; returns the manifest (also written to PREFIX.manifest.json).

    Example::

        from rwkv5.dataprep import build
        m = build(["corpus/"], "out/train", ctx_len=4096, shuffle=True, seed=1)
        print(m["magic_prime"])

    inputs: a file, glob or folder, or a list of them (a single str is one input). Files under a
    folder that the build does not read are listed in a warning and in the manifest
    (``inputs_not_read``); inputs holding no document at all are an error unless allow_empty.
    Instead of paths, inputs may be records: a datasets.Dataset or IterableDataset, or any
    iterable of dicts or strings that is not a list/tuple of paths (docs/dataprep.md, "Python
    iterables and datasets objects"); Parquet and Arrow files need pyarrow.

    workers: C threads per task, 1..1024 (None: the CPUs this process may use).

    executor: any concurrent.futures.Executor; each task then runs as executor.submit(run_task, ...)
    (the work directory must be visible to the workers: a shared folder, or a work area on an
    object store). Without one, tasks run here one after another, each on `workers` C threads.

    out may be a URL (``s3://bucket/out/train``): the set is uploaded when complete, its manifest
    last, and the work area is ``PREFIX.work/`` on the store unless work_dir names another place.
    work_dir: a URL (the work area on an object store, e.g. for Ray without a shared filesystem),
    or a local folder for a URL out.
    """
    log = log or (lambda s: print(s, file=sys.stderr))
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"build() got unknown options: {sorted(unknown)}")
    # every option and the output prefix are checked before any input is read
    options = {**DEFAULTS, **opts}
    options["shard_size"] = (
        parse_size(options["shard_size"]) if options["shard_size"] is not None else None
    )
    _check_options(options)
    n_threads = check_workers(workers)
    storage_options = options["storage_options"]
    out = check_out_prefix(out, storage_options=storage_options)
    work_dir = remote.check_work_dir(out, work_dir)
    vocab = vocab or default_vocab()
    if not os.path.isfile(vocab):
        raise DataprepError(f"--vocab {printable_path(vocab)}: no such file")
    options["vocab"] = os.path.abspath(vocab)
    # one writer per prefix: a second build of it fails here, at once, before reading any input
    # (a local prefix or work folder; on an object store that is up to the user)
    with remote.work_area(out, work_dir, storage_options) as lock:
        return _build_locked(
            lock,
            inputs,
            out,
            options,
            n_threads,
            executor,
            progress,
            restart,
            keep_work,
            allow_empty,
            log,
            storage_options,
        )


# options never written to the plan or the manifest (storage options may hold credentials)
_UNRECORDED = ("storage_options",)
# the options a task's parts depend on (besides the task itself, its input file and the vocab);
# on_error is handled apart: a task that met no bad record has the same parts under fail and skip
_TASK_OPTIONS = ("text_field", "lang_field", "lang_from_path", "repair_utf8", "txt_mode")
ENDED_NAME = "ended.json"  # {"status": "error", "error": ...} or {"status": "done"} (--keep-work)
RECORDS_DIR, RECORDS_NEW = (
    "records",
    "records.new",
)  # Python records spilled as Arrow files (columnar.spill)


def _reusable_tasks(old: dict, new: dict, workdir: str) -> set:
    """Ids of the tasks whose completion records from the plan `old` hold exactly what the plan
    `new` would write: same task, same input file (size and mtime), same vocab, same task options,
    and under another --on-error only when the task met no bad record."""
    try:
        if (
            old.get("plan_version") != new["plan_version"]
            or old.get("vocab_sha256") != new["vocab_sha256"]
        ):
            return set()
        oo, no = old["options"], new["options"]
        if any(oo.get(k) != no[k] for k in _TASK_OPTIONS):
            return set()
        old_inputs = {fp["path"]: fp for fp in old["inputs"]}
        old_tasks = {t["id"]: t for t in old["tasks"]}
    except (KeyError, TypeError, AttributeError):
        return set()
    keep = set()
    for t in new["tasks"]:
        fp = new["inputs"][t["file"]]
        if old_tasks.get(t["id"]) != t or old_inputs.get(fp["path"]) != fp:
            continue
        if oo.get("on_error") != no["on_error"]:
            rec = load_done(workdir, t)
            if rec is None or any(k != "empty" and v for k, v in rec.get("skipped", {}).items()):
                continue
        keep.add(t["id"])
    return keep


def _prepare_workdir(lock, plan: dict, restart: bool, log) -> None:
    """Make the locked work area hold `plan` and only completion records it can use.

    Same plan: an interrupted or failed run of the same command resumes. Another plan: refused
    when the old run was interrupted (rerun it to resume, or --restart), but when the old run
    ended (in an error, or done with --keep-work) its reusable task parts are kept, the rest
    discarded, and the user told."""
    workdir = lock.workdir
    plan_path = os.path.join(workdir, "plan.json")
    ended_path = os.path.join(workdir, ENDED_NAME)
    old = None
    try:
        with open(plan_path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    ended = None
    try:
        with open(ended_path, encoding="utf-8") as f:
            ended = json.load(f)["status"]
    except (OSError, ValueError, KeyError, TypeError):
        ended = None
    if old == plan and not restart:
        if ended is not None:
            os.remove(ended_path)
        return
    if old is not None and ended is None and not restart:
        raise DataprepError(
            f"{workdir} holds an unfinished run with different inputs or options; "
            f"rerun that command to resume it, or pass --restart to discard it"
        )
    keep = set()
    if old is not None and ended is not None and not restart:
        keep = _reusable_tasks(old, plan, workdir)
    names = {f"task-{i:06d}.{ext}" for i in keep for ext in ("tok", "meta", "done.json")}
    n_done_old = sum(1 for n in os.listdir(workdir) if n.endswith(".done.json"))
    lock.clear(keep=lambda name: name in names or name == RECORDS_NEW)
    if old is not None and ended is not None and not restart:
        how = "ended in an error" if ended == "error" else "was kept (--keep-work)"
        log(
            f"{workdir}: the last run {how}; this run has other inputs or options: "
            f"keeping {len(keep)} completed task(s) it can reuse, discarding {max(0, n_done_old - len(keep))} it cannot"
        )
    _write_json_atomic(plan_path, plan)


def _build_locked(
    lock,
    inputs,
    out,
    options,
    n_threads,
    executor,
    progress,
    restart,
    keep_work,
    allow_empty,
    log,
    storage_options=None,
) -> dict:
    workdir = lock.workdir
    store = lock if isinstance(lock, remote.StoreWorkArea) else None
    unread = []
    spilled = None
    if columnar.is_record_source(inputs) and store is not None:
        raise DataprepError(
            "Python records are spilled into a local work area that only this machine sees: "
            "pass a local work_dir instead of a work area on an object store"
        )
    if columnar.is_record_source(inputs):
        if options.get("lang_from_path"):
            raise DataprepError(
                "lang_from_path: the input is Python records, which have no path; give each "
                "record its language in a field and pass lang_field"
            )
        # Python records: written as Arrow files of about task_size text bytes into the work
        # folder (fingerprinted by content, so a rerun with the same records resumes)
        new = os.path.join(workdir, RECORDS_NEW)
        if os.path.isdir(new):
            shutil.rmtree(new)
        spilled = columnar.spill(inputs, new, options)
        files = []
        for p, n, first in spilled:
            final = os.path.join(workdir, RECORDS_DIR, os.path.basename(p))
            files.append(
                {
                    "path": final,
                    "bytes": os.path.getsize(p),
                    "sha256": sha256_file(p),
                    "first_record": first,
                    "records": n,
                }
            )
    else:
        files = expand_inputs(
            inputs, exclude_prefix=out, unread=unread, storage_options=options["storage_options"]
        )
    if unread:
        shown = ", ".join(unread[:5]) + (", ..." if len(unread) > 5 else "")
        log(
            f"warning: {len(unread)} file(s) under the input folders are not read (not "
            f"{', '.join(_FOLDER_SUFFIXES)}): {shown} (listed in the manifest as inputs_not_read)"
        )
    tasks = plan_tasks(files, options)
    vocab_sha = sha256_file(options["vocab"])
    plan = {
        "plan_version": PLAN_VERSION,
        "options": {k: v for k, v in options.items() if k not in _UNRECORDED},
        "vocab_sha256": vocab_sha,
        "tasks": tasks,
        "inputs": [
            _file_fingerprint(p, options["storage_options"])
            if isinstance(p, str)
            else {k: p[k] for k in ("path", "bytes", "sha256")}
            for p in files
        ],
    }
    if store is not None:
        store.pull_records()  # the plan and completion records of an earlier run, from the store
    _prepare_workdir(lock, plan, restart, log)
    if store is not None:
        store.push_plan()
        store.pull_parts(tasks)
    if spilled is not None:
        columnar.replace_folder(
            os.path.join(workdir, RECORDS_NEW), os.path.join(workdir, RECORDS_DIR)
        )
        files = [p["path"] for p in files]
    try:
        manifest = _run_and_merge(
            tasks,
            options,
            files,
            vocab_sha,
            out,
            workdir,
            n_threads,
            executor,
            progress,
            allow_empty,
            unread,
            log,
            records_input=spilled is not None,
            store=store,
            storage_options=storage_options,
        )
    except Exception as e:
        # a run that ended in an error (not an interrupted one) does not block a corrected rerun; when
        # the store itself failed, the rerun is the same command (it resumes without this record)
        if not (store is not None and isinstance(e, OSError)):
            _write_ended(lock, {"status": "error", "error": str(e)})
        raise
    if keep_work:
        _write_ended(lock, {"status": "done"})
    else:
        lock.remove_workdir()
    return manifest


def _write_ended(lock, obj) -> None:
    if isinstance(lock, remote.StoreWorkArea):
        try:
            lock.write_ended(obj)
        except OSError:  # the store is what failed: the error being raised says so
            pass
    else:
        _write_json_atomic(os.path.join(lock.workdir, ENDED_NAME), obj)


def _run_and_merge(
    tasks,
    options,
    files,
    vocab_sha,
    out,
    workdir,
    n_threads,
    executor,
    progress,
    allow_empty,
    unread,
    log,
    records_input=False,
    store=None,
    storage_options=None,
) -> dict:
    # --- run the tasks
    t0 = time.perf_counter()
    retries0 = storage.retry_counts()["retries"]
    records = [None] * len(tasks)
    total_in = sum(t.get("input_bytes", t.get("bytes", 0)) for t in tasks if t["part"] == 0)
    done_bytes = 0

    n_finished = 0

    def report(i, rec):
        nonlocal done_bytes, n_finished
        t = tasks[i]
        n_finished += 1
        done_bytes += (
            t["bytes"]
            if "bytes" in t
            else t["input_bytes"]
            if t["end"] < 0
            else t["end"] - t["start"]
        )
        if progress:
            dt = max(time.perf_counter() - t0, 1e-9)
            tag = " (resumed)" if rec.get("resumed") else ""
            log(
                f"[{n_finished}/{len(tasks)}] task {t['id']} {os.path.basename(t['path'])} part {t['part']}: "
                f"{rec.get('docs', 0)} docs, {rec.get('tokens', 0)} tokens{tag}; "
                f"{done_bytes / 1e6:.1f} of {total_in / 1e6:.1f} MB, {done_bytes / dt / 1e6:.1f} MB/s"
            )

    if store is None:
        finish = finish_task
    else:  # and uploads task i's parts and record to the work area on the store

        def finish(task, res, workdir):
            return store.push_task(finish_task(task, res, workdir))

    if executor is None:
        # tokenize task i+1 while a helper thread hashes and records task i (both release the GIL)
        with ThreadPoolExecutor(1) as finisher, ThreadPoolExecutor(1) as helper:
            pending = []
            collect_resumed(tasks, workdir, records, report)
            for i, task in enumerate(tasks):
                if records[i] is not None:
                    continue
                res = tokenize_task(task, options, workdir, n_threads, helper)
                if res.get("error"):
                    records[i] = res
                    break
                pending.append((i, finisher.submit(finish, task, res, workdir)))
                while pending and pending[0][1].done():
                    j, fut = pending.pop(0)
                    records[j] = fut.result()
                    report(j, records[j])
            for j, fut in pending:
                records[j] = fut.result()
                report(j, records[j])
    else:
        # any concurrent.futures.Executor (process pool, Dask, engines.RayExecutor): completed tasks
        # are skipped, each returned completion record is verified against its parts (engines.py)
        from .engines import run_tasks

        records = run_tasks(executor, tasks, options, workdir, n_threads, report, store=store)

    # line numbers: tasks of one file are consecutive ranges; each starts after the lines of the earlier ones
    line_base = [0] * len(tasks)
    for i, task in enumerate(tasks):
        if records[i] is None:
            break
        if task["part"] > 0:
            line_base[i] = line_base[i - 1] + records[i - 1]["lines"]
        if records[i].get("error"):
            where = f"{task['path']}:{line_base[i] + records[i]['fail_line']}"
            if records[i].get("location"):  # Parquet / Arrow / Python records: no line numbers
                where = f"{task.get('label', task['path'])}: {records[i]['location']}"
            raise DataprepError(
                f"{where}: {records[i]['reason']} ({_bad_record_hint(records[i]['reason'])})"
            )
    if not allow_empty and not any(r is not None and r["docs"] for r in records):
        n_skipped = sum(sum(r["skipped"].values()) for r in records)
        why = f"{n_skipped} record(s) skipped as bad or empty" if n_skipped else "no records"
        raise DataprepError(
            f"no documents: the {len(files)} input file(s) hold {why}"
            f"{f'; {len(unread)} file(s) of other types were not read' if unread else ''}; "
            f"pass --allow-empty to write an empty set"
        )
    elapsed_tasks = time.perf_counter() - t0
    manifest, renames = _merge(tasks, records, line_base, options, files, vocab_sha, out, workdir)
    if records_input:  # the spilled files live in the work folder only
        manifest["inputs"] = [
            {"records": sum(r["lines"] for r in records), "bytes": sum(t["bytes"] for t in tasks)}
        ]
    for w in (manifest.get("mix") or {}).get("warnings", []):
        log(f"warning: {w}")
    manifest["inputs_not_read"] = {"count": len(unread), "first": unread[:MAX_LISTED]}
    manifest["timing"] = {
        "tokenize_seconds": round(elapsed_tasks, 3),
        "total_seconds": round(time.perf_counter() - t0, 3),
        "workers": n_threads,
    }
    if (
        store is not None
        or storage.is_url(out)
        or any(storage.is_url(p) for p in files if isinstance(p, str))
    ):
        # transient store errors retried so far: here, and in the tasks run elsewhere
        manifest["storage"] = {
            "retries": storage.retry_counts()["retries"]
            - retries0
            + sum(r.get("storage_retries", 0) for r in records if r is not None)
        }
    removed = publish_set(out, renames, manifest, workdir, storage_options)
    if removed:
        more = f" and {len(removed) - 5} more" if len(removed) > 5 else ""
        log(
            f"removed {len(removed)} file(s) of the earlier set at {out}: "
            f"{', '.join(os.path.basename(p) for p in removed[:5])}{more}"
        )
    return manifest


def _bad_record_hint(reason: str) -> str:
    """What to do about a bad record that stopped a run under --on-error fail."""
    if reason.startswith("missing_field") or reason.startswith("field_not_string"):
        return (
            "use --text-field NAME to read another member, or --on-error skip to skip bad records"
        )
    if "utf8" in reason or "surrogate" in reason:
        return "use --on-error skip to skip bad records, or --repair-utf8"
    return "use --on-error skip to skip bad records"


def _stats_add(table: dict, key: str, docs, nbytes, tokens):
    e = table.setdefault(key, {"documents": 0, "bytes": 0, "tokens": 0})
    e["documents"] += int(docs)
    e["bytes"] += int(nbytes)
    e["tokens"] += int(tokens)


def _finish_stats(table: dict) -> dict:
    for e in table.values():
        e["bytes_per_token"] = round(e["bytes"] / e["tokens"], 4) if e["tokens"] else None
    return dict(sorted(table.items()))


def _merge(tasks, records, line_base, options, files, vocab_sha, out, workdir) -> dict:
    workdir_tok = [_task_stem(workdir, t) + ".tok" for t in tasks]
    metas = []
    for t in tasks:
        m = np.fromfile(_task_stem(workdir, t) + ".meta", dtype=META_DTYPE)
        metas.append(m)
    n_docs_total = sum(len(m) for m in metas)

    dup_count = 0
    if options["dedup"] == "exact" and n_docs_total:
        keys = np.empty(n_docs_total, dtype=[("h1", "<u8"), ("h2", "<u8"), ("n", "<u8")])
        o = 0
        for m in metas:
            keys["h1"][o : o + len(m)] = m["h1"]
            keys["h2"][o : o + len(m)] = m["h2"]
            keys["n"][o : o + len(m)] = m["n_bytes"]
            o += len(m)
        _, first = np.unique(keys, return_index=True)
        mask_all = np.zeros(n_docs_total, dtype=bool)
        mask_all[first] = True
        dup_count = int(n_docs_total - len(first))
        del keys
    else:
        mask_all = None

    stats_lang, stats_script = {}, {}
    task_ids, offsets, sizes = [], [], []
    lang_names, lang_codes, doc_langs = (
        [],
        {},
        [],
    )  # the language of each kept document (for the mix)
    o = 0
    dup_stats = {"documents": 0, "bytes": 0, "tokens": 0}
    for ti, m in enumerate(metas):
        langs = records[ti]["langs"]
        off = np.zeros(len(m), dtype=np.int64)
        if len(m) > 1:
            np.cumsum(m["n_tokens"][:-1].astype(np.int64) * 2, out=off[1:])
        mask = mask_all[o : o + len(m)] if mask_all is not None else np.ones(len(m), dtype=bool)
        o += len(m)
        if mask_all is not None:
            dup_stats["documents"] += int((~mask).sum())
            dup_stats["bytes"] += int(m["n_bytes"][~mask].sum())
            dup_stats["tokens"] += int(m["n_tokens"][~mask].astype(np.int64).sum())
        mk = m[mask]
        for s in np.unique(mk["script"]):
            sel = mk[mk["script"] == s]
            _stats_add(
                stats_script,
                SCRIPT_NAMES[s],
                len(sel),
                sel["n_bytes"].sum(),
                sel["n_tokens"].astype(np.int64).sum(),
            )
        if options["lang_field"] or options["lang_from_path"]:
            for li in np.unique(mk["lang"]):
                sel = mk[mk["lang"] == li]
                name = langs[li] if langs[li] else "(none)"
                _stats_add(
                    stats_lang,
                    name,
                    len(sel),
                    sel["n_bytes"].sum(),
                    sel["n_tokens"].astype(np.int64).sum(),
                )
        if mixing(options):
            names = np.array(
                [lang_codes.setdefault(x or "(none)", len(lang_codes)) for x in (langs or [""])],
                dtype=np.int64,
            )
            doc_langs.append(
                names[mk["lang"].astype(np.int64)] if len(mk) else np.zeros(0, np.int64)
            )
        task_ids.append(np.full(int(mask.sum()), ti, dtype=np.int64))
        offsets.append(off[mask])
        sizes.append(mk["n_tokens"].astype(np.int64))
    task_ids = np.concatenate(task_ids) if task_ids else np.zeros(0, np.int64)
    offsets = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
    sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    del metas
    n = len(sizes)

    # order: epochs x (a seeded permutation, or input order); or the mixed selection (mixing.py),
    # shuffled as a whole with --shuffle
    rng = np.random.default_rng(int(options["seed"]))
    mix_report = None
    if mixing(options):
        lang_names = sorted(lang_codes, key=lang_codes.get)
        doc_lang = np.concatenate(doc_langs) if doc_langs else np.zeros(0, np.int64)
        order, mix_report = plan_mix(lang_names, doc_lang, sizes, options)
        if options["shuffle"]:
            order = order[rng.permutation(len(order))]
    else:
        order = []
        for _ in range(int(options["epochs"])):
            order.append(rng.permutation(n) if options["shuffle"] else np.arange(n))
        order = np.concatenate(order) if order else np.zeros(0, np.int64)

    # shards: documents are never split; a shard closes before a document that would overflow it
    ord_sizes = sizes[order]
    shard_tokens = options["shard_size"]
    bounds = [0]
    if shard_tokens:
        acc = 0
        for i, s in enumerate(ord_sizes.tolist()):
            if acc and acc + s > shard_tokens:
                bounds.append(i)
                acc = 0
            acc += s
    bounds.append(len(order))
    if len(bounds) > 2 and bounds[-1] == bounds[-2]:
        bounds.pop()
    stems = output_names(out, options["format"], len(bounds) - 1, bool(shard_tokens))

    shards = []
    n_vocab = load_tokenizer(options["vocab"]).n_vocab
    for si, stem in enumerate(stems):
        sel = order[bounds[si] : bounds[si + 1]]
        ranges = (
            np.stack([task_ids[sel], offsets[sel], sizes[sel] * 2], axis=1)
            if len(sel)
            else np.zeros((0, 3), np.int64)
        )
        ranges = _coalesce(ranges)
        shard_sizes = sizes[sel]
        if options["format"] == "binidx":
            # temporaries live in the work folder (same file system), renamed into place at the end
            tmp_bin = os.path.join(workdir, os.path.basename(stem) + ".bin.tmp")
            tmp_idx = os.path.join(workdir, os.path.basename(stem) + ".idx.tmp")
            known_sha = _assemble(tmp_bin, workdir_tok, ranges, records)
            write_idx(tmp_idx, shard_sizes)
            files_out = {".bin": tmp_bin, ".idx": tmp_idx}
        else:
            tmp_stream = os.path.join(workdir, f"shard-{si:05d}.stream")
            _assemble(tmp_stream, workdir_tok, ranges, records)
            known_sha = None
            tmp_zst = os.path.join(workdir, os.path.basename(stem) + ".zst.tmp")
            write_zst_shard(
                tmp_zst,
                tmp_stream,
                shard_sizes,
                n_vocab,
                options["zst_level"],
                options["frame_tokens"],
            )
            os.remove(tmp_stream)
            files_out = {".zst": tmp_zst}
        ntok = int(shard_sizes.sum())
        entry = {
            "name": os.path.basename(stem),
            "documents": int(len(sel)),
            "tokens": ntok,
            "files": {},
        }
        for ext, tmp in files_out.items():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            sha = known_sha if ext == ".bin" and known_sha else sha256_file(tmp)
            entry["files"][os.path.basename(stem) + ext] = {
                "bytes": os.path.getsize(tmp),
                "sha256": sha,
            }
        if options["ctx_len"]:
            entry["magic_prime"] = magic_prime(ntok, int(options["ctx_len"]))
        shards.append((entry, files_out, stem))
    renames = [
        (tmp, stem + ext) for _entry, files_out, stem in shards for ext, tmp in files_out.items()
    ]

    # skipped records: counts by reason, the first ones as file:line:reason
    skipped, listed = {}, []
    lines = blank = repaired = 0
    for ti, rec in enumerate(records):
        for k, v in rec["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
        for line, reason in rec["listed"]:
            if len(listed) < MAX_LISTED:
                listed.append(
                    f"{tasks[ti].get('label', tasks[ti]['path'])}:{line_base[ti] + line}:{reason}"
                )
        lines += rec["lines"]
        blank += rec["blank_lines"]
        repaired += rec["repaired_docs"]
    if dup_count:
        skipped["duplicate"] = dup_count

    total_tokens = int(sizes[order].sum()) if n else 0
    planned_bytes = {t["path"]: t.get("input_bytes", t.get("bytes")) for t in tasks}
    etags = {
        t["path"]: t["input_etag"] for t in tasks if t.get("input_etag")
    }  # objects: their version
    opts_out = {k: v for k, v in options.items() if k not in ("vocab",) + _UNRECORDED}
    manifest = {
        "format": "rwkv5-dataprep-manifest",
        "version": 1,
        "output": {
            "prefix": os.path.basename(out),
            "format": options["format"],
            "sharded": bool(shard_tokens),
            "dtype": "uint16",
            "eot_token": 0,
        },
        "inputs": [
            {"path": p, "bytes": planned_bytes[p], **({"etag": etags[p]} if p in etags else {})}
            for p in files
        ],
        "options": opts_out,
        "tokenizer": {"vocab": options["vocab"], "vocab_sha256": vocab_sha, "n_vocab": n_vocab},
        "totals": {
            "documents": int(len(order)),
            "unique_documents": n,
            "tokens": total_tokens,
            "text_bytes": int(sum(r["text_bytes"] for r in records)),
            "input_lines": lines,
            "blank_lines": blank,
            "repaired_documents": repaired,
            "epochs": int(options["epochs"]),
        },
        "shards": [e for e, _, _ in shards],
        "statistics": {
            "per_script": _finish_stats(stats_script),
            "per_language": _finish_stats(stats_lang),
            "note": "statistics count each unique document once (before epochs)",
        },
        "skipped": {
            "counts": dict(sorted(skipped.items())),
            "total": int(sum(skipped.values())),
            "first": listed,
        },
        "duplicates": dup_stats if options["dedup"] else None,
    }
    if mix_report is not None:
        manifest["mix"] = mix_report
    if options["ctx_len"]:
        manifest["ctx_len"] = int(options["ctx_len"])
        manifest["magic_prime"] = magic_prime(total_tokens, int(options["ctx_len"]))
        manifest["rwkv_lm_args"] = magic_prime_line(total_tokens, int(options["ctx_len"]))
    return manifest, renames


def _coalesce(ranges: np.ndarray) -> np.ndarray:
    """Merge consecutive (src, off, len) rows that continue each other into one copy."""
    if len(ranges) < 2:
        return ranges.astype(np.int64)
    r = ranges.astype(np.int64)
    cont = (r[1:, 0] == r[:-1, 0]) & (r[1:, 1] == r[:-1, 1] + r[:-1, 2])
    starts = np.flatnonzero(np.concatenate([[True], ~cont]))
    lens = np.add.reduceat(r[:, 2], starts)
    return np.stack([r[starts, 0], r[starts, 1], lens], axis=1)


def _assemble(dst: str, srcs: list, ranges: np.ndarray, records) -> str:
    """Write the ranges of the part files to dst. When they are exactly one whole part, hard-link
    it instead of copying and return its recorded SHA-256 (else None: the caller hashes dst)."""
    if len(ranges) == 1:
        ti, off, n = (int(x) for x in ranges[0])
        part = records[ti]["parts"]["tok"]
        if off == 0 and n == part["bytes"]:
            try:
                if os.path.exists(dst):
                    os.remove(dst)
                os.link(srcs[ti], dst)
                return part["sha256"]
            except OSError:
                pass
    _copy(dst, srcs, ranges)
    return None


def _copy(dst: str, srcs: list, ranges: np.ndarray) -> None:
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _dataprep.copy_ranges(fd, srcs, np.ascontiguousarray(ranges, dtype=np.int64))
    except BaseException:
        os.close(fd)
        fd = -1
        try:
            os.remove(dst)
        except OSError:
            pass
        raise
    finally:
        if fd >= 0:
            os.close(fd)
