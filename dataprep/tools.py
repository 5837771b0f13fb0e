"""Readers and maintenance commands for data-prep outputs: open_shards, inspect, verify, stats,
merge (binidx sets), unpack (zst -> binidx)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Sequence

import numpy as np

from .. import storage
from . import remote
from .build import magic_prime, magic_prime_line
from .errors import DataprepError
from .formats import BinIdx, FormatError, ZstShard, sha256_file, write_idx
from .sets import (
    MANIFEST_SUFFIX,
    _SET_FILE_SUFFIX,
    manifest_path,
    parse_manifest,
    read_manifest,
    read_manifest_bytes,
    shard_paths,
    unlisted_files,
)
from .tasks import default_vocab, load_tokenizer


def shard_stems(prefix: str) -> tuple:
    """([shard stem], format) of the output set PREFIX, from its manifest (names taken relative to
    the manifest's own prefix, so a renamed set resolves to its new names)."""
    m = read_manifest(prefix)
    return [stem for stem, _files, _s in shard_paths(prefix, m)], m["output"]["format"]


_OPEN_ATTEMPTS = 5


def _open_shard(stem: str, files: dict, entry: dict, fmt: str):
    """Open one shard and check it against its manifest entry (counts and file sizes)."""
    if fmt == "binidx":
        sh = BinIdx(stem)
        have = {".bin": 2 * sh.n_tokens, ".idx": os.path.getsize(stem + ".idx")}
    else:
        sh = ZstShard(stem + ".zst")
        have = {".zst": os.fstat(sh._f.fileno()).st_size}
    try:
        for ext, (path, info) in files.items():
            if have[ext] != info["bytes"]:
                raise DataprepError(f"{path}: {have[ext]} bytes, the manifest says {info['bytes']}")
        if len(sh) != entry["documents"] or sh.n_tokens != entry["tokens"]:
            raise DataprepError(
                f"{stem}: {len(sh)} documents / {sh.n_tokens} tokens, the manifest says "
                f"{entry['documents']} / {entry['tokens']}"
            )
    except BaseException:
        if hasattr(sh, "close"):
            sh.close()
        raise
    return sh


class ShardSet:
    """All documents of an output set (binidx or zst, one or many shards), in order.

    Iterating yields one uint16 NumPy array per document, each ending with the 0 token.
    A set is read only through its complete manifest: the files it lists at PREFIX (see
    dataprep/sets.py), each checked against the manifest's counts and sizes. The manifest is read
    again once every file is open; a set replaced meanwhile by a rebuild is opened anew.
    bare_binidx=True also reads a PREFIX.bin/.idx pair that has no manifest (RWKV-LM's make_data
    writes those; self.manifest is then None) unless PREFIX.work/ exists (a build of PREFIX is
    running or did not finish: its files are not a set).
    """

    def __init__(self, prefix: str, bare_binidx: bool = False):
        self.prefix = prefix
        if (
            bare_binidx
            and not os.path.exists(manifest_path(prefix))
            and os.path.exists(prefix + ".idx")
            and not os.path.isdir(prefix + ".work")
        ):
            self.manifest, self._manifest_bytes, self.format = None, None, "binidx"
            self.shards, self.stems = [BinIdx(prefix)], [prefix]
            self._starts = np.cumsum([0, len(self.shards[0])])
            return
        for _ in range(_OPEN_ATTEMPTS):
            data = read_manifest_bytes(prefix)
            m = parse_manifest(data, manifest_path(prefix))
            fmt = m["output"]["format"]
            shards = []
            try:
                for stem, files, entry in shard_paths(prefix, m):
                    shards.append(_open_shard(stem, files, entry, fmt))
            except (OSError, ValueError, DataprepError) as e:
                for sh in shards:
                    if hasattr(sh, "close"):
                        sh.close()
                if _manifest_unchanged(prefix, data):
                    if isinstance(e, FileNotFoundError):
                        raise DataprepError(
                            f"{e.filename}: missing (listed in {manifest_path(prefix)})"
                        ) from None
                    if isinstance(e, OSError):
                        raise DataprepError(f"{e.filename}: {e.strerror or e}") from None
                    raise
                continue
            if _manifest_unchanged(prefix, data):
                break
            for sh in shards:
                if hasattr(sh, "close"):
                    sh.close()
        else:
            raise DataprepError(
                f"{prefix}: the set was replaced {_OPEN_ATTEMPTS} times while it was being opened "
                f"(a build is rewriting it); try again when it ends"
            )
        self.manifest = m
        self._manifest_bytes = data
        self.format = fmt
        self.shards = shards
        self.stems = [stem for stem, _f, _e in shard_paths(prefix, m)]
        self._starts = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range (0..{n - 1})")
        i %= n
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.shards[k][i - int(self._starts[k])]

    def __iter__(self) -> Iterator[np.ndarray]:
        for s in self.shards:
            yield from s

    def close(self):
        for s in self.shards:
            if hasattr(s, "close"):
                s.close()
        if getattr(self, "_staged", None):  # the local copy of a set read from a URL
            shutil.rmtree(self._staged, ignore_errors=True)
            self._staged = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_staged", None):  # a set from a URL not closed: its local copy still goes
            shutil.rmtree(self._staged, ignore_errors=True)


def _manifest_unchanged(prefix: str, data: bytes) -> bool:
    try:
        with open(manifest_path(prefix), "rb") as f:
            return f.read() == data
    except OSError:
        return False


def open_shards(prefix: str, bare_binidx: bool = False) -> ShardSet:
    """Open the output set PREFIX (zst shards or binidx) for reading, through its manifest
    (bare_binidx=True: or a binidx pair without one, see ShardSet).

    Example::

        for doc in rwkv5.dataprep.open_shards("out/train"):
            ...   # doc: np.ndarray of uint16, the document's tokens followed by 0
    """
    if not storage.is_url(prefix):
        return ShardSet(prefix, bare_binidx)
    tmp = tempfile.mkdtemp(prefix="rwkv5-set-")
    try:
        with _from_url(prefix, tmp):
            s = ShardSet(_stage_set(prefix, tmp), bare_binidx)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    s._staged, s.url = tmp, prefix
    return s


# ----------------------------------------------------------------------------- sets at a URL


def _stage_set(prefix: str, tmp: str, manifest_only: bool = False) -> str:
    """Copy the set at the URL prefix (its manifest and the files at the prefix that a set could
    own: PREFIX.bin/.idx/.zst, PREFIX_NNNNN.*) into the folder tmp, streamed in ranged reads;
    returns the local prefix. The readers then run on the copy exactly as on a local set."""
    base = prefix.rstrip("/").rsplit("/", 1)[-1]
    if not base or prefix.endswith("/"):
        raise DataprepError(
            f"{prefix}: is a prefix of objects ending in '/'; give the set's PREFIX "
            f"(the --out of its build, e.g. {prefix.rstrip('/')}/train)"
        )
    for url in storage.glob(prefix + "*"):
        rest = url[len(prefix) :]
        if rest == MANIFEST_SUFFIX or (not manifest_only and _SET_FILE_SUFFIX.fullmatch(rest)):
            with storage.open_read(url) as src, open(os.path.join(tmp, base + rest), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return os.path.join(tmp, base)


@contextlib.contextmanager
def _from_url(prefix: str, tmp: str):
    """Errors about the local copy in tmp name the URL instead."""
    parent = prefix.rstrip("/").rsplit("/", 1)[0] + "/"
    try:
        yield
    except DataprepError as e:
        raise DataprepError(str(e).replace(tmp + os.sep, parent)) from None


@contextlib.contextmanager
def _url_set(prefix: str, manifest_only: bool = False):
    """(local prefix, a function that spells local paths in text as the URL) for a set that may be
    at a URL; the local copy is removed at the end."""
    if not storage.is_url(prefix):
        yield prefix, (lambda text: text)
        return
    tmp = tempfile.mkdtemp(prefix="rwkv5-set-")
    parent = prefix.rstrip("/").rsplit("/", 1)[0] + "/"
    try:
        with _from_url(prefix, tmp):
            yield (
                _stage_set(prefix, tmp, manifest_only),
                (lambda text: text.replace(tmp + os.sep, parent)),
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- verify


def verify(prefix: str, vocab: str = None) -> list:
    """Check an output set against its manifest: file sizes and SHA-256, format structure,
    every token < n_vocab, every document non-empty and ending in 0 with no other 0, counts, and
    that no file at the prefix is left over from another set (PREFIX_NNNNN.* the manifest does
    not list). The files checked are the ones at `prefix` (the manifest's names are relative to
    its own prefix). Returns a list of OK lines; raises DataprepError with the first problem found.
    A URL prefix is checked on a local copy of its files (open_shards)."""
    if storage.is_url(prefix):
        with _url_set(prefix) as (local, spell):
            return [spell(line) for line in verify(local, vocab)]
    m = read_manifest(prefix)
    n_vocab = m["tokenizer"]["n_vocab"]
    stray = unlisted_files(prefix, m)
    if stray:
        more = f" and {len(stray) - 5} more" if len(stray) > 5 else ""
        raise DataprepError(
            f"{prefix}: {len(stray)} file(s) at the prefix that its manifest does not list "
            f"(left from another set? remove them): {', '.join(stray[:5])}{more}"
        )
    report = []
    tot_docs = tot_tokens = 0
    for stem, files, s in shard_paths(prefix, m):
        for p, info in files.values():
            if not os.path.exists(p):
                raise DataprepError(f"{p}: missing")
            if os.path.getsize(p) != info["bytes"]:
                raise DataprepError(
                    f"{p}: {os.path.getsize(p)} bytes, the manifest says {info['bytes']}"
                )
            if sha256_file(p) != info["sha256"]:
                raise DataprepError(f"{p}: SHA-256 differs from the manifest")
        try:
            shard = BinIdx(stem) if m["output"]["format"] == "binidx" else ZstShard(stem + ".zst")
        except FormatError as e:
            raise DataprepError(str(e)) from None
        try:
            if len(shard) != s["documents"]:
                raise DataprepError(
                    f"{stem}: {len(shard)} documents, the manifest says {s['documents']}"
                )
            if isinstance(shard, BinIdx):
                if not np.array_equal(shard.doc_idx, np.arange(len(shard) + 1)):
                    raise DataprepError(f"{stem}.idx: doc_idx is not [0, 1, ..., {len(shard)}]")
                toks = shard.tokens
                sizes = shard.sizes.astype(np.int64)
                ntok = shard.n_tokens
            else:
                sizes = shard.sizes
                ntok = shard.n_tokens
                toks = None
            if ntok != s["tokens"]:
                raise DataprepError(f"{stem}: {ntok} tokens, the manifest says {s['tokens']}")
            if len(sizes) and sizes.min() < 1:
                raise DataprepError(
                    f"{stem}: an empty document (every document has at least its 0)"
                )
            ends = np.cumsum(sizes) - 1
            # stream the tokens in blocks: max id, the 0 positions must be exactly the document ends
            block = 1 << 24
            zero_pos = []
            for a in range(0, ntok, block):
                b = min(ntok, a + block)
                t = np.asarray(toks[a:b]) if toks is not None else shard.tokens(a, b)
                if len(t) and int(t.max()) >= n_vocab:
                    bad = a + int(np.argmax(t >= n_vocab))
                    raise DataprepError(
                        f"{stem}: token {int(t[bad - a])} at position {bad} is >= n_vocab {n_vocab}"
                    )
                zero_pos.append(np.flatnonzero(t == 0) + a)
            zero_pos = np.concatenate(zero_pos) if zero_pos else np.zeros(0, np.int64)
            if not np.array_equal(zero_pos, ends):
                raise DataprepError(f"{stem}: the 0 tokens are not exactly at the document ends")
        finally:
            if hasattr(shard, "close"):
                shard.close()
        tot_docs += s["documents"]
        tot_tokens += s["tokens"]
        report.append(
            f"ok {os.path.basename(stem)}: {s['documents']} documents, {s['tokens']} tokens"
        )
    if tot_docs != m["totals"]["documents"] or tot_tokens != m["totals"]["tokens"]:
        raise DataprepError(
            f"{prefix}: shards hold {tot_docs} documents / {tot_tokens} tokens, the manifest "
            f"totals say {m['totals']['documents']} / {m['totals']['tokens']}"
        )
    report.append(
        f"ok {prefix}: {tot_docs} documents, {tot_tokens} tokens in {len(m['shards'])} shard(s)"
    )
    return report


# ----------------------------------------------------------------------------- stats


def stats_table(prefix: str) -> str:
    if storage.is_url(prefix):  # only the manifest is read
        with _url_set(prefix, manifest_only=True) as (local, spell):
            return spell(stats_table(local)).replace(local, prefix)
    m = read_manifest(prefix)
    try:
        return _stats_table(prefix, m)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise DataprepError(
            f"{manifest_path(prefix)}: malformed statistics or skipped records ({type(e).__name__}: {e})"
        ) from None


def _stats_table(prefix: str, m: dict) -> str:
    lines = []
    t = m["totals"]
    lines.append(
        f"{prefix}: {t['documents']} documents, {t['tokens']} tokens, format {m['output']['format']}, "
        f"{len(m['shards'])} shard(s)"
    )
    for title, table in (
        ("script", m["statistics"]["per_script"]),
        ("language", m["statistics"]["per_language"]),
    ):
        if not table:
            continue
        lines.append("")
        lines.append(
            f"{title:<18} {'documents':>12} {'bytes':>15} {'tokens':>15} {'bytes/token':>12}"
        )
        for k, e in sorted(table.items(), key=lambda kv: -kv[1]["tokens"]):
            bpt = f"{e['bytes_per_token']:.3f}" if e["bytes_per_token"] is not None else "-"
            lines.append(
                f"{k[:18]:<18} {e['documents']:>12} {e['bytes']:>15} {e['tokens']:>15} {bpt:>12}"
            )
    mix = m.get("mix")
    if mix:
        how = (
            f"temperature {mix['temperature']:g}"
            if mix["method"] == "temperature"
            else "weights "
            + ",".join(f"{k}={v:g}" for k, v in mix["weights"].items())
            + (
                f", others {mix['default_weight']:g}"
                if mix.get("default_weight") is not None
                else ", others dropped"
            )
        )
        lines.append("")
        lines.append(
            f"mix ({how}; {mix['output_tokens']} of {mix['requested_tokens']} tokens requested, "
            f"max {mix['max_epochs']:g} epochs, seed {mix['seed']})"
        )
        lines.append(
            f"{'language':<18} {'input tokens':>15} {'input share':>12} {'target share':>13} "
            f"{'realized share':>15} {'epochs':>8} {'shortfall':>11}"
        )
        for k, e in mix["languages"].items():
            lines.append(
                f"{k[:18]:<18} {e['input_tokens']:>15} {e['input_share']:>12.4f} {e['target_share']:>13.4f} "
                f"{e['realized_share']:>15.4f} {e['epochs']:>8.2f} {e['shortfall_tokens']:>11}"
            )
    sk = m["skipped"]
    if sk["total"]:
        lines.append("")
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in sk["counts"].items()))
        for x in sk["first"][:10]:
            lines.append(f"  {x}")
    if m.get("rwkv_lm_args"):
        lines.append("")
        lines.append(m["rwkv_lm_args"])
    return "\n".join(lines)


# ----------------------------------------------------------------------------- inspect


def _vocab_of(prefix: str, m) -> str:
    """The vocab file a set's ids belong to: the manifest's vocab path or the default vocab, the one
    whose SHA-256 the manifest records (the default vocab for a set without a manifest)."""
    want = m["tokenizer"].get("vocab_sha256") if m else None
    if not want:
        return default_vocab()
    recorded = m["tokenizer"].get("vocab")
    for cand in (recorded, None):
        try:
            path = cand if cand is not None else default_vocab()
        except DataprepError:
            continue
        if isinstance(path, str) and os.path.isfile(path) and sha256_file(path) == want:
            return path
    raise DataprepError(
        f"{prefix}: built with a vocab (SHA-256 {want[:12]}...) found neither at {recorded} nor "
        f"as the default World vocab; pass --vocab PATH"
    )


def inspect_docs(prefix: str, doc: int = 0, count: int = 3, vocab: str = None) -> list:
    """Decode `count` documents starting at `doc`: returns [(index, n_tokens, text)]. Without
    `vocab`, the vocab the set was built with (its manifest's path or the default World vocab,
    whichever has the recorded SHA-256)."""
    out = []
    with open_shards(prefix, bare_binidx=True) as s:
        tok = load_tokenizer(vocab or _vocab_of(s.prefix, s.manifest))
        n = len(s)
        if n and not 0 <= doc < n:
            raise DataprepError(f"--doc {doc}: out of range (the set has {n} documents)")
        for i in range(doc, min(n, doc + count)):
            ids = s[i]
            text = tok.decode_bytes(ids[ids != 0]).decode(
                "utf-8", errors="replace"
            )  # 0 ends a document
            out.append((i, len(ids), text))
    return out


# ----------------------------------------------------------------------------- merge / unpack


def _check_output_prefix(out, inputs: Sequence[str]) -> str:
    """The --out prefix of merge/unpack: a valid prefix (build.check_out_prefix) that is none of
    the sets it reads (writing there would replace a set, and its manifest, while it is read)."""
    from .build import check_out_prefix

    out = check_out_prefix(out)
    for p in inputs:
        if storage.is_url(out) or storage.is_url(os.fspath(p)):
            if os.fspath(p).rstrip("/") == out:
                raise DataprepError(f"--out {out}: is also an input; write to another prefix")
        elif any(form(os.fspath(p)) == form(out) for form in (os.path.abspath, os.path.realpath)):
            raise DataprepError(f"--out {out}: is also an input; write to another prefix")
    return out


def _tokenizer_of(sets: list) -> dict:
    """The tokenizer record shared by the input sets [(prefix, manifest)]; DataprepError when their
    vocab hashes differ (or one records none): their ids would mean different texts."""
    first_p, first = sets[0]
    for p, m in sets:
        if not m["tokenizer"].get("vocab_sha256"):
            raise DataprepError(
                f"{p}: its manifest records no vocab SHA-256; cannot tell which vocab its ids belong to"
            )
    for p, m in sets[1:]:
        if m["tokenizer"]["vocab_sha256"] != first["tokenizer"]["vocab_sha256"]:
            raise DataprepError(
                f"{p}: built with another vocab than {first_p} (vocab SHA-256 "
                f"{m['tokenizer']['vocab_sha256'][:12]}... vs {first['tokenizer']['vocab_sha256'][:12]}...); "
                f"sets of different vocabs cannot be merged"
            )
    return dict(first["tokenizer"])


def merge_binidx(prefixes: Sequence[str], out: str) -> dict:
    """Concatenate binidx sets (each single or sharded) into one PREFIX.bin/.idx, in argument order.
    The sets must share one vocab (their manifests' vocab SHA-256); the result records it."""
    if isinstance(prefixes, (str, bytes, os.PathLike)):
        prefixes = [prefixes]
    if not prefixes:
        raise DataprepError("merge: no input sets")
    out = _check_output_prefix(out, prefixes)
    opened = []
    try:
        for p in prefixes:
            s = open_shards(p)
            opened.append(s)
            if s.format != "binidx":
                raise DataprepError(
                    f"{p}: merge takes binidx sets (use unpack for zst shards first)"
                )
        tokenizer = _tokenizer_of([(s.prefix, s.manifest) for s in opened])
        srcs = [st + ".bin" for s in opened for st in s.stems]
        all_sizes = [b.sizes.astype(np.int64) for s in opened for b in s.shards]
        sizes = np.concatenate(all_sizes) if all_sizes else np.zeros(0, np.int64)
        ranges = np.array(
            [[i, 0, 2 * int(sz.sum())] for i, sz in enumerate(all_sizes)], dtype=np.int64
        ).reshape(-1, 3)
        with remote.staging(out) as lock:
            m = _finish_binidx(
                lock,
                out,
                srcs,
                ranges,
                sizes,
                tokenizer,
                {"merged_from": [p if storage.is_url(p) else os.path.abspath(p) for p in prefixes]},
                opened,
            )
            lock.remove_workdir()
        return m
    finally:
        for s in opened:
            s.close()


def unpack(prefix: str, out: str) -> dict:
    """Write the documents of a zst shard set as one binidx PREFIX.bin/.idx (recording its vocab)."""
    out = _check_output_prefix(out, [prefix])
    s = open_shards(prefix)
    try:
        if s.format != "zst":
            raise DataprepError(f"{prefix}: not a zst shard set")
        tokenizer = _tokenizer_of([(prefix, s.manifest)])
        with remote.staging(out) as lock:
            tmp_stream = os.path.join(lock.workdir, "unpack.stream.tmp")
            sizes = []
            with open(tmp_stream, "wb") as f:
                for sh in s.shards:
                    for i in range(len(sh.frames)):
                        f.write(sh.frame(i).tobytes())
                    sizes.append(sh.sizes)
            sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
            ranges = np.array([[0, 0, os.path.getsize(tmp_stream)]], dtype=np.int64)
            m = _finish_binidx(
                lock,
                out,
                [tmp_stream],
                ranges,
                sizes,
                tokenizer,
                {"unpacked_from": prefix if storage.is_url(prefix) else os.path.abspath(prefix)},
                [],
            )
            lock.remove_workdir()
        return m
    finally:
        s.close()


def _finish_binidx(lock, out, srcs, ranges, sizes, tokenizer, extra, inputs) -> dict:
    """Write PREFIX.bin/.idx from ranges of srcs into the locked work area, then publish them with
    their manifest. `inputs` (ShardSets whose files srcs name) must not have been replaced
    while they were copied."""
    from .build import _copy

    name = os.path.basename(out)
    tmp = {ext: os.path.join(lock.workdir, name + ext + ".tmp") for ext in (".bin", ".idx")}
    _copy(tmp[".bin"], srcs, ranges)
    for s in inputs:
        if not _manifest_unchanged(s.prefix, s._manifest_bytes):
            raise DataprepError(
                f"{s.prefix}: the set was rewritten while it was being read; run again"
            )
    write_idx(tmp[".idx"], sizes)
    files = {}
    for ext in (".bin", ".idx"):
        with open(tmp[ext], "rb+") as f:
            os.fsync(f.fileno())
        files[name + ext] = {"bytes": os.path.getsize(tmp[ext]), "sha256": sha256_file(tmp[ext])}
    ntok = int(sizes.sum())
    m = {
        "format": "rwkv5-dataprep-manifest",
        "version": 1,
        "output": {
            "prefix": name,
            "format": "binidx",
            "sharded": False,
            "dtype": "uint16",
            "eot_token": 0,
        },
        "tokenizer": tokenizer,
        "totals": {"documents": int(len(sizes)), "tokens": ntok},
        "shards": [{"name": name, "documents": int(len(sizes)), "tokens": ntok, "files": files}],
        "statistics": {"per_script": {}, "per_language": {}},
        "skipped": {"counts": {}, "total": 0, "first": []},
        **extra,
    }
    remote.publish_set(out, [(tmp[ext], out + ext) for ext in (".bin", ".idx")], m, lock.workdir)
    return m


__all__ = [
    "open_shards",
    "ShardSet",
    "verify",
    "stats_table",
    "inspect_docs",
    "merge_binidx",
    "unpack",
    "magic_prime",
    "magic_prime_line",
]
