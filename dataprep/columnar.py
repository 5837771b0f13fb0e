"""Columnar and in-memory inputs: Parquet files, Arrow IPC files (and the folders
`datasets.Dataset.save_to_disk` writes), and Python iterables (a `datasets.Dataset`, an
`IterableDataset`, or any iterable of dicts or strings).

Their texts reach the C tokenizer as Arrow string columns: one data buffer plus offsets per batch
(`_dataprep.encode_texts`), so no Python object is made per document. Each text is treated exactly
like a plain-text record of the line readers (UTF-8 checked or repaired, empty texts skipped,
tokens followed by 0), so the same documents give the same bytes whichever container holds them.

Only the text column and the language column are read (column projection); Parquet files are read
one row group at a time and large files are cut into tasks of whole row groups, Arrow IPC files
and streams into tasks of whole record batches.

pyarrow is imported only when one of these inputs is met (`pip install 'rwkv5[parquet]'`);
`datasets` only when such an object is passed in.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import storage
from . import _dataprep
from .errors import DataprepError

PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"  # an IPC stream starts with a continuation marker
DATASET_META = (
    "state.json",
    "dataset_info.json",
)  # what save_to_disk writes next to its .arrow files
DATASET_DICT_META = "dataset_dict.json"
KINDS = ("parquet", "arrow", "records")
STATUS = {name: i for i, name in enumerate(_dataprep.STATUS_NAMES)}
LANG_MAX = 63  # = DP_LANG_MAX: longer language values are cut at a character boundary
MAX_LANGS = 65536  # = DP_MAX_LANGS
BATCH_BYTES = 4 << 20  # text bytes per batch handed to the C tokenizer
INSTALL_HINT = "pip install 'rwkv5[parquet]' (or pip install pyarrow)"


def pyarrow_modules(what: str):
    """(pyarrow, pyarrow.compute, pyarrow.parquet, pyarrow.ipc), or a one-line DataprepError
    saying what to install."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq
    except ImportError:
        raise DataprepError(
            f"{what}: reading Parquet and Arrow inputs needs pyarrow: {INSTALL_HINT}"
        ) from None
    return pa, pc, pq, ipc


def _open_input(path: str, options: dict = None, read_ahead: int = None):
    """A local path as it is, or an object (URL) as a seekable file object of ranged reads
    (rwkv5/storage.py) that pyarrow reads like a file."""
    if not storage.is_url(path):
        return path
    so = (options or {}).get("storage_options")
    return (
        storage.open_read(path, so)
        if read_ahead is None
        else storage.open_read(path, so, read_ahead=read_ahead)
    )


def sniff(path: str, storage_options: dict = None):
    """'parquet' or 'arrow' when the file is one (by its magic bytes; an IPC stream by its
    .arrow name), else None. A .parquet name without the magic is an error."""
    if storage.is_url(path):
        head = storage.cat(path, 0, 8, storage_options=storage_options)
    else:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise DataprepError(f"{path}: cannot open: {e.strerror}") from None
    return _sniff_head(path, head)


def _sniff_head(path: str, head: bytes):
    low = path.lower()
    if head[:4] == PARQUET_MAGIC:
        return "parquet"
    if head[:6] == ARROW_FILE_MAGIC or (head[:4] == ARROW_STREAM_MAGIC and low.endswith(".arrow")):
        return "arrow"
    if low.endswith(".parquet"):
        raise DataprepError(f"{path}: not a Parquet file (it does not start with the PAR1 magic)")
    if low.endswith(".arrow"):
        raise DataprepError(
            f"{path}: not an Arrow IPC file or stream (no ARROW1 magic or stream marker)"
        )
    return None


