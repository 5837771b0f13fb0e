"""Readers and maintenance commands for data-prep outputs: open_shards, inspect, verify, stats,
merge (binidx sets), unpack (zst -> binidx)."""
from __future__ import annotations

import glob
import json
import os
from typing import Iterator, Sequence

import numpy as np

from . import _dataprep
from .build import DataprepError, _write_json_atomic, load_tokenizer, magic_prime, magic_prime_line
from .formats import BinIdx, FormatError, ZstShard, sha256_file, write_idx


def read_manifest(prefix: str) -> dict:
    path = prefix + ".manifest.json"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataprepError(f"{path}: no manifest (is {prefix!r} the --out PREFIX of a build?)") from None
    except ValueError as e:
        raise DataprepError(f"{path}: not valid JSON ({e})") from None


def shard_stems(prefix: str, fmt: str = None) -> list:
    """The shard stems of an output set: from its manifest when present, else from the files."""
    d = os.path.dirname(os.path.abspath(prefix))
    if os.path.exists(prefix + ".manifest.json"):
        m = read_manifest(prefix)
        return [os.path.join(d, s["name"]) for s in m["shards"]], m["output"]["format"]
    for f in (fmt,) if fmt else ("binidx", "zst"):
        ext = ".idx" if f == "binidx" else ".zst"
        if os.path.exists(prefix + ext):
            return [prefix], f
        hits = sorted(glob.glob(glob.escape(prefix) + "_[0-9][0-9][0-9][0-9][0-9]" + ext))
        if hits:
            return [h[: -len(ext)] for h in hits], f
    raise DataprepError(f"{prefix}: no PREFIX.idx / PREFIX.zst / PREFIX_00000.* output found")


