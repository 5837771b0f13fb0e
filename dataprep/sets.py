"""An output set on disk: PREFIX.manifest.json and the shard files it lists.

A set is `PREFIX.bin` + `PREFIX.idx` (binidx) or `PREFIX.zst`, or `PREFIX_00000.*`,
`PREFIX_00001.*`, ... when sharded, plus `PREFIX.manifest.json`. The manifest names its shards
relative to its own prefix (`output.prefix`): shard `t16_00003` of a manifest whose prefix is
`t16`, read at the prefix `ren/renamed`, is `ren/renamed_00003`. A set copied or renamed as a
whole is therefore read, verified, merged and scored at its new prefix, and nothing ever reads a
file the prefix it was given does not name.

Publication (`publish`), in this order:

1. every new file is complete and fsynced under a temporary name in PREFIX.work/;
2. the old manifest is removed (from here on readers refuse the set: it has no manifest);
3. files of an earlier set at the prefix that the new set does not have are removed;
4. the new files are renamed into place;
5. the new manifest is renamed into place, last.

A reader (`read_set`, used by `open_shards`) reads the manifest, opens every file it lists, then
reads the manifest again: when it is still there and unchanged, no step 2 happened before the
files were opened, so every file opened is the one that manifest describes (an open file keeps
its contents when a later rename replaces its name). Otherwise it starts over.

Writers of a prefix (build, merge, unpack) hold `PrefixLock`, an exclusive `flock` on
PREFIX.work/lock, for their whole run: a second writer fails at once with one line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import uuid

from .errors import DataprepError

MANIFEST_FORMAT = "rwkv5-dataprep-manifest"
MANIFEST_SUFFIX = ".manifest.json"
FORMAT_EXTS = {"binidx": (".bin", ".idx"), "zst": (".zst",)}
# the names of a set's data files relative to its prefix: "", "_00000", "_00001", ... + extension
_SHARD_SUFFIX = r"(_[0-9]{5,})?"
_SET_FILE_SUFFIX = re.compile(_SHARD_SUFFIX + r"\.(bin|idx|zst)")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def manifest_path(prefix: str) -> str:
    return prefix + MANIFEST_SUFFIX


# ----------------------------------------------------------------------------- reading a manifest


def read_manifest_bytes(prefix: str) -> bytes:
    path = manifest_path(prefix)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        work = (
            " (PREFIX.work/ exists: a build of it is running or did not finish)"
            if os.path.isdir(prefix + ".work")
            else ""
        )
        raise DataprepError(
            f"{path}: no manifest (is {prefix!r} the --out PREFIX of a finished build? "
            f"a set is read only through its manifest, which is written last){work}"
        ) from None
    except OSError as e:
        raise DataprepError(f"{path}: cannot read: {e.strerror or e}") from None


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def parse_manifest(data: bytes, path: str) -> dict:
    """The manifest in `data` (read from `path`), its shape checked: every field the readers use is
    there with the right type, and every shard and file name lies at the manifest's own prefix."""
    try:
        m = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DataprepError(f"{path}: not valid JSON ({e})") from None

    def bad(what):
        return DataprepError(f"{path}: not a data-prep manifest: {what}")

    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise bad(f'"format" is not {MANIFEST_FORMAT!r}')
    out = m.get("output")
    if not isinstance(out, dict):
        raise bad('"output" is not an object')
    mprefix, fmt = out.get("prefix"), out.get("format")
    if (
        not isinstance(mprefix, str)
        or not mprefix
        or "/" in mprefix
        or "\0" in mprefix
        or mprefix in (".", "..")
    ):
        raise bad('"output.prefix" is not a file name')
    if fmt not in FORMAT_EXTS:
        raise bad(f'"output.format" is {fmt!r}, expected one of {sorted(FORMAT_EXTS)}')
    tk = m.get("tokenizer")
    if (
        not isinstance(tk, dict)
        or not _is_count(tk.get("n_vocab"))
        or not 1 <= tk["n_vocab"] <= 65536
    ):
        raise bad('"tokenizer.n_vocab" is not a number in 1..65536')
    if "vocab_sha256" in tk and not (
        isinstance(tk["vocab_sha256"], str) and _SHA256.fullmatch(tk["vocab_sha256"])
    ):
        raise bad('"tokenizer.vocab_sha256" is not a SHA-256')
    tot = m.get("totals")
    if (
        not isinstance(tot, dict)
        or not _is_count(tot.get("documents"))
        or not _is_count(tot.get("tokens"))
    ):
        raise bad('"totals" has no document and token counts')
    shards = m.get("shards")
    if not isinstance(shards, list):
        raise bad('"shards" is not a list')
    name_re = re.compile(re.escape(mprefix) + _SHARD_SUFFIX)
    seen = set()
    for k, s in enumerate(shards):
        if not isinstance(s, dict):
            raise bad(f"shard {k} is not an object")
        name = s.get("name")
        if not isinstance(name, str) or not name_re.fullmatch(name) or name in seen:
            raise bad(
                f"shard {k}: name {name!r} is not {mprefix!r} or {mprefix!r}_NNNNN (or is repeated)"
            )
        seen.add(name)
        if not _is_count(s.get("documents")) or not _is_count(s.get("tokens")):
            raise bad(f"shard {name}: no document and token counts")
        files = s.get("files")
        want = {name + ext for ext in FORMAT_EXTS[fmt]}
        if not isinstance(files, dict) or set(files) != want:
            raise bad(f'shard {name}: "files" must list exactly {sorted(want)}')
        for fname, info in files.items():
            if (
                not isinstance(info, dict)
                or not _is_count(info.get("bytes"))
                or not (isinstance(info.get("sha256"), str) and _SHA256.fullmatch(info["sha256"]))
            ):
                raise bad(f"shard {name}: file {fname}: no byte count and SHA-256")
    # what `stats` prints (optional: sets written by merge/unpack have empty tables)
    st = m.get("statistics", {})
    if not isinstance(st, dict):
        raise bad('"statistics" is not an object')
    for table in ("per_script", "per_language"):
        rows = st.get(table, {})
        if not isinstance(rows, dict):
            raise bad(f'"statistics.{table}" is not an object')
        for key, e in rows.items():
            if (
                not isinstance(e, dict)
                or not all(_is_count(e.get(c)) for c in ("documents", "bytes", "tokens"))
                or not isinstance(e.get("bytes_per_token"), (int, float, type(None)))
                or isinstance(e.get("bytes_per_token"), bool)
            ):
                raise bad(
                    f'"statistics.{table}" entry {key!r} has no document, byte and token counts'
                )
    sk = m.get("skipped", {"counts": {}, "total": 0, "first": []})
    if (
        not isinstance(sk, dict)
        or not isinstance(sk.get("counts"), dict)
        or not _is_count(sk.get("total"))
        or not isinstance(sk.get("first"), list)
        or not all(_is_count(v) for v in sk["counts"].values())
    ):
        raise bad('"skipped" has no counts, total and first records')
    if not isinstance(m.get("rwkv_lm_args", ""), (str, type(None))):
        raise bad('"rwkv_lm_args" is not text')
    return m