def saved_dataset_files(folder: str, names) -> tuple:
    """For a folder written by datasets' save_to_disk (state.json and dataset_info.json present):
    (its data files in state.json order, the names that are its metadata); else None."""
    if not all(m in names for m in DATASET_META):
        return None
    path = os.path.join(folder, "state.json")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        files = [os.path.join(folder, d["filename"]) for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataprepError(f"{path}: not a datasets save_to_disk state file ({e})") from None
    for p in files:
        if not os.path.isfile(p):
            raise DataprepError(f"{path}: lists {os.path.basename(p)}, which is not in {folder}")
    return files, set(DATASET_META)


# ----------------------------------------------------------------------------- plan


def plan(path: str, fmt: str, options: dict) -> list:
    """Task ranges of one Parquet or Arrow IPC file: [(start, end, first_row, bytes)], units
    [start, end) of about task_size uncompressed bytes each. The units are Parquet row groups, or
    Arrow record batches (an IPC stream, as datasets' save_to_disk writes, is scanned for them:
    memory-mapped, only the batches' metadata is read)."""
    pa, pc, pq, ipc = pyarrow_modules(path)
    if fmt == "arrow":
        if storage.is_url(
            path
        ):  # an object: one task (scanning a stream for its batches would fetch it all)
            nbytes = storage.size(path, options.get("storage_options"))
            return [(0, -1, 0, nbytes)]
        try:
            with _open_ipc(path, options, pa, ipc) as (reader, batches):
                units = [(b.num_rows, b.nbytes) for b in batches]
        except (OSError, pa.ArrowException) as e:
            raise DataprepError(
                f"{path}: not a readable Arrow IPC file or stream ({_one_line(e)})"
            ) from None
    else:
        try:
            # an object: only its footer is read (read_ahead 0: no blocks fetched past it)
            src = _open_input(path, options, read_ahead=0)
            try:
                md = pq.ParquetFile(src).metadata
            finally:
                if src is not path:
                    src.close()
        except (OSError, pa.ArrowException) as e:
            raise DataprepError(f"{path}: not a readable Parquet file ({_one_line(e)})") from None
        units = [
            (md.row_group(g).num_rows, md.row_group(g).total_byte_size)
            for g in range(md.num_row_groups)
        ]
    ranges, a, acc, row, first = [], 0, 0, 0, 0
    for g, (rows, nbytes) in enumerate(units):
        acc += nbytes
        row += rows
        if acc >= options["task_size"]:
            ranges.append((a, g + 1, first, acc))
            a, acc, first = g + 1, 0, row
    if a < len(units) or not ranges:
        ranges.append((a, len(units), first, acc))
    return ranges


@contextlib.contextmanager
def _open_ipc(path, options, pa, ipc, start=0, end=-1):
    """(reader, an iterator over its record batches [start, end)) of an Arrow IPC file or stream
    (end -1: to the last), memory-mapped (an object: read through ranged reads). A file's batches
    are reached directly; a stream's earlier ones are skipped (memory-mapped, zero-copy: only their
    metadata is read)."""
    if storage.is_url(path):
        source = _open_input(path, options)
        is_file = source.read(6) == ARROW_FILE_MAGIC
        source.seek(0)
    else:
        source = pa.memory_map(path, "r")
    try:
        if not storage.is_url(path):
            with open(path, "rb") as f:
                is_file = f.read(6) == ARROW_FILE_MAGIC
        reader = ipc.open_file(source) if is_file else ipc.open_stream(source)
        if is_file:
            stop = reader.num_record_batches if end < 0 else min(end, reader.num_record_batches)
            yield reader, (reader.get_batch(i) for i in range(start, stop))
        else:
            yield reader, itertools.islice(reader, start, None if end < 0 else end)
    finally:
        source.close()


def _one_line(e) -> str:
    return " ".join(str(e).split())


# ----------------------------------------------------------------------------- columns


def _resolve(schema, field: str):
    """The path of `field` in the schema: [name] for a top-level column of that name, else the
    dotted path through struct columns ("meta.text" -> ["meta", "text"]); None when absent."""
    import pyarrow as pa

    if field in schema.names:
        return [field]
    parts = field.split(".")
    if len(parts) < 2 or parts[0] not in schema.names:
        return None
    t = schema.field(parts[0]).type
    for p in parts[1:]:
        if not pa.types.is_struct(t) or t.get_field_index(p) < 0:
            return None
        t = t.field(t.get_field_index(p)).type
    return parts


def _column(batch, path):
    """The column at a resolved path of a record batch (a struct's nulls make its children null)."""
    import pyarrow.compute as pc

    col = batch.column(batch.schema.get_field_index(path[0]))
    for p in path[1:]:
        col = pc.struct_field(col, [col.type.get_field_index(p)])
    return col


def _as_text(arr):
    """A string/large_string array, or None when the column does not hold strings."""
    import pyarrow as pa

    t = arr.type
    if pa.types.is_dictionary(t):
        if not (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)):
            return None
        arr = arr.cast(t.value_type)
        t = arr.type
    if hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t):
        return arr.cast(pa.large_string())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr
    return None


