"""World tokenizer throughput per language, side by side with the peers, in one run.

``run(quick=False) -> dict`` returns one table section: per language, UTF-8 MB/s (bytes, not
characters) and M tokens/s of rwkv5's C tokenizer on 1 thread (list output and NumPy output)
and on all threads (encode_batch over documents), and of the peers measured in the same
process on the same text: the `rwkv` package's TRIE_TOKENIZER (on a smaller slice: it is slow),
the Rust `rwkv-tokenizer` and `pyrwkv-tokenizer` PyPI packages, and tiktoken cl100k_base (a
BPE-class reference; skipped with a note when its vocab cannot be downloaded). Ratios are ours
(1 thread, list output, the like-for-like call) divided by each peer's single-call figure.

Texts: each language's section of tests/data/multilingual.txt grown to >= 1 MB (256 KiB with
quick) by sampling its sentences at random and shuffling their words (a fixed seed), so the
text does not repeat with a short period that a branch predictor could learn (a few sentences
repeated verbatim flatter every trie walker: their exits become predictable). Documents for
encode_batch are the corpus cut at line ends into pieces of 1-8 KB.

    python -m benchmarks.bench_tokenizer [--quick]
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import random
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
SAMPLE = HERE.parent / "tests" / "data" / "multilingual.txt"
NO_SPACES = {"zh", "ja", "th"}  # scripts written without spaces between words


def _sections():
    out, name = {}, None
    for line in SAMPLE.read_text(encoding="utf-8").split("\n"):
        if line.startswith("=== ") and line.endswith(" ==="):
            name = line[4:-4]
            out[name] = []
        elif name is not None and line.strip():
            out[name].append(line)
    return out


def _grow(lang: str, lines: list, size: int, seed: int) -> str:
    """About `size` UTF-8 bytes of text made from `lines`: random lines with their words in a
    random order (for scripts without spaces: the line cut into 3-6 runs, reordered). Code and
    whitespace keep their layout (random lines only). The text keeps the language's words and
    characters but does not repeat with a short period that the branch predictor could learn."""
    rng = random.Random(f"{lang}-{seed}")
    parts, total = [], 0
    keep_layout = lang in ("code", "whitespace")
    while total < size:
        line = rng.choice(lines)
        if not keep_layout:
            if lang in NO_SPACES:
                k = min(rng.randint(2, 5), len(line) - 1)
                cuts = sorted(rng.sample(range(1, len(line)), k=k)) if k > 0 else []
                pieces = [line[a:b] for a, b in zip([0] + cuts, cuts + [len(line)])]
                rng.shuffle(pieces)
                line = "".join(pieces)
            else:
                words = line.split(" ")
                rng.shuffle(words)
                line = " ".join(words)
        parts.append(line)
        total += len(line.encode("utf-8")) + 1
        parts.append("\n\n" if rng.random() < 0.15 else "\n")
    return "".join(parts)


def _docs(text: str, seed: int) -> list:
    """The text cut at line ends into documents of 1-8 KB."""
    rng = random.Random(seed)
    docs, start = [], 0
    while start < len(text):
        end = text.find("\n", start + rng.randint(1000, 8000))
        end = len(text) if end < 0 else end + 1
        docs.append(text[start:end])
        start = end
    return docs


def _best(fn, repeats: int, min_time: float = 0.2, gc_off: bool = False) -> float:
    """Smallest wall time of one call, over `repeats` calls (and at least min_time seconds of calls).

    The garbage collector stays as users have it (enabled) unless gc_off: the pure-Python
    TRIE_TOKENIZER allocates a tuple per token, and collections that walk its ~116k trie nodes
    are part of what its users see; gc_off shows its speed without them."""
    fn()  # warm-up
    best, spent, n = float("inf"), 0.0, 0
    while n < repeats or (spent < min_time and n < 50):
        if gc_off:
            gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        finally:
            gc.enable()
        best = min(best, dt)
        spent += dt
        n += 1
    return best


def _peers(notes: list) -> dict:
    """name -> object with encode(str) (and maybe encode_batch), for the peers that import."""
    peers = {}
    try:
        import rwkv_tokenizer

        peers["rwkv-tokenizer"] = rwkv_tokenizer.RWKVTokenizer()
    except Exception as e:  # pragma: no cover - depends on the bench extra
        notes.append(
            f"rwkv-tokenizer unavailable ({type(e).__name__}: {e}); pip install rwkv-tokenizer"
        )
    try:
        import pyrwkv_tokenizer

        peers["pyrwkv-tokenizer"] = pyrwkv_tokenizer.RWKVTokenizer()
    except Exception as e:  # pragma: no cover
        notes.append(
            f"pyrwkv-tokenizer unavailable ({type(e).__name__}: {e}); pip install pyrwkv-tokenizer"
        )
    try:
        from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

        from rwkv5.tokenizer import default_vocab_path

        peers["TRIE_TOKENIZER"] = TRIE_TOKENIZER(default_vocab_path())
    except Exception as e:  # pragma: no cover
        notes.append(f"rwkv TRIE_TOKENIZER unavailable ({type(e).__name__}: {e})")
    try:
        import tiktoken

        peers["tiktoken"] = tiktoken.get_encoding("cl100k_base")
    except Exception as e:
        notes.append(
            f"tiktoken cl100k_base skipped: its vocab could not be loaded here ({type(e).__name__}; "
            "it is downloaded from openaipublic.blob.core.windows.net on first use)"
        )
    return peers


def run(quick: bool = False) -> dict:
    from rwkv5.tokenizer import WorldTokenizer
    from rwkv5.tokenizer.world import _default_threads

    notes = []
    load_start = os.getloadavg()[0]
    size = (256 << 10) if quick else (1 << 20)
    repeats = 3 if quick else 5
    trie_bytes = (16 << 10) if quick else (96 << 10)
    nthreads = _default_threads()
    tok = WorldTokenizer()
    peers = _peers(notes)

    peer_names = [
        p
        for p in ("rwkv-tokenizer", "pyrwkv-tokenizer", "TRIE_TOKENIZER", "tiktoken")
        if p in peers
    ]
    columns = [
        "language",
        "MB",
        "bytes/token",
        "ours 1T MB/s",
        "ours 1T Mtok/s",
        "ours numpy 1T MB/s",
        f"ours batch {nthreads}T MB/s",
        "batch scaling",
    ]
    columns += [f"{p} MB/s" for p in peer_names]
    if "TRIE_TOKENIZER" in peers:
        columns.append("TRIE_TOKENIZER gc off MB/s")
    if "pyrwkv-tokenizer" in peers:
        columns.append("pyrwkv batch MB/s")
    columns += [f"ours ÷ {p}" for p in peer_names]
    if "TRIE_TOKENIZER" in peers:
        columns.append("ours ÷ TRIE gc off")
    if "pyrwkv-tokenizer" in peers:
        columns.append("ours batch ÷ pyrwkv batch")

    rows = []
    mismatches = []
    totals = {}
    for lang, lines in _sections().items():
        text = _grow(lang, lines, size, 0)
        data = text.encode("utf-8")
        mb = len(data) / 1e6
        docs = _docs(text, 1)
        ids = tok.encode(text)
        ntok = len(ids)

        t_list = _best(lambda: tok.encode(text), repeats)
        t_np = _best(lambda: tok.encode_to_numpy(text), repeats)
        t_b1 = _best(lambda: tok.encode_batch(docs, num_threads=1), repeats)
        t_bn = _best(lambda: tok.encode_batch(docs, num_threads=nthreads), repeats)
        assert tok.encode_batch(docs, num_threads=nthreads) == [tok.encode(d) for d in docs]

        peer_mbs = {}
        for name in peer_names:
            p = peers[name]
            if name == "TRIE_TOKENIZER":
                piece = data[:trie_bytes].decode("utf-8", "ignore")
                pbytes = len(piece.encode("utf-8"))
                t = _best(lambda: p.encode(piece), 2, min_time=0.0)
                t_off = _best(lambda: p.encode(piece), 2, min_time=0.0, gc_off=True)
                if p.encode(piece) != tok.encode(piece):
                    mismatches.append(f"{name}/{lang}")
                peer_mbs[name] = pbytes / t / 1e6
                trie_off = pbytes / t_off / 1e6
            else:
                t = _best(lambda: p.encode(text), repeats)
                if name != "tiktoken" and list(p.encode(text)) != ids:
                    mismatches.append(f"{name}/{lang}")
                peer_mbs[name] = mb / t
        row = [
            lang,
            round(mb, 3),
            round(len(data) / ntok, 2),
            round(mb / t_list, 1),
            round(ntok / t_list / 1e6, 2),
            round(mb / t_np, 1),
            round(mb / t_bn, 1),
            round(t_b1 / t_bn, 2),
        ]
        row += [round(peer_mbs[n], 2) for n in peer_names]
        if "TRIE_TOKENIZER" in peers:
            row.append(round(trie_off, 2))
        if "pyrwkv-tokenizer" in peers:
            pb = peers["pyrwkv-tokenizer"]
            t_pb = _best(lambda: pb.encode_batch(docs), repeats)
            row.append(round(mb / t_pb, 1))
        row += [round((mb / t_list) / peer_mbs[n], 1) for n in peer_names]
        if "TRIE_TOKENIZER" in peers:
            row.append(round((mb / t_list) / trie_off, 1))
            totals.setdefault("TRIE_TOKENIZER gc off", []).append(trie_off)
        if "pyrwkv-tokenizer" in peers:
            row.append(round(t_pb / t_bn, 1))
        rows.append(row)
        for k, v in (("ours", mb / t_list), *peer_mbs.items()):
            totals.setdefault(k, []).append(v)

    notes.append(
        f"1-minute load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end "
        "(a shared machine: other processes' CPU time lowers every figure, the peers' too)."
    )
    notes.append(
        f"{nthreads} threads available; 'batch scaling' = encode_batch time on 1 thread ÷ on {nthreads}."
    )
    notes.append(
        "ours 1T = WorldTokenizer.encode(str) -> list[int] (same call shape as the peers' encode); "
        "numpy = encode_to_numpy (uint16, no Python ints)."
    )
    notes.append(
        f"TRIE_TOKENIZER measured on the first {trie_bytes >> 10} KiB of each text (pure Python, slow); "
        "'gc off' = with Python's garbage collector disabled during the call (its collections walk "
        "the ~116k-node trie; users normally run with gc on)."
    )
    if mismatches:
        notes.append("OUTPUT MISMATCH vs ours: " + ", ".join(mismatches))
    else:
        notes.append("every peer of the World vocab produced exactly our ids on every text.")
    for k, v in totals.items():
        if k != "ours":
            ratios = [a / b for a, b in zip(totals["ours"], v)]
            notes.append(
                f"ours ÷ {k}: min {min(ratios):.1f}×, max {max(ratios):.1f}× over {len(ratios)} languages"
            )
    return {
        "title": "World tokenizer: UTF-8 MB/s and tokens/s per language (same run, same texts)",
        "columns": columns,
        "rows": rows,
        "notes": notes,
    }


def _print(res: dict) -> None:
    cols = res["columns"]
    table = [cols] + [[str(x) for x in r] for r in res["rows"]]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    print(res["title"])
    for r in table:
        print("  ".join(x.rjust(w) for x, w in zip(r, widths)))
    for n in res["notes"]:
        print("-", n)


if __name__ == "__main__":
    res = run(quick="--quick" in sys.argv)
    _print(res)
    if "--json" in sys.argv:
        print(json.dumps(res))
