"""Checks an installed rwkv5 (a wheel in a fresh environment): run it from outside the source tree.

    python tools/wheel_smoke.py

It imports the package and its three C extensions, runs the shipped model in both modes, a World
tokenizer round trip and a small data-prep build in both output formats (binidx, and zstd shards,
which exercise the libzstd inside the wheel) and from each compressed input (gzip, bzip2, xz, zstd:
the decoders inside the wheel), and prints one line per check, then a closing
'N passed, N failed' line. Exit status 1 if any check failed.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import traceback

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def imports_from_site_packages():
    import rwkv5
    import rwkv5.dataprep._dataprep  # noqa: F401
    import rwkv5.tokenizer._tokenizer  # noqa: F401
    from rwkv5 import _model  # noqa: F401

    where = pathlib.Path(rwkv5.__file__).resolve()
    assert "site-packages" in where.parts, f"rwkv5 imported from {where}, not from an installation"
    r = subprocess.run(
        [sys.executable, "-m", "rwkv5", "--version"], capture_output=True, text=True, check=True
    )
    assert r.stdout.strip() == f"rwkv5 {rwkv5.__version__}", r.stdout
    return f"rwkv5 {rwkv5.__version__} from {where.parent}"


@check
def forward_pass_on_the_shipped_model():
    import numpy as np

    import rwkv5.tiny

    model = rwkv5.tiny.load()
    ids = list("Der Zug nach Hamburg hatte zwanzig Minuten Verspätung.".encode())
    par, _ = model.forward(ids, mode="parallel", full_output=True)
    rec, _ = model.forward(ids, mode="recurrent", full_output=True)
    diff = float(np.abs(par - rec).max())
    assert np.isfinite(par).all() and diff < 1e-3, diff
    bits = model.score(ids).loss / np.log(2)
    assert bits < 5, f"{bits:.2f} bits/byte: the shipped model is not the trained one"
    text = "".join(model.generate("Hello", max_tokens=20, seed=0))
    return f"{model!r}: parallel vs recurrent {diff:.1e}, {bits:.2f} bits/byte, generated {text!r}"


@check
def world_tokenizer_round_trip():
    from rwkv5.tokenizer import WorldTokenizer

    tok = WorldTokenizer()
    text = "Hello, world! Привет мир. 你好，世界。 مرحبا 🌍\n\tdef f(x): return x"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "abc"]) == [ids, tok.encode("abc")]
    return f"{len(text.encode())} bytes -> {len(ids)} tokens -> the same text"


@check
def small_dataprep_build():
    import numpy as np

    from rwkv5.dataprep import build, open_shards
    from rwkv5.tokenizer import WorldTokenizer

    tok = WorldTokenizer()
    docs = [
        {"text": f"Document {i}: the quick brown fox, der schnelle Fuchs, 狐狸.", "lang": "xx"}
        for i in range(50)
    ]
    out = []
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.jsonl")
        with open(src, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in docs))
        for fmt in ("binidx", "zst"):
            prefix = os.path.join(d, fmt)
            m = build([src], prefix, format=fmt, lang_field="lang", workers=2, log=lambda s: None)
            got = [np.asarray(x) for x in open_shards(prefix)]
            assert len(got) == len(docs)
            for doc, ids in zip(docs, got):
                assert list(ids) == tok.encode(doc["text"]) + [0]
            out.append(
                f"{fmt} {m['totals']['tokens'] if 'totals' in m else sum(len(x) for x in got)} tokens"
            )
    return f"{len(docs)} documents -> " + ", ".join(out) + " (read back equal)"


@check
def compressed_inputs():
    """The same documents as .jsonl.gz, .jsonl.bz2, .jsonl.xz and .jsonl.zst give the .jsonl's bytes
    (the decoders inside the wheel: zlib, and the grafted libbz2, liblzma, libzstd)."""
    import bz2
    import gzip
    import lzma

    from rwkv5.dataprep import _dataprep, build

    text = "".join(
        json.dumps({"text": f"Dokument {i}: ünïcödé, 狐狸 {i * i}"}, ensure_ascii=False) + "\n"
        for i in range(200)
    ).encode()
    packs = {
        ".jsonl": text,
        ".jsonl.gz": gzip.compress(text),
        ".jsonl.bz2": bz2.compress(text),
        ".jsonl.xz": lzma.compress(text),
        ".jsonl.zst": _dataprep.zstd_compress(text, 3),
    }
    with tempfile.TemporaryDirectory() as d:
        bins = {}
        for suffix, data in packs.items():
            src = os.path.join(d, "in" + suffix)
            with open(src, "wb") as f:
                f.write(data)
            prefix = os.path.join(d, "out" + suffix.replace(".", "_"))
            build([src], prefix, workers=1, log=lambda s: None)
            with open(prefix + ".bin", "rb") as f:
                bins[suffix] = f.read()
    assert all(b == bins[".jsonl"] for b in bins.values()), {k: len(v) for k, v in bins.items()}
    return ", ".join(packs) + f": {len(bins['.jsonl'])} bytes each, identical"


def main():
    if pathlib.Path.cwd().resolve() == pathlib.Path(__file__).resolve().parents[1]:
        sys.exit(
            "run this from outside the source tree (it would import ./rwkv5 instead of the installation)"
        )
    passed = failed = 0
    for fn in CHECKS:
        try:
            what = fn()
            print(f"ok    {fn.__name__}: {what}")
            passed += 1
        except Exception:  # report every check, then fail at the end
            print(f"FAIL  {fn.__name__}:\n{traceback.format_exc()}")
            failed += 1
    print(f"wheel: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