# Arrays are read through their buffers with NumPy, not with Array.to_numpy()/fill_null(): those
# import pandas on first use (over a second of CPU for every task process, more than tokenizing a
# 40 MB input), and neither is needed to read a bitmap or fixed-width values.


def _nulls(arr) -> np.ndarray:
    """bool per element of an Arrow array: True where null (read from its validity bitmap)."""
    n = len(arr)
    if not arr.null_count:
        return np.zeros(n, bool)
    bitmap = arr.buffers()[0]
    if bitmap is None:  # a null-typed array has no bitmap: all null
        return np.ones(n, bool)
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + n] == 0


def _values(arr, dtype) -> np.ndarray:
    """The fixed-width values of an Arrow array as a NumPy view (null slots hold any value)."""
    n = len(arr)
    buf = arr.buffers()[1]
    if buf is None or n == 0:
        return np.zeros(n, dtype)
    return np.frombuffer(buf, dtype)[arr.offset : arr.offset + n]


class Encoder:
    """One task's part files and counters; each add() tokenizes one batch of texts."""

    def __init__(self, tok, options, stem: str, n_threads: int):
        self.tok = tok
        self.repair = options["repair_utf8"]
        self.fail = options["on_error"] == "fail"
        self.n_threads = n_threads
        self.stem = stem
        self.tok_f = open(stem + ".tok.tmp", "wb")
        self.meta_f = open(stem + ".meta.tmp", "wb")
        self.langs, self.lang_ids = [""], {"": 0}
        self.path_lang = None  # the language of every row, from the file's path (--lang-from-path)
        self.line0 = 0  # records before this task's first one (Python records: each file counts on)
        self.res = {
            "lines": 0,
            "docs": 0,
            "tokens": 0,
            "text_bytes": 0,
            "input_bytes": 0,
            "blank_lines": 0,
            "repaired_docs": 0,
            "skipped": {},
            "listed": [],
            "langs": self.langs,
            "error": None,
        }

    def close(self):
        for f in (self.tok_f, self.meta_f):
            f.close()

    def _lang_ids(self, lang, n):
        """uint16 language ids of a batch (0 for a missing, null or non-string value); with a
        language from the path (--lang-from-path), that one for every row."""
        if self.path_lang:
            if len(self.langs) == 1:
                self.langs.append(self.path_lang)
            return np.ones(n, np.uint16)
        if lang is None:
            return None
        lang = _as_text(lang)
        if lang is None:
            return np.zeros(n, np.uint16)
        enc = lang.dictionary_encode()
        table = []
        for v in enc.dictionary.to_pylist():
            v = v.encode("utf-8", "surrogatepass")[: LANG_MAX + 1]
            if len(v) > LANG_MAX:  # cut at a character boundary (as the JSON reader does)
                v = v[:LANG_MAX].decode("utf-8", "ignore").encode("utf-8")
            v = v.split(b"\0", 1)[0].decode("utf-8", "replace")
            i = self.lang_ids.get(v)
            if i is None:
                if len(self.langs) >= MAX_LANGS - 1:
                    v = "(more languages)"
                i = self.lang_ids.get(v)
                if i is None:
                    i = len(self.langs)
                    self.langs.append(v)
                    self.lang_ids[v] = i
            table.append(i)
        table.append(0)
        idx = _values(enc.indices, np.dtype(f"int{enc.indices.type.bit_width}")).astype(np.int64)
        idx[_nulls(enc.indices)] = len(table) - 1
        return np.asarray(table, np.uint16)[idx]

    def add(self, text, lang, n: int, status=None, reason_of=None, where=None):
        """Tokenize a batch of n records: text a string array (None: every record has
        status[i] set), lang an array or None, status a uint8 array of the statuses already known
        (null or non-string text...). where(i) -> (local record number, location text) of record
        i for errors. Returns None, or a fail record (on_error=fail and a bad record)."""
        status = (
            np.zeros(n, np.uint8) if status is None else np.require(status, np.uint8, ["C", "W"])
        )
        data, offsets = None, np.zeros(n + 1, np.int64)
        if text is not None:
            if text.null_count:
                nulls = _nulls(text)
                status[nulls & (status == 0)] = STATUS["field_not_string"]
            bufs = text.buffers()
            width = np.int64 if text.type.id == _large_string_id() else np.int32
            if bufs[1] is not None and n:
                offsets = np.frombuffer(bufs[1], width)[text.offset : text.offset + n + 1].astype(
                    np.int64
                )
            data = bufs[2]
        if self.fail and n:
            pre = np.flatnonzero((status != 0) & (status != STATUS["empty"]))
            if len(pre):
                return self._fail(int(pre[0]), status, reason_of, where)
        r = _dataprep.encode_texts(
            self.tok,
            data,
            offsets,
            status,
            self._lang_ids(lang, n),
            self.repair,
            self.n_threads,
            self.tok_f.fileno(),
            self.meta_f.fileno(),
        )
        bad = np.flatnonzero(status)
        if self.fail:
            hard = bad[status[bad] != STATUS["empty"]]
            if len(hard):
                return self._fail(int(hard[0]), status, reason_of, where)
        for k in ("docs", "tokens", "text_bytes", "repaired_docs"):
            self.res[k] += r[k]
        if len(bad):
            sk = self.res["skipped"]
            for s, c in zip(*np.unique(status[bad], return_counts=True)):
                name = _dataprep.STATUS_NAMES[s]
                sk[name] = sk.get(name, 0) + int(c)
            room = 100 - len(self.res["listed"])
            for i in bad[: max(room, 0)].tolist():
                self.res["listed"].append(
                    (
                        self.line0 + self.res["lines"] + where(i)[0],
                        _dataprep.STATUS_NAMES[status[i]],
                    )
                )
        self.res["lines"] += n
        return None

    def _fail(self, i, status, reason_of, where):
        line, location = where(i)
        reason = _dataprep.STATUS_NAMES[status[i]]
        detail = reason_of(i, status[i]) if reason_of else None
        return {
            "error": "bad_record",
            "fail_line": self.line0 + self.res["lines"] + line,
            "location": location,
            "reason": f"{reason}: {detail}" if detail else reason,
            "lines": self.res["lines"] + line,
        }


