"""`make demo`: the whole tool on built-in defaults, in under a minute.

1. Builds an RWKV-LM training set (binidx + manifest) from the multilingual sample corpus that
   ships with the package (rwkv5/data/sample_corpus.jsonl, 29 short documents in 17 languages
   and some code), tokenized with the RWKV World tokenizer, and prints its statistics and the
   `--magic_prime` line RWKV-LM asks for.
2. Loads a model: the small *trained* RWKV-5.2 model of ../shared/fixtures when it is there
   (a byte-level model, 12 layers × 64 wide), otherwise a small random model (and says so).
3. Reads the data set back, scores each document with the model in parallel mode and in
   recurrent mode, and shows that the two agree, with bits per byte per language.
4. Generates a short continuation, streaming, and reports the speed of both modes.
"""
from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

import numpy as np

CORPUS = pathlib.Path(__file__).resolve().parent / "data" / "sample_corpus.jsonl"
CTX_LEN = 128


def _fixtures():
    root = pathlib.Path(__file__).resolve().parents[1]
    d = pathlib.Path(os.environ.get("RWKV5_FIXTURES", root.parent / "shared" / "fixtures"))
    return d if (d / "tiny-rwkv-5v2-730K-FP32.bin").is_file() else None


def _section(title):
    print(f"\n== {title} " + "=" * max(0, 74 - len(title)))


def main(argv=None):
    import rwkv5
    from rwkv5.dataprep import BinIdx, build, stats_table
    from rwkv5.scoring import log_softmax
    from rwkv5.tokenizer import WorldTokenizer

    print(f"rwkv5 {rwkv5.__version__} demo: {rwkv5.get_num_threads()} threads, "
          f"kernels {rwkv5._model.get_isa()[0]}")
    work = tempfile.mkdtemp(prefix="rwkv5-demo-")
    prefix = os.path.join(work, "sample")

    _section("1. Training data: multilingual corpus -> RWKV-LM binidx")
    print(f"input: {CORPUS} ({CORPUS.stat().st_size:,} bytes)")
    t0 = time.perf_counter()
    manifest = build([str(CORPUS)], prefix, lang_field="lang", ctx_len=CTX_LEN, workers=2, log=lambda s: None)
    print(f"built {prefix}.bin/.idx + .manifest.json in {time.perf_counter() - t0:.2f} s "
          f"(World tokenizer, token 0 after each document)\n")
    print(stats_table(prefix))             # ends with the --my_exit_tokens/--magic_prime line for train.py

    _section("2. Model")
    fx = _fixtures()
    if fx is not None:
        path = fx / "tiny-rwkv-5v2-730K-FP32.bin"
        model = rwkv5.load(path)                  # rwkv.cpp format: GroupNorm eps 1e-5 by default
        print(f"{path.name}: a small TRAINED RWKV-5.2 model (rwkv.cpp file), byte-level vocabulary")
    else:
        from rwkv5.testing import random_state_dict
        model = rwkv5.Model.from_state_dict(random_state_dict("5.2", n_layer=4, n_embd=128, head_size=32,
                                                              vocab_size=256, seed=0))
        print("../shared/fixtures not found: using a RANDOM 5.2 model (byte-level) - its text means nothing")
    print(f"{model!r}")

    _section("3. Scoring the data set, parallel vs recurrent mode")
    tok = WorldTokenizer()
    data = BinIdx(prefix)
    langs = corpus_languages(CORPUS)
    per_lang: dict[str, list[float]] = {}
    worst = largest = 0.0
    t_par = t_rec = 0.0
    n_bytes_total = 0
    for i in range(len(data)):
        text = tok.decode(data[i][:-1])                     # drop the end-of-document 0
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        t0 = time.perf_counter()
        lp_par, _ = model.forward(ids, mode="parallel", full_output=True)
        t_par += time.perf_counter() - t0
        t0 = time.perf_counter()
        lp_rec, _ = model.forward(ids, mode="recurrent", full_output=True)
        t_rec += time.perf_counter() - t0
        worst = max(worst, float(np.abs(lp_par - lp_rec).max()))
        largest = max(largest, float(np.abs(lp_rec).max()))
        nll = -log_softmax(lp_par[:-1])[np.arange(len(ids) - 1), ids[1:]].sum()
        per_lang.setdefault(langs[i], [0.0, 0])
        per_lang[langs[i]][0] += nll
        per_lang[langs[i]][1] += len(ids) - 1
        n_bytes_total += len(ids)
    print(f"{len(data)} documents, {n_bytes_total:,} bytes: max |logit(parallel) - logit(recurrent)| = {worst:.2e} "
          f"(relative to the largest |logit|, {largest:.1f}: {worst / largest:.1e} - float32 rounding)")
    print(f"speed: parallel {n_bytes_total / t_par:,.0f} tok/s, recurrent {n_bytes_total / t_rec:,.0f} tok/s\n")
    print(f"{'language':10s} {'bytes':>7s} {'bits/byte':>10s}")
    for lang, (nll, n) in sorted(per_lang.items(), key=lambda kv: kv[1][0] / kv[1][1]):
        print(f"{lang:10s} {n:7d} {nll / n / np.log(2):10.3f}")
    print("(the fixture model was trained on English text: lowest bits/byte there, as expected)"
          if fx is not None else "")

    _section("4. Generation (streaming, temperature 1.0, top_p 0.85, seed 0)")
    prompt = "The weather today is"
    sys.stdout.write(prompt)
    for piece in model.generate(prompt, max_tokens=80, seed=0):
        sys.stdout.write(piece)
        sys.stdout.flush()
    print("\n")
    print(f"outputs left in {work} (python -m rwkv5.dataprep inspect {prefix} --doc 0)")


def corpus_languages(corpus):
    import json
    with open(corpus, encoding="utf-8") as f:
        return [json.loads(line)["lang"] for line in f if line.strip()]


if __name__ == "__main__":
    main()