def read_manifest(prefix: str) -> dict:
    """PREFIX.manifest.json, its shape checked (DataprepError with one line otherwise)."""
    return parse_manifest(read_manifest_bytes(prefix), manifest_path(prefix))


def shard_paths(prefix: str, m: dict) -> list:
    """[(stem, {ext: (path, info)}, shard entry)] of a (checked) manifest read at `prefix`: every
    name is taken relative to the manifest's own prefix and put at the prefix given."""
    mprefix = m["output"]["prefix"]
    out = []
    for s in m["shards"]:
        stem = prefix + s["name"][len(mprefix) :]
        files = {
            fname[len(s["name"]) :]: (stem + fname[len(s["name"]) :], info)
            for fname, info in s["files"].items()
        }
        out.append((stem, files, s))
    return out


def files_at(prefix: str) -> list:
    """The data files at `prefix` that a set there could own: PREFIX.bin/.idx/.zst and
    PREFIX_NNNNN.bin/.idx/.zst, sorted (paths spelled from the prefix as given)."""
    d, base = os.path.split(prefix)
    try:
        names = os.listdir(d or ".")
    except OSError:
        return []
    return sorted(
        prefix + n[len(base) :]
        for n in names
        if n.startswith(base) and _SET_FILE_SUFFIX.fullmatch(n[len(base) :])
    )