_LARGE_STRING_ID = None


def _large_string_id():
    global _LARGE_STRING_ID
    if _LARGE_STRING_ID is None:
        import pyarrow as pa

        _LARGE_STRING_ID = pa.large_string().id
    return _LARGE_STRING_ID


def _prefetch(it):
    """Yield the items of an iterator, computing the next one on a helper thread meanwhile
    (pyarrow decodes with the GIL released, as the C tokenizer runs)."""
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(next, it, None)
        while True:
            item = fut.result()
            if item is None:
                return
            fut = ex.submit(next, it, None)
            yield item


# ----------------------------------------------------------------------------- one task


def tokenize(task: dict, options: dict, stem: str, tok, n_threads: int) -> dict:
    """Tokenize one Parquet/Arrow/records task into stem.tok.tmp / stem.meta.tmp; returns the
    result dict run_task's C call returns (with "error" set for a bad record under fail)."""
    pa, pc, pq, ipc = pyarrow_modules(task["path"])
    enc = Encoder(tok, options, stem, n_threads)
    enc.path_lang = task.get("lang")
    path = task["path"]
    try:
        if task["format"] == "parquet":
            fail = _tokenize_parquet(task, options, enc, pa, pq)
        else:
            fail = _tokenize_ipc(task, options, enc, pa, ipc)
    except (pa.ArrowException, OSError) as e:
        raise OSError(f"{path}: {_one_line(e)}") from None
    finally:
        enc.close()
    res = enc.res
    res["input_bytes"] = task.get("bytes", 0)
    if fail is not None:
        res.update(fail)
    return res