class ShardSet:
    """All documents of an output set (binidx or zst, one or many shards), in order.

    Iterating yields one uint16 NumPy array per document, each ending with the 0 token.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        stems, self.format = shard_stems(prefix)
        self.shards = [BinIdx(s) if self.format == "binidx" else ZstShard(s + ".zst") for s in stems]
        self.stems = stems
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_shards(prefix: str) -> ShardSet:
    """Open the output set PREFIX (zst shards or binidx) for reading.

    Example::

        for doc in rwkv5.dataprep.open_shards("out/train"):
            ...   # doc: np.ndarray of uint16, the document's tokens followed by 0
    """
    return ShardSet(prefix)


# ----------------------------------------------------------------------------- verify

def verify(prefix: str, vocab: str = None) -> list:
    """Check an output set against its manifest: file sizes and SHA-256, format structure,
    every token < n_vocab, every document non-empty and ending in 0 with no other 0, counts.
    Returns a list of OK lines; raises DataprepError with the first problem found."""
    m = read_manifest(prefix)
    d = os.path.dirname(os.path.abspath(prefix))
    n_vocab = m["tokenizer"]["n_vocab"]
    report = []
    tot_docs = tot_tokens = 0
    for s in m["shards"]:
        for fname, info in s["files"].items():
            p = os.path.join(d, fname)
            if not os.path.exists(p):
                raise DataprepError(f"{p}: missing")
            if os.path.getsize(p) != info["bytes"]:
                raise DataprepError(f"{p}: {os.path.getsize(p)} bytes, the manifest says {info['bytes']}")
            if sha256_file(p) != info["sha256"]:
                raise DataprepError(f"{p}: SHA-256 differs from the manifest")
        stem = os.path.join(d, s["name"])
        try:
            shard = BinIdx(stem) if m["output"]["format"] == "binidx" else ZstShard(stem + ".zst")
        except FormatError as e:
            raise DataprepError(str(e)) from None
        try:
            if len(shard) != s["documents"]:
                raise DataprepError(f"{stem}: {len(shard)} documents, the manifest says {s['documents']}")
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
                raise DataprepError(f"{stem}: an empty document (every document has at least its 0)")
            ends = np.cumsum(sizes) - 1
            # stream the tokens in blocks: max id, the 0 positions must be exactly the document ends
            block = 1 << 24
            zero_pos = []
            for a in range(0, ntok, block):
                b = min(ntok, a + block)
                t = np.asarray(toks[a:b]) if toks is not None else shard.tokens(a, b)
                if len(t) and int(t.max()) >= n_vocab:
                    bad = a + int(np.argmax(t >= n_vocab))
                    raise DataprepError(f"{stem}: token {int(t[bad - a])} at position {bad} is >= n_vocab {n_vocab}")
                zero_pos.append(np.flatnonzero(t == 0) + a)
            zero_pos = np.concatenate(zero_pos) if zero_pos else np.zeros(0, np.int64)
            if not np.array_equal(zero_pos, ends):
                raise DataprepError(f"{stem}: the 0 tokens are not exactly at the document ends")
        finally:
            if hasattr(shard, "close"):
                shard.close()
        tot_docs += s["documents"]
        tot_tokens += s["tokens"]
        report.append(f"ok {s['name']}: {s['documents']} documents, {s['tokens']} tokens")
    if tot_docs != m["totals"]["documents"] or tot_tokens != m["totals"]["tokens"]:
        raise DataprepError(f"{prefix}: shards hold {tot_docs} documents / {tot_tokens} tokens, the manifest "
                            f"totals say {m['totals']['documents']} / {m['totals']['tokens']}")
    report.append(f"ok {prefix}: {tot_docs} documents, {tot_tokens} tokens in {len(m['shards'])} shard(s)")
    return report


# ----------------------------------------------------------------------------- stats

def stats_table(prefix: str) -> str:
    m = read_manifest(prefix)
    lines = []
    t = m["totals"]
    lines.append(f"{prefix}: {t['documents']} documents, {t['tokens']} tokens, format {m['output']['format']}, "
                 f"{len(m['shards'])} shard(s)")
    for title, table in (("script", m["statistics"]["per_script"]), ("language", m["statistics"]["per_language"])):
        if not table:
            continue
        lines.append("")
        lines.append(f"{title:<18} {'documents':>12} {'bytes':>15} {'tokens':>15} {'bytes/token':>12}")
        for k, e in sorted(table.items(), key=lambda kv: -kv[1]["tokens"]):
            bpt = f"{e['bytes_per_token']:.3f}" if e["bytes_per_token"] is not None else "-"
            lines.append(f"{k[:18]:<18} {e['documents']:>12} {e['bytes']:>15} {e['tokens']:>15} {bpt:>12}")
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

def inspect_docs(prefix: str, doc: int = 0, count: int = 3, vocab: str = None) -> list:
    """Decode `count` documents starting at `doc`: returns [(index, n_tokens, text)]."""
    from .build import default_vocab_path
    tok = load_tokenizer(vocab or default_vocab_path())
    out = []
    with open_shards(prefix) as s:
        n = len(s)
        if n and not 0 <= doc < n:
            raise DataprepError(f"--doc {doc}: out of range (the set has {n} documents)")
        for i in range(doc, min(n, doc + count)):
            ids = s[i]
            text = _dataprep.decode(tok, ids).decode("utf-8", errors="replace")
            out.append((i, len(ids), text))
    return out


# ----------------------------------------------------------------------------- merge / unpack

def merge_binidx(prefixes: Sequence[str], out: str) -> dict:
    """Concatenate binidx sets (each single or sharded) into one PREFIX.bin/.idx, in argument order."""
    out = os.path.abspath(out)
    srcs, all_sizes = [], []
    for p in prefixes:
        stems, fmt = shard_stems(p)
        if fmt != "binidx":
            raise DataprepError(f"{p}: merge takes binidx sets (use unpack for zst shards first)")
        for st in stems:
            b = BinIdx(st)
            srcs.append(st + ".bin")
            all_sizes.append(b.sizes.astype(np.int64))
    sizes = np.concatenate(all_sizes) if all_sizes else np.zeros(0, np.int64)
    ranges = np.array([[i, 0, os.path.getsize(s)] for i, s in enumerate(srcs)], dtype=np.int64).reshape(-1, 3)
    return _finish_binidx(out, srcs, ranges, sizes, {"merged_from": [os.path.abspath(p) for p in prefixes]})


def unpack(prefix: str, out: str) -> dict:
    """Write the documents of a zst shard set as one binidx PREFIX.bin/.idx."""
    out = os.path.abspath(out)
    s = ShardSet(prefix)
    if s.format != "zst":
        raise DataprepError(f"{prefix}: not a zst shard set")
    tmp_stream = out + ".stream.tmp"
    sizes = []
    try:
        with open(tmp_stream, "wb") as f:
            for sh in s.shards:
                for i in range(len(sh.frames)):
                    f.write(sh.frame(i).tobytes())
                sizes.append(sh.sizes)
        sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        ranges = np.array([[0, 0, os.path.getsize(tmp_stream)]], dtype=np.int64)
        return _finish_binidx(out, [tmp_stream], ranges, sizes, {"unpacked_from": os.path.abspath(prefix)})
    finally:
        s.close()
        if os.path.exists(tmp_stream):
            os.remove(tmp_stream)


def _finish_binidx(out, srcs, ranges, sizes, extra) -> dict:
    from .build import _copy
    _copy(out + ".bin.tmp", srcs, ranges)
    write_idx(out + ".idx.tmp", sizes)
    files = {}
    for ext in (".bin", ".idx"):
        with open(out + ext + ".tmp", "rb+") as f:
            os.fsync(f.fileno())
        files[os.path.basename(out) + ext] = {"bytes": os.path.getsize(out + ext + ".tmp"),
                                              "sha256": sha256_file(out + ext + ".tmp")}
    for ext in (".bin", ".idx"):
        os.replace(out + ext + ".tmp", out + ext)
    from .build import default_vocab_path, sha256_file as _sha
    vocab = default_vocab_path()
    ntok = int(sizes.sum())
    m = {"format": "rwkv5-dataprep-manifest", "version": 1,
         "output": {"prefix": os.path.basename(out), "format": "binidx", "sharded": False, "dtype": "uint16", "eot_token": 0},
         "tokenizer": {"vocab": vocab, "vocab_sha256": _sha(vocab), "n_vocab": _dataprep.n_vocab(load_tokenizer(vocab))},
         "totals": {"documents": int(len(sizes)), "tokens": ntok},
         "shards": [{"name": os.path.basename(out), "documents": int(len(sizes)), "tokens": ntok, "files": files}],
         "statistics": {"per_script": {}, "per_language": {}}, "skipped": {"counts": {}, "total": 0, "first": []},
         **extra}
    _write_json_atomic(out + ".manifest.json", m)
    return m


__all__ = ["open_shards", "ShardSet", "verify", "stats_table", "inspect_docs", "merge_binidx", "unpack",
           "magic_prime", "magic_prime_line"]
