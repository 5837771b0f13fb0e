"""The write side of a build on an object store (s3://, gs://, ... through rwkv5.storage): a work
area on the store, and a set published at a URL prefix.

A build always runs against a local folder (its *staging* folder): the tasks write their parts
there and the merge writes the new set's files there, exactly as for a local --out. Around it:

* **A work area on the store** (``StoreWorkArea``): ``PREFIX.work/`` next to a URL ``--out``, or
  the URL given to ``--work-dir``. It holds ``plan.json``, ``ended.json`` and, for every completed
  task, ``task-N.tok`` and ``task-N.meta`` and then its completion record ``task-N.done.json``:
  the record is uploaded last, so a record on the store means that its parts are complete there.
  A build first pulls the plan and the records into its staging folder (then the parts of the
  records it can use, each checked against its record's size and SHA-256), so a killed build
  resumes from the store on any machine. Tasks run elsewhere (Ray without a shared filesystem)
  upload their parts and record themselves (``run_task_on_store``); the driver pulls and checks
  them (``pull_task``).
* **Publication at a URL prefix** (``publish_url``), in this order: every new file is uploaded
  under a temporary key ``PREFIX.work/publish/NAME`` (multipart above twice the part size) and
  its size checked; then the old manifest is deleted, files of an earlier set that the new set
  does not have are deleted, the new files are copied to their final names on the store (a
  server-side copy), and the manifest is copied to its name last. A reader that finds the
  manifest therefore finds every file it lists, complete; while the uploads run the old set stays
  readable.

Every store operation goes through ``storage.retry`` (transient errors retried with backoff and
counted; a missing object or a refused permission fails at once with one line naming the URL).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

from .. import storage
from .errors import DataprepError
from .formats import sha256_file
from .sets import MANIFEST_SUFFIX, PrefixLock, _SET_FILE_SUFFIX, publish
from .tasks import _task_stem, _write_json_atomic, check_record_task, load_done, run_task

PART_SIZE_ENV = "RWKV5_STORAGE_PART_SIZE"
PART_SIZE = 64 << 20  # bytes per part of a multipart upload (S3 needs >= 5 MiB but the last)
PUBLISH_DIR = "publish"
_TASK_EXTS = ("tok", "meta", "done.json")
# the names a work area on a store holds (nothing else is ever deleted there)
_WORK_NAME = re.compile(r"(plan|ended)\.json|task-[0-9]{6}\.(tok|meta|done\.json)|" + PUBLISH_DIR)


def _part_size() -> int:
    return int(os.environ.get(PART_SIZE_ENV, PART_SIZE))


def _join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def upload(local: str, url: str, storage_options: dict = None) -> None:
    """Put the local file at ``url`` (a multipart upload when it is at least twice the part size,
    on stores that have them); retried as a whole on a transient error. The object appears only
    when complete (object stores never show a partial PUT or multipart upload)."""
    fs, path = storage.filesystem(url, storage_options)
    kw = {"chunksize": _part_size()} if storage.protocol(url) in ("s3", "s3a") else {}
    storage.retry(fs.put_file, local, path, url=url, what="upload", **kw)


def download(url: str, local: str, storage_options: dict = None) -> None:
    """Get the object at ``url`` into the local file (written under local + '.tmp', then renamed)."""
    fs, path = storage.filesystem(url, storage_options)
    tmp = local + ".tmp"
    try:
        storage.retry(fs.get_file, path, tmp, url=url, what="download")
        os.replace(tmp, local)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def put_json(url: str, obj, storage_options: dict = None) -> None:
    fs, path = storage.filesystem(url, storage_options)
    data = (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    storage.retry(fs.pipe_file, path, data, url=url, what="upload")


def remove(urls, storage_options: dict = None) -> None:
    """Delete the objects, in batches where the store has them (those already gone are no error)."""
    urls = list(urls)
    if not urls:
        return
    fs, _ = storage.filesystem(urls[0], storage_options)
    try:
        storage.retry(fs.rm, [fs._strip_protocol(u) for u in urls], url=urls[0], what="delete")
    except FileNotFoundError:
        pass


def list_names(url: str, storage_options: dict = None) -> dict:
    """{name: size} of the objects directly under the "folder" ``url`` ({} when there are none)."""
    fs, path = storage.filesystem(url, storage_options)
    try:
        entries = storage.retry(fs.ls, path, detail=True, refresh=True, url=url, what="list")
    except FileNotFoundError:
        return {}
    return {
        e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
        for e in entries
        if e.get("type") != "directory"
    }


def remove_tree(url: str, storage_options: dict = None) -> None:
    """Delete every object under the "folder" ``url`` (only ever a work area's own publish/ folder,
    or a work area that check_store_work_area accepted)."""
    fs, path = storage.filesystem(url, storage_options)
    try:
        found = storage.retry(fs.find, path, url=url, what="list")
    except FileNotFoundError:
        return
    remove([fs.unstrip_protocol(p) for p in found], storage_options)


# ----------------------------------------------------------------------------- output prefixes


def check_out_url(out: str, option: str = "--out", storage_options: dict = None) -> str:
    """A URL output prefix (s3://bucket/out/train), refused with one line when it names a folder
    or has no name; fsspec and the protocol's package are checked here (before any input is read)."""
    if out.endswith("/") or out.rstrip("/").split("://", 1)[1].count("/") < 1:
        raise DataprepError(
            f"{option} {out}: is a folder or a bucket; give a file prefix inside it "
            f"(e.g. {out.rstrip('/')}/train)"
        )
    storage.filesystem(out, storage_options)
    return out


def check_work_dir(out: str, work_dir):
    """--work-dir: a URL (a work area on a store), or a local folder for a URL --out (a local
    --out keeps its work area at PREFIX.work: its files are renamed into place from there)."""
    if work_dir is None:
        return None
    work_dir = os.fsdecode(os.fspath(work_dir))
    if work_dir == "":
        raise DataprepError("--work-dir '': expected a folder or a URL")
    if storage.is_url(work_dir):
        return work_dir.rstrip("/")
    if not storage.is_url(out):
        raise DataprepError(
            f"--work-dir {work_dir}: a local --out keeps its work area at PREFIX.work "
            f"(the new files are renamed into place from there); --work-dir takes a URL "
            f"(a work area on an object store) or, for an --out URL, a local folder"
        )
    full = os.path.abspath(work_dir)
    if not os.path.isdir(os.path.dirname(full)):
        raise DataprepError(f"--work-dir {full}: folder {os.path.dirname(full)} does not exist")
    # the work area's files are cleared and the folder removed at the end: never a folder of other files
    if (
        os.path.isdir(full)
        and os.listdir(full)
        and not {"plan.json", "lock"} & set(os.listdir(full))
    ):
        raise DataprepError(
            f"--work-dir {full}: holds files and is not a work area of a build (it is "
            f"cleared and removed after the build); give a new or empty folder"
        )
    if os.path.exists(full) and not os.path.isdir(full):
        raise DataprepError(f"--work-dir {full}: is a file; give a new or empty folder")
    return full


def check_store_work_area(url: str, storage_options: dict = None) -> None:
    """A work area on a store is cleared and deleted after the build: refuse a prefix that holds
    anything a work area does not (``--work-dir s3://bucket/data`` must not delete data/)."""
    fs, path = storage.filesystem(url, storage_options)
    try:
        entries = storage.retry(fs.ls, path, detail=True, refresh=True, url=url, what="list")
    except FileNotFoundError:
        return
    foreign = sorted(
        n
        for n in (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries)
        if not _WORK_NAME.fullmatch(n)
    )
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise DataprepError(
            f"--work-dir {url}: holds objects that are not a build's work area "
            f"({', '.join(foreign[:3])}{more}); it is cleared and deleted after the build: "
            f"give a new prefix"
        )


# ----------------------------------------------------------------------------- the work area


class _TempStaging:
    """A private local staging folder (for a work area that lives on a store): removed on exit,
    whatever happened, since everything worth keeping is on the store."""

    def __init__(self):
        self.workdir = None

    def __enter__(self):
        self.workdir = tempfile.mkdtemp(prefix="rwkv5-prep-")
        return self

    def clear(self, keep=lambda name: False) -> int:
        n = 0
        for name in os.listdir(self.workdir):
            if keep(name):
                continue
            p = os.path.join(self.workdir, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.remove(p)
            n += 1
        return n

    def remove_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(self, *exc):
        self.remove_workdir()
        return False


class StoreWorkArea:
    """A build's work area on an object store at ``url``, with its local staging folder
    ``workdir`` (what build() runs against; the same interface as sets.PrefixLock: workdir,
    clear, remove_workdir).

    No lock is taken on the store (object stores have no such thing): one build per prefix is up
    to the user there."""

    def __init__(self, url: str, staging, storage_options: dict = None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._staging = staging
        self.workdir = None

    def __enter__(self):
        self._staging.__enter__()
        self.workdir = self._staging.workdir
        return self

    def __exit__(self, *exc):
        return self._staging.__exit__(*exc)

    def object(self, name: str) -> str:
        return _join(self.url, name)

    # --- before the run: the plan and completion records from the store
    def pull_records(self) -> None:
        """Download plan.json, ended.json and every task-N.done.json of the store's work area into
        the staging folder (replacing what is there), and drop local ones the store lacks."""
        check_store_work_area(self.url, self.storage_options)
        names = list_names(self.url, self.storage_options)
        want = [n for n in names if n in ("plan.json", "ended.json") or n.endswith(".done.json")]
        for n in os.listdir(self.workdir):
            if (n in ("plan.json", "ended.json") or n.endswith(".done.json")) and n not in names:
                os.remove(os.path.join(self.workdir, n))
        if want:
            fs, _ = storage.filesystem(self.url, self.storage_options)
            paths = [fs._strip_protocol(self.object(n)) for n in want]
            data = storage.retry(
                fs.cat, paths, url=self.url, what="read of the work area's records"
            )
            for n, p in zip(want, paths):
                with open(os.path.join(self.workdir, n), "wb") as f:
                    f.write(data[p])

    def push_plan(self) -> None:
        """After _prepare_workdir: the plan it wrote goes to the store, and ended.json leaves the
        store when it left the staging folder (the run goes on). Records it discarded left the
        store in clear()."""
        if not os.path.exists(os.path.join(self.workdir, "ended.json")):
            remove([self.object("ended.json")], self.storage_options)
        upload(
            os.path.join(self.workdir, "plan.json"), self.object("plan.json"), self.storage_options
        )

    def pull_parts(self, tasks: list) -> None:
        """Download the parts of every task whose completion record was pulled; a record whose
        parts are missing on the store or differ from it (size, SHA-256) is dropped (the task
        runs again)."""
        for task in tasks:
            stem = _task_stem(self.workdir, task)
            if not os.path.exists(stem + ".done.json"):
                continue
            try:
                for ext in ("tok", "meta"):
                    download(
                        self.object(f"task-{task['id']:06d}.{ext}"),
                        f"{stem}.{ext}",
                        self.storage_options,
                    )
            except FileNotFoundError:
                pass
            if load_done(self.workdir, task) is None:
                for ext in _TASK_EXTS:
                    try:
                        os.remove(f"{stem}.{ext}")
                    except FileNotFoundError:
                        pass

    # --- during the run
    def push_task(self, rec: dict) -> dict:
        """Upload a finished task's parts from the staging folder, then its record (last)."""
        push_task(self.url, self.workdir, rec["task"], self.storage_options)
        return rec

    def write_ended(self, obj) -> None:
        _write_json_atomic(os.path.join(self.workdir, "ended.json"), obj)
        upload(
            os.path.join(self.workdir, "ended.json"),
            self.object("ended.json"),
            self.storage_options,
        )

    # --- the interface of sets.PrefixLock
    def clear(self, keep=lambda name: False) -> int:
        n = self._staging.clear(keep)
        names = list_names(self.url, self.storage_options)
        remove(
            [self.object(x) for x in names if not keep(x) and _WORK_NAME.fullmatch(x)],
            self.storage_options,
        )
        return n

    def remove_workdir(self) -> None:
        remove(
            [
                self.object(x)
                for x in list_names(self.url, self.storage_options)
                if _WORK_NAME.fullmatch(x)
            ],
            self.storage_options,
        )
        remove_tree(self.object(PUBLISH_DIR), self.storage_options)
        self._staging.remove_workdir()


def staging(out: str):
    """The local folder merge/unpack write a set's files into before publishing it: the locked
    PREFIX.work of a local prefix, a private temporary folder for a URL."""
    return _TempStaging() if storage.is_url(out) else PrefixLock(out)


def work_area(out: str, work_dir, storage_options: dict = None):
    """The context manager a build of `out` runs in (its `.workdir` is the local staging folder):
    sets.PrefixLock(out) for a local --out without --work-dir (the local build, unchanged); a
    StoreWorkArea when the work area is on a store; PrefixLock(out, workdir) for a local
    --work-dir of a URL --out."""
    url_out = storage.is_url(out)
    if work_dir is None and not url_out:
        return PrefixLock(out)
    if work_dir is not None and not storage.is_url(work_dir):
        return PrefixLock(out, workdir=work_dir)
    url = work_dir if work_dir is not None else out + ".work"
    staging = PrefixLock(out) if not url_out else _TempStaging()
    return StoreWorkArea(url, staging, storage_options)


def push_task(work_url: str, local_dir: str, task: dict, storage_options: dict = None) -> None:
    """Upload task-N.tok and task-N.meta from local_dir to the work area at work_url, then
    task-N.done.json (last: a record on the store vouches for its parts)."""
    name = f"task-{task['id']:06d}"
    for ext in _TASK_EXTS:
        upload(
            os.path.join(local_dir, f"{name}.{ext}"),
            _join(work_url, f"{name}.{ext}"),
            storage_options,
        )


def run_task_on_store(
    task: dict, options: dict, work_url: str, n_threads: int = 1, storage_options: dict = None
) -> dict:
    """What an executor runs when the work area is on a store (no shared filesystem): run_task in
    a private temporary folder on the worker's own disk, upload its parts and then its completion
    record to the store, return the record (with the retries this task met, "storage_retries")."""
    before = storage.retry_counts()["retries"]
    with tempfile.TemporaryDirectory(prefix="rwkv5-task-") as private:
        rec = run_task(task, options, private, n_threads)
        if not rec.get("error"):
            push_task(work_url, private, task, storage_options)
    rec["storage_retries"] = storage.retry_counts()["retries"] - before
    return rec


def pull_task(work_url: str, workdir: str, task: dict, rec, storage_options: dict = None) -> dict:
    """On the driver: download the parts a worker reported done from the store's work area into
    the staging folder, check them against its record (sizes, SHA-256), and write the record
    there. DataprepError naming the task and the object when a part is missing or differs."""
    check_record_task(task, rec)
    if rec.get("error"):
        return rec
    stem = _task_stem(workdir, task)
    for ext in ("tok", "meta"):
        url = _join(work_url, f"task-{task['id']:06d}.{ext}")
        try:
            download(url, f"{stem}.{ext}", storage_options)
        except FileNotFoundError:
            raise DataprepError(
                f"task {task['id']}: part {url} is not on the store although the worker "
                f"reported it done"
            ) from None
        want = rec["parts"][ext]
        size = os.path.getsize(f"{stem}.{ext}")
        if size != want["bytes"] or sha256_file(f"{stem}.{ext}") != want["sha256"]:
            raise DataprepError(
                f"task {task['id']}: part {url} ({size} bytes) does not match the size and "
                f"SHA-256 of its completion record ({want['bytes']} bytes)"
            )
    local = {k: v for k, v in rec.items() if k != "storage_retries"}
    _write_json_atomic(stem + ".done.json", local, sync=False)
    return rec


# ----------------------------------------------------------------------------- publication


def publish_set(
    prefix: str, renames: list, manifest: dict, tmpdir: str, storage_options: dict = None
) -> list:
    """sets.publish for a local prefix, publish_url for a URL."""
    if storage.is_url(prefix):
        return publish_url(prefix, renames, manifest, tmpdir, storage_options)
    return publish(prefix, renames, manifest, tmpdir)


def publish_url(
    prefix: str, renames: list, manifest: dict, tmpdir: str, storage_options: dict = None
) -> list:
    """Put a new set in place at the URL prefix (see the module docstring for the order): renames
    is [(complete local file, final URL)]. Returns the URLs of an earlier set's files removed."""
    name = prefix.rstrip("/").rsplit("/", 1)[1]
    tmp_manifest = os.path.join(tmpdir, name + MANIFEST_SUFFIX + ".tmp")
    with open(tmp_manifest, "wb") as f:
        f.write((json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    staged_dir = prefix + ".work/" + PUBLISH_DIR
    fs, _ = storage.filesystem(prefix, storage_options)
    staged = []
    # 1. every file complete under a temporary key, then their sizes checked (one listing)
    for local, final in renames + [(tmp_manifest, prefix + MANIFEST_SUFFIX)]:
        key = _join(staged_dir, final.rsplit("/", 1)[1])
        upload(local, key, storage_options)
        staged.append((key, final, os.path.getsize(local)))
    sizes = list_names(staged_dir, storage_options)
    for key, _final, want in staged:
        got = sizes.get(key.rsplit("/", 1)[1])
        if got != want:
            raise DataprepError(
                f"{key}: the store holds {'no object' if got is None else f'{got} bytes'} after "
                f"the upload of {want} bytes; nothing was published"
            )
    # 2. without a manifest nobody reads the set while its files are replaced
    remove([prefix + MANIFEST_SUFFIX], storage_options)
    # 3. files of an earlier set that the new set does not have
    parent, base = prefix.rsplit("/", 1)
    finals = {final for _key, final, _size in staged}
    stale = [
        _join(parent, n)
        for n in sorted(list_names(parent, storage_options))
        if n.startswith(base)
        and _SET_FILE_SUFFIX.fullmatch(n[len(base) :])
        and _join(parent, n) not in finals
    ]
    remove(stale, storage_options)
    # 4., 5. server-side copies to the final names, the manifest last
    for key, final, _size in staged:
        storage.retry(
            fs.copy, fs._strip_protocol(key), fs._strip_protocol(final), url=final, what="copy"
        )
    remove_tree(staged_dir, storage_options)
    return stale