def _fields(schema, options, path):
    text_path = _resolve(schema, options["text_field"])
    lang_path = _resolve(schema, options["lang_field"]) if options["lang_field"] else None
    return text_path, lang_path


def _missing(options, schema):
    cols = ", ".join(schema.names[:20]) + (", ..." if len(schema.names) > 20 else "")
    return f'no column "{options["text_field"]}" (the columns are: {cols or "none"})'


def _add_batch(enc, batch, schema, text_path, lang_path, options, where):
    n = batch.num_rows
    status = np.zeros(n, np.uint8)
    reason_of = None
    text = None
    if text_path is None:
        status[:] = STATUS["missing_field"]
        reason_of = lambda i, s: _missing(options, schema)  # noqa: E731
    else:
        col = _column(batch, text_path)
        text = _as_text(col)
        if text is None:
            status[:] = STATUS["field_not_string"]
            reason_of = lambda i, s: (  # noqa: E731
                f'column "{options["text_field"]}" holds {col.type}, not strings'
            )
        else:
            reason_of = lambda i, s: (  # noqa: E731
                f'column "{options["text_field"]}" is null'
                if s == STATUS["field_not_string"]
                else None
            )
    lang = _column(batch, lang_path) if lang_path else None
    return enc.add(text, lang, n, status, reason_of, where)


