"""One data-prep task, run anywhere: the task runner that build() and every engine share.

* run_task(task, options, workdir, n_threads): a pure function of (task, options) that writes
  `task-NNNNNN.tok` (uint16 tokens, each document followed by 0) and `task-NNNNNN.meta` (32-byte
  records, see dataprep.h) plus a completion record `task-NNNNNN.done.json` holding their sizes and
  SHA-256 (load_done checks one). It is picklable and may run in any concurrent.futures.Executor
  (or on a Ray worker), provided the work directory is shared.
* collect_resumed: the completion records a resumed run already has.

This module sits below build.py (the pipeline) and engines.py (where tasks run); both import it,
it imports neither.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from .. import storage
from ..tokenizer.world import VOCAB_NAME, default_vocab_path  # noqa: F401 (one lookup, re-exported)
from . import _dataprep, columnar
from ..tokenizer.world import WorldTokenizer
from .errors import DataprepError, printable_path
from .formats import sha256_file

# the record formats the C task runner reads (the others, Parquet, Arrow and Python records, are
# read by columnar.py and fed to the C tokenizer)
_C_RECORD_FORMATS = frozenset(f["name"] for f in _dataprep.RECORD_FORMATS)


def default_vocab() -> str:
    """The World vocab of the `rwkv` package (rwkv5.tokenizer.default_vocab_path), or a one-line
    DataprepError saying to install `rwkv` or pass --vocab PATH."""
    try:
        return default_vocab_path("pass --vocab PATH")
    except FileNotFoundError as e:
        raise DataprepError(str(e)) from None


_TOKENIZERS: dict = {}


def load_tokenizer(vocab_path: str) -> WorldTokenizer:
    """The World tokenizer of a vocab file (cached per process and per path); the C functions of
    the data prep take its `capsule`."""
    key = os.path.abspath(vocab_path)
    tok = _TOKENIZERS.get(key)
    if tok is None:
        try:
            tok = WorldTokenizer(key)
        except (OSError, ValueError) as e:
            raise DataprepError(f"--vocab {printable_path(vocab_path)}: {e}") from None
        if tok.n_vocab > 65536:
            raise DataprepError(
                f"--vocab {printable_path(vocab_path)}: ids must fit uint16 "
                f"(n_vocab <= 65536), got n_vocab {tok.n_vocab}"
            )
        _TOKENIZERS[key] = tok
    return tok


def _task_stem(workdir: str, task: dict) -> str:
    return os.path.join(workdir, f"task-{task['id']:06d}")


def _write_json_atomic(path: str, obj, sync: bool = True) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def load_done(workdir: str, task: dict):
    """The completion record of a task if it exists and its parts match it (sizes and SHA-256)."""
    stem = _task_stem(workdir, task)
    try:
        with open(stem + ".done.json", encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if rec.get("task") != task:
        return None
    for ext in ("tok", "meta"):
        p = f"{stem}.{ext}"
        if not os.path.exists(p) or os.path.getsize(p) != rec["parts"][ext]["bytes"]:
            return None
        if sha256_file(p) != rec["parts"][ext]["sha256"]:
            return None
    return rec


def check_record_task(task: dict, rec) -> None:
    """DataprepError when what a worker returned is not a completion record of this task."""
    if not isinstance(rec, dict) or rec.get("task") != task:
        raise DataprepError(
            f"task {task['id']}: the worker returned a completion record for another task "
            f"(expected task {task['id']} of {task['path']})"
        )


def run_task(task: dict, options: dict, workdir: str, n_threads: int = 1) -> dict:
    """Tokenize one task into its part files and completion record; return the record.

    A pure function of (task, options): the same inputs always give byte-identical parts. When a
    valid completion record already exists the task is not run again. A bad record under
    on_error="fail" returns a record with "error" set (and no completion record is written);
    I/O failures raise OSError and leave no completion record.
    """
    done = load_done(workdir, task)
    if done is not None:
        done["resumed"] = True
        return done
    res = tokenize_task(task, options, workdir, n_threads)
    return res if res.get("error") else finish_task(task, res, workdir)


def tokenize_task(
    task: dict, options: dict, workdir: str, n_threads: int = 1, helper: Executor = None
) -> dict:
    """First half of run_task: the C pipeline writes task-N.tok.tmp / .meta.tmp.

    helper: a one-thread executor that runs the C call when called from the main thread (build()
    passes one for the whole run; without it a thread is started for this call)."""
    stem = _task_stem(workdir, task)
    tok = load_tokenizer(options["vocab"])
    t0 = time.perf_counter()
    columnar_task = task["format"] not in _C_RECORD_FORMATS  # Parquet, Arrow, records: columnar.py
    try:
        if columnar_task:
            res = columnar.tokenize(task, options, stem, tok.capsule, n_threads)
        elif storage.is_url(task["path"]):
            res = _run_c_task_on_object(task, options, stem, tok.capsule, n_threads, helper)
        else:
            res = _run_c_task(task, options, stem, tok.capsule, n_threads, helper)
        res["seconds"] = round(time.perf_counter() - t0, 3)
        check_unchanged(task, options.get("storage_options"))
    except BaseException:
        _remove_tmp_parts(stem)
        raise
    if res["error"] is None:
        return res
    _remove_tmp_parts(stem)
    if columnar_task:
        return {
            "task": task,
            **{k: res[k] for k in ("error", "fail_line", "reason", "lines", "location")},
        }
    if res["error"].startswith(task["path"] + ":"):
        # "path:LOCAL_LINE: reason" -> the caller turns the local line into a file line
        rest = res["error"][len(task["path"]) + 1 :]
        line, _, reason = rest.partition(": ")
        if line.isdigit():
            return {
                "task": task,
                "error": "bad_record",
                "fail_line": int(line),
                "reason": reason,
                "lines": res["lines"],
            }
    raise OSError(res["error"])


def _run_c_task(
    task: dict, options: dict, stem: str, tok, n_threads: int, helper: Executor
) -> dict:
    """The C reader/tokenizer on a text input (dp_task.c) writing stem.tok.tmp / stem.meta.tmp."""
    args = (
        tok,
        task["path"],
        task["format"],
        task["start"],
        2**64 - 1 if task["end"] < 0 else task["end"],
        options["text_field"],
        options["lang_field"] or None,
        options["repair_utf8"],
        options["on_error"] == "fail",
        max(1, int(n_threads)),
        stem + ".tok.tmp",
        stem + ".meta.tmp",
        options.get("batch_bytes", 0),
    )
    kwargs = {"codec": task["codec"], "lang": task.get("lang")}
    if threading.current_thread() is not threading.main_thread():
        return _dataprep.run_task(*args, **kwargs)
    # run the C call on a helper thread so that Ctrl-C reaches us: it then sets the cancel flag the
    # C reader polls, waits for the task to stop, and re-raises
    cancel = bytearray(4)
    ex = helper if helper is not None else ThreadPoolExecutor(1)
    fut = None
    try:
        fut = ex.submit(_dataprep.run_task, *args, cancel=cancel, **kwargs)
        return fut.result()
    except BaseException:
        cancel[0] = 1
        if fut is not None:
            try:
                fut.result()
            except BaseException:
                pass
        raise
    finally:
        if ex is not helper:
            ex.shutdown(wait=True)


PIPE_BYTES = 1 << 20  # the pipe between the fetch thread and the C reader (F_SETPIPE_SZ; Linux)


def _run_c_task_on_object(
    task: dict, options: dict, stem: str, tok, n_threads: int, helper: Executor
) -> dict:
    """The C reader/tokenizer on an object-store input (s3://, gs://, ...): a fetch thread reads the
    task's bytes (the whole object, or the byte range of a range task, which the plan cut right
    after a newline) with storage.open_read's ranged reads and read-ahead, and writes them into a
    pipe; the C task reads the pipe as its input file (/dev/fd/N), the same code path as a local
    file. The network and the tokenizer overlap, memory is bounded by the read-ahead blocks and the
    pipe, and the local-file path is untouched. Errors of the C reader name the URL; a failed fetch
    raises (the C reader's end-of-input then is not taken for the end of the object)."""
    url = task["path"]
    reader = storage.open_read(
        url,
        options.get("storage_options"),
        start=task["start"],
        end=None if task["end"] < 0 else task["end"],
        size=task.get("input_bytes"),
    )
    r, w = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # the default pipe size works too (more, smaller writes)
    failure = []

    def feed():
        try:
            with reader:
                buf = bytearray(PIPE_BYTES)
                while True:
                    n = reader.readinto(buf)
                    if n == 0:
                        break
                    view = memoryview(buf)[:n]
                    while view:
                        view = view[os.write(w, view) :]
        except BrokenPipeError:
            pass  # the C reader stopped early (a bad record, an error, Ctrl-C): it says why
        except BaseException as e:  # noqa: BLE001 (raised by the caller below)
            failure.append(e)
        finally:
            os.close(w)

    feeder = threading.Thread(target=feed, name="rwkv5-dataprep-fetch", daemon=True)
    feeder.start()
    fd_path = f"/dev/fd/{r}"
    try:
        res = _run_c_task(
            dict(task, path=fd_path, start=0, end=-1), options, stem, tok, n_threads, helper
        )
    finally:
        os.close(r)  # a feeder blocked on a full pipe gets EPIPE and ends
        feeder.join()
    if failure:
        raise failure[0]
    if res.get("error"):
        res["error"] = res["error"].replace(fd_path, url)
    return res


def check_unchanged(task: dict, storage_options: dict = None) -> None:
    """Raise DataprepError when the task's input no longer has the size and mtime (an object: size
    and ETag) it had when the build was planned (it was written to, truncated or replaced while the
    build read it)."""
    if "input_bytes" not in task:
        return
    path = task["path"]
    if storage.is_url(path):
        try:
            fp = storage.fingerprint(path, storage_options)
        except FileNotFoundError:
            raise DataprepError(f"{path}: the input disappeared during the build") from None
        now = fp.get("etag") or fp.get("mtime") or ""
        if fp["bytes"] != task["input_bytes"] or now != task.get("input_etag", now):
            what = (
                f"{task['input_bytes']} bytes when the build started, {fp['bytes']} now"
                if fp["bytes"] != task["input_bytes"]
                else "its ETag changed"
            )
            raise DataprepError(
                f"{path}: the input changed during the build ({what}); "
                f"its documents may be incomplete; rerun when it no longer changes"
            )
        return
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataprepError(
            f"{path}: the input disappeared during the build ({e.strerror})"
        ) from None
    if st.st_size != task["input_bytes"] or st.st_mtime_ns != task["input_mtime_ns"]:
        what = (
            f"{task['input_bytes']} bytes when the build started, {st.st_size} now"
            if st.st_size != task["input_bytes"]
            else "its modification time changed"
        )
        raise DataprepError(
            f"{path}: the input changed during the build ({what}); "
            f"its documents may be incomplete; rerun when it no longer changes"
        )


def _remove_tmp_parts(stem: str) -> None:
    for ext in ("tok", "meta"):
        try:
            os.remove(f"{stem}.{ext}.tmp")
        except FileNotFoundError:
            pass


def finish_task(task: dict, res: dict, workdir: str) -> dict:
    """Second half of run_task: hash the parts, rename them into place, write the completion record.

    No fsync: a resumed run re-checks part sizes and SHA-256 against the record, so a part lost
    in a power cut is simply redone (the final outputs are fsynced before the manifest)."""
    stem = _task_stem(workdir, task)
    parts = {}
    for ext in ("tok", "meta"):
        tmp = f"{stem}.{ext}.tmp"
        parts[ext] = {"bytes": os.path.getsize(tmp), "sha256": sha256_file(tmp)}
        os.replace(tmp, f"{stem}.{ext}")
    rec = {
        "task": task,
        "parts": parts,
        "seconds": res["seconds"],
        **{
            k: res[k]
            for k in (
                "lines",
                "docs",
                "tokens",
                "text_bytes",
                "input_bytes",
                "blank_lines",
                "repaired_docs",
                "skipped",
                "listed",
                "langs",
            )
        },
    }
    _write_json_atomic(stem + ".done.json", rec, sync=False)
    return rec


MAX_WORKERS = 1024  # the C task runner's limit on threads per task


def _int_option(name: str, value, lo: int, hi: int = None) -> int:
    """An integer option in lo..hi (hi None: no upper bound), or a one-line DataprepError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            value = int(value)
        else:
            raise DataprepError(f"{name}: expected an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        want = f">= {lo}" if hi is None else f"{lo}..{hi}"
        raise DataprepError(f"{name}: expected {want}, got {value}")
    return value


def check_workers(workers) -> int:
    """--workers: None means the CPUs this process may use; otherwise 1..MAX_WORKERS (0 is refused:
    omit the option for all CPUs)."""
    if workers is None:
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    return _int_option("--workers", workers, 1, MAX_WORKERS)


def collect_resumed(tasks: list, workdir: str, records: list, report) -> None:
    """A resumed run: put the valid completion record of every task already done into `records`
    (marked "resumed") and report it; the other entries are left as they are."""
    for i, task in enumerate(tasks):
        rec = load_done(workdir, task)
        if rec is not None:
            rec["resumed"] = True
            records[i] = rec
            report(i, rec)