def unlisted_files(prefix: str, m: dict) -> list:
    """Files at the prefix that could belong to a set but that the manifest does not list."""
    listed = {p for _stem, files, _s in shard_paths(prefix, m) for p, _info in files.values()}
    return [p for p in files_at(prefix) if p not in listed]


# ----------------------------------------------------------------------------- writing a set


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(prefix: str, renames: list, manifest: dict, tmpdir: str) -> list:
    """Put a new set in place at `prefix` in the order the module docstring gives: renames is
    [(complete temporary file, final path)]; the manifest is serialized (and written to tmpdir)
    before anything at the prefix changes. Returns the files of an earlier set that were removed."""
    data = (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    out_dir = os.path.dirname(prefix)
    tmp_manifest = os.path.join(tmpdir, os.path.basename(prefix) + MANIFEST_SUFFIX + ".tmp")
    with open(tmp_manifest, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    # 2. without a manifest nobody reads the set while its files are replaced
    try:
        os.remove(manifest_path(prefix))
        fsync_dir(out_dir)
    except FileNotFoundError:
        pass
    # 3. a build owns its prefix: no file of an earlier set stays under a final name
    finals = {final for _tmp, final in renames}
    stale = [p for p in files_at(prefix) if p not in finals]
    for p in stale:
        os.remove(p)
    # 4., 5.
    for tmp, final in renames:
        os.replace(tmp, final)
    fsync_dir(out_dir)
    os.replace(tmp_manifest, manifest_path(prefix))
    fsync_dir(out_dir)
    return stale


# ----------------------------------------------------------------------------- one writer per prefix


class PrefixLock:
    """Exclusive lock of a prefix's work area PREFIX.work/ (`flock` on PREFIX.work/lock), held by a
    build (or merge/unpack) from before it plans until its set is published. A second writer of
    the same prefix fails at once with one line naming the lock and the process holding it.

        with PrefixLock(prefix) as lock:
            ...                               # lock.workdir is ours
            lock.remove_workdir()             # optional, at the end: the work area goes, the lock with it
    """

    def __init__(self, prefix: str, workdir: str = None):
        self.prefix = prefix
        self.workdir = workdir or prefix + ".work"  # another folder: --work-dir of a URL --out
        self.path = os.path.join(self.workdir, "lock")
        self.fd = -1

    def __enter__(self):
        for _ in range(100):
            try:
                os.mkdir(self.workdir)
            except FileExistsError:
                pass
            except OSError as e:
                raise DataprepError(
                    f"{self.workdir}: cannot create the work area: {e.strerror or e}"
                ) from None
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # the work area was just removed by a writer that finished
                continue
            except OSError as e:
                raise DataprepError(
                    f"{self.path}: cannot create the lock of the work area: {e.strerror or e}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = ""
                try:
                    pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    holder = f" by process {pid}" if pid.isdigit() else ""
                except OSError:
                    pass
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DataprepError(
                        f"{self.prefix}: another build, merge or unpack is writing this prefix "
                        f"({self.path} is locked{holder}); wait for it to end"
                    ) from None
                raise DataprepError(
                    f"{self.path}: cannot lock the work area: {e.strerror or e}"
                ) from None
            # a writer that finishes renames its work area away before it unlocks: make sure the
            # file locked is still the one at the path
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                os.close(fd)
                continue
            fst = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd
            return self
        raise DataprepError(f"{self.path}: could not lock the work area (it keeps being removed)")

    def clear(self, keep=lambda name: False) -> int:
        """Remove everything in the work area but the lock and the names `keep` accepts; returns
        the number of entries removed."""
        n = 0
        for name in os.listdir(self.workdir):
            if name == "lock" or keep(name):
                continue
            p = os.path.join(self.workdir, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    os.remove(p)
                except FileNotFoundError:
                    pass
            n += 1
        return n

    def remove_workdir(self) -> None:
        """Remove the work area while still holding its lock (it is renamed away first, so a writer
        that starts now makes a fresh one and never shares files with the one going away)."""
        trash = f"{self.workdir}.removing-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.workdir, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def is_empty(self) -> bool:
        try:
            return os.listdir(self.workdir) == ["lock"]
        except OSError:
            return False

    def __exit__(self, exc_type, exc, tb):
        if self.fd >= 0:
            if self.is_empty():
                self.remove_workdir()  # nothing left here: leave no trace
            os.close(self.fd)
            self.fd = -1
        return False