def _tokenize_parquet(task, options, enc, pa, pq):
    # buffered reads: a column chunk is streamed page by page, not read whole (memory does not
    # grow with the row group)
    pf = pq.ParquetFile(
        _open_input(task["path"], options), memory_map=False, buffer_size=4 << 20, pre_buffer=False
    )
    schema = pf.schema_arrow
    text_path, lang_path = _fields(schema, options, task["path"])
    columns = [".".join(p) for p in (text_path, lang_path) if p]
    md = pf.metadata
    first_row = task["first_row"]

    def batches():
        row = first_row
        for g in range(task["start"], task["end"]):
            rg = md.row_group(g)
            per_row = max(1, rg.total_byte_size // max(1, rg.num_rows))
            size = max(1, min(65536, BATCH_BYTES // per_row))
            if not columns:  # no text column: only the row counts are needed
                for a in range(0, rg.num_rows, size):
                    yield g, row, a, _EmptyBatch(min(size, rg.num_rows - a), pa)
                    row += min(size, rg.num_rows - a)
                continue
            a = 0
            for b in pf.iter_batches(
                batch_size=size, row_groups=[g], columns=columns, use_threads=False
            ):
                yield g, row, a, b
                row += b.num_rows
                a += b.num_rows

    for g, row, a, batch in _prefetch(batches()):
        # after pyarrow selected columns, a dotted path is still a path through the struct column
        def where(i, g=g, row=row, a=a):
            return i + 1, f"row group {g}, row {a + i} (row {row + i} of the file; counting from 0)"

        fail = _add_batch(enc, batch, schema, text_path, lang_path, options, where)
        if fail is not None:
            return fail
    return None


class _EmptyBatch:
    """A batch of n rows and no columns (a file without the text column)."""

    def __init__(self, n, pa):
        self.num_rows = n
        self.schema = pa.schema([])


def _tokenize_ipc(task, options, enc, pa, ipc):
    with _open_ipc(task["path"], options, pa, ipc, task["start"], task["end"]) as (reader, it):
        schema = reader.schema
        records = task["format"] == "records"
        if records:
            enc.line0 = task["first_row"]
        text_path, lang_path = (
            (["text"], ["lang"] if "lang" in schema.names else None)
            if records
            else _fields(schema, options, task["path"])
        )
        row = task.get("first_row", 0)
        for batch in it:
            if records:

                def where(i, row=row):
                    return i + 1, f"record {row + i} (counting from 0)"

                status = np.array(
                    _values(batch.column(batch.schema.get_field_index("status")), np.uint8)
                )
                text = batch.column(batch.schema.get_field_index("text"))
                lang = batch.column(batch.schema.get_field_index("lang")) if lang_path else None
                fail = enc.add(text, lang, batch.num_rows, status, None, where)
            else:

                def where(i, row=row):
                    return i + 1, f"row {row + i} (counting from 0)"

                fail = _add_batch(enc, batch, schema, text_path, lang_path, options, where)
            if fail is not None:
                return fail
            row += batch.num_rows
    return None


# ----------------------------------------------------------------------------- Python iterables


def is_record_source(inputs) -> bool:
    """True when build() was given records rather than paths: a datasets object, or any iterable
    that is not a str/path or a list/tuple/set of them (a generator is records)."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        return False
    if isinstance(inputs, (list, tuple, set, frozenset)):
        return any(not isinstance(x, (str, bytes, os.PathLike)) for x in inputs)
    return hasattr(inputs, "__iter__")


def _status_of(value):
    if isinstance(value, str):
        return 0
    return STATUS["field_not_string"]


def _get(d, field):
    """d[field], else the dotted path through nested dicts; (found, value)."""
    if field in d:
        return True, d[field]
    cur = d
    for p in field.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return False, None
        cur = cur[p]
    return True, cur


def spill(source, folder: str, options: dict) -> list:
    """Write the records of a Python source into Arrow IPC files of about task_size text bytes
    under folder (columns text, lang, status); returns [(path, n_records, first_record)].

    A datasets.Dataset / IterableDataset is read as Arrow tables (no Python object per record);
    any other iterable item by item: a str is a text, a dict gives its text_field (a dotted name
    reaches into nested dicts) and lang_field; anything else is a bad record."""
    pa, pc, pq, ipc = pyarrow_modules("reading Python records")
    os.makedirs(folder)
    schema = pa.schema([("text", pa.large_string()), ("lang", pa.string()), ("status", pa.uint8())])
    files = []
    state = {"writer": None, "bytes": 0, "rows": 0, "first": 0, "total": 0}

    def flush():
        if state["writer"] is not None:
            state["writer"].close()
            files.append((state["path"], state["rows"], state["first"]))
            state["writer"] = None

    def write(text, lang, status):
        """Append a batch, cutting it where the current file reaches task_size text bytes."""
        n = len(status)
        if n == 0:
            return
        offsets = text.buffers()[1]  # text is a large_string array
        lens = (
            np.diff(np.frombuffer(offsets, np.int64)[text.offset : text.offset + n + 1])
            if offsets
            else np.zeros(n, np.int64)
        )
        lens[_nulls(text)] = 0
        ends = np.cumsum(lens)
        a = 0
        while a < n:
            if state["writer"] is None:
                state["path"] = os.path.join(folder, f"records-{len(files):06d}.arrow")
                state["writer"] = ipc.new_file(state["path"], schema)
                state["bytes"] = state["rows"] = 0
                state["first"] = state["total"]
            room = options["task_size"] - state["bytes"]
            base = ends[a - 1] if a else 0
            b = (
                int(np.searchsorted(ends, base + room, side="left")) + 1
            )  # the record reaching the size ends the file
            b = min(max(b, a + 1), n)
            sl = slice(a, b)
            state["writer"].write_batch(
                pa.record_batch(
                    [text[sl], lang[sl], pa.array(np.asarray(status[sl], np.uint8), pa.uint8())],
                    schema=schema,
                )
            )
            state["rows"] += b - a
            state["total"] += b - a
            state["bytes"] += int(ends[b - 1] - base)
            if state["bytes"] >= options["task_size"]:
                flush()
            a = b

    tf, lf = options["text_field"], options["lang_field"]
    if hasattr(source, "with_format") and hasattr(source, "features"):  # datasets objects
        cols = [c for c in (tf, lf) if c]
        ds = source
        names = (
            set(ds.column_names or []) if getattr(ds, "column_names", None) is not None else None
        )
        if names is not None:
            top = [c.split(".")[0] if c not in names else c for c in cols]
            keep = sorted({c for c in top if c in names})
            # a missing text column must still yield its rows (each one a missing_field record), so
            # keep one column for the row count rather than projecting to none
            ds = ds.select_columns(keep or sorted(names)[:1])
        for table in ds.with_format("arrow").iter(batch_size=10000):
            for batch in table.to_batches():
                text, lang, status = _batch_fields(pa, batch, tf, lf)
                write(text, lang, status)
    else:
        texts, langs, status, size = [], [], [], 0
        for item in source:
            if isinstance(item, str):
                t, lg, s = item, None, 0
            elif isinstance(item, dict):
                found, t = _get(item, tf)
                s = (
                    0
                    if found and isinstance(t, str)
                    else STATUS["missing_field"]
                    if not found
                    else STATUS["field_not_string"]
                )
                if s:
                    t = None
                lg = None
                if lf:
                    ok, lg = _get(item, lf)
                    lg = lg if ok and isinstance(lg, str) else None
            else:
                t, lg, s = None, None, STATUS["field_not_string"]
            texts.append(t)
            langs.append(lg)
            status.append(s)
            size += len(t) if t else 0
            if size >= BATCH_BYTES or len(status) >= 65536:
                write(*_python_batch(pa, texts, langs, status, options))
                texts, langs, status, size = [], [], [], 0
        if status:
            write(*_python_batch(pa, texts, langs, status, options))
    flush()
    return files


def _python_batch(pa, texts, langs, status, options):
    try:
        text = pa.array(texts, pa.large_string())
    except (UnicodeEncodeError, pa.ArrowException):
        # a str holding lone surrogates: a bad record, or U+FFFD under repair_utf8 (as the JSON
        # reader treats a lone \\uD800 escape)
        fixed = []
        for i, t in enumerate(texts):
            if t is not None:
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError:
                    if options["repair_utf8"]:
                        # a pair of surrogates is one character, each lone one a U+FFFD (as the
                        # JSON reader treats \\uD83D\\uDE00 and a lone \\uD800)
                        t = t.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
                    else:
                        t, status[i] = None, STATUS["lone_surrogate"]
            fixed.append(t)
        text = pa.array(fixed, pa.large_string())
    lang = pa.array(
        [x if x is None else x.encode("utf-8", "replace").decode("utf-8") for x in langs],
        pa.string(),
    )
    return text, lang, status


def _batch_fields(pa, batch, tf, lf):
    n = batch.num_rows
    status = np.zeros(n, np.uint8)
    path = _resolve(batch.schema, tf)
    text = None
    if path is None:
        status[:] = STATUS["missing_field"]
    else:
        text = _as_text(_column(batch, path))
        if text is None:
            status[:] = STATUS["field_not_string"]
        elif text.null_count:
            status[_nulls(text)] = STATUS["field_not_string"]
    if text is None:
        text = pa.nulls(n, pa.large_string())
    else:
        text = text.cast(pa.large_string())
    lang = None
    lpath = _resolve(batch.schema, lf) if lf else None
    if lpath is not None:
        lang = _as_text(_column(batch, lpath))
        lang = lang.cast(pa.string()) if lang is not None else None
    if lang is None:
        lang = pa.nulls(n, pa.string())
    return text, lang, status


def replace_folder(src: str, dst: str) -> None:
    """Move a freshly written folder into place (the old one removed first)."""
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    os.rename(src, dst)
