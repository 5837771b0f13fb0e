"""`make demo`: the whole tool on built-in defaults, in under a minute.

1. Builds an RWKV-LM training set (binidx + manifest) from the multilingual sample corpus that
   ships with the package (rwkv5/data/sample_corpus.jsonl, 29 short documents in 17 languages
   and some code), tokenized with the RWKV World tokenizer, and prints its statistics and the
   `--magic_prime` line RWKV-LM asks for.
2. Loads a model: by default the small *trained* byte-level RWKV-5.2 model that ships inside the
   package (rwkv5.tiny, docs/tiny-model.md); with ``--model PATH`` (``make demo MODEL=PATH``) any
   checkpoint rwkv5.load reads, e.g. an RWKV-5 World model, which then uses the World tokenizer.
   ``--model https://...`` downloads the file once into the cache folder (``$RWKV5_CACHE``, else
   ``$XDG_CACHE_HOME/rwkv5``, else ``~/.cache/rwkv5``; written under a temporary name and renamed
   when complete) and reuses it on the next run.
3. Reads the data set back, scores each document with the model in parallel mode and in
   recurrent mode, and shows that the two agree, with bits per byte per language.
4. Generates a short continuation, streaming, and reports the speed of both modes.

    python -m rwkv5.demo
    python -m rwkv5.demo --model RWKV-5-World-0.4B-v2-20231113-ctx4096.pth --dtype bf16
    python -m rwkv5.demo --model https://huggingface.co/BlinkDL/rwkv-5-world/resolve/main/RWKV-5-World-0.4B-v2-20231113-ctx4096.pth
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

from .model import STORAGE_DTYPES

CORPUS = pathlib.Path(__file__).resolve().parent / "data" / "sample_corpus.jsonl"
CTX_LEN = 128
WORLD_VOCAB = 65536


def _section(title):
    print(f"\n== {title} " + "=" * max(0, 74 - len(title)))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m rwkv5.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model",
        help="a checkpoint (.pth, .safetensors, rwkv.cpp .bin, HF folder) with the "
        f"{WORLD_VOCAB}-token World vocabulary or 256 byte tokens; default: the shipped tiny model",
    )
    ap.add_argument("--dtype", choices=STORAGE_DTYPES, help="weight type (default: as stored)")
    ap.add_argument("--gn-eps", type=float, help="GroupNorm epsilon (default: the file format's)")
    ap.add_argument(
        "--prompt", default="The weather today is", help="generation prompt (default: %(default)r)"
    )
    ap.add_argument(
        "--max-tokens", type=int, default=80, help="tokens to generate (default: %(default)s)"
    )
    args = ap.parse_args(argv)
    if args.model is not None and not is_url(args.model) and not os.path.exists(args.model):
        ap.error(f"--model {args.model}: no such file or folder")
    if args.max_tokens < 0:
        ap.error(f"--max-tokens must be >= 0, got {args.max_tokens}")
    return args


def is_url(text) -> bool:
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


def cache_dir() -> pathlib.Path:
    """Where downloaded models are kept: $RWKV5_CACHE, else $XDG_CACHE_HOME/rwkv5, else ~/.cache/rwkv5."""
    if os.environ.get("RWKV5_CACHE"):
        return pathlib.Path(os.environ["RWKV5_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "rwkv5"


def fetch_model(url: str, log=print) -> pathlib.Path:
    """The file at ``url`` in the cache folder, downloaded first unless it is already there.

    The download goes to NAME.part-RANDOM beside the final name and is renamed to NAME only when
    it is complete (as many bytes as the server announced), so an interrupted or cut-short
    download never leaves a file that a later run would take for the model. Any failure raises
    SystemExit with one line naming the URL."""
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name or name in (".", ".."):
        raise SystemExit(f"rwkv5.demo: error: --model {url}: the URL names no file")
    folder = cache_dir()
    dest = folder / name
    if dest.is_file():
        log(f"using {dest} ({dest.stat().st_size / 1e6:,.1f} MB, downloaded before from {url})")
        return dest
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"rwkv5.demo: error: cache folder {folder}: {e.strerror or e}") from None
    fd, tmp = tempfile.mkstemp(prefix=name + ".part-", dir=folder)
    done = 0
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:
            total = r.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            size = f"{total / 1e6:,.1f} MB" if total is not None else "size unknown"
            log(f"downloading {url} ({size}) -> {dest}")
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
            if total is not None and done != total:
                raise OSError(f"the server sent {done:,} of {total:,} bytes")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException as e:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, urllib.error.HTTPError):
            raise SystemExit(
                f"rwkv5.demo: error: --model {url}: HTTP {e.code} {e.reason}"
            ) from None
        if isinstance(e, urllib.error.URLError):
            raise SystemExit(f"rwkv5.demo: error: --model {url}: {e.reason}") from None
        if isinstance(e, (OSError, ValueError, http.client.HTTPException)):
            raise SystemExit(f"rwkv5.demo: error: --model {url}: download failed: {e}") from None
        raise
    log(f"downloaded {done / 1e6:,.1f} MB to {dest}")
    return dest


def load_model(args):
    """The model the demo runs, and one line that says what it is."""
    import rwkv5

    if args.model is None:
        import rwkv5.tiny

        model = rwkv5.tiny.load(dtype=args.dtype, gn_eps=args.gn_eps)
        what = (
            f"{rwkv5.tiny.PATH.name}: the small TRAINED byte-level RWKV-5.2 model that ships with rwkv5 "
            "(trained on faker text in 16 languages, see docs/tiny-model.md)"
        )
    else:
        path = fetch_model(args.model) if is_url(args.model) else args.model
        model = rwkv5.load(path, dtype=args.dtype, gn_eps=args.gn_eps)
        vocab = model.config.vocab_size
        what = f"{args.model}: " + (
            "World vocabulary, World tokenizer"
            if vocab == WORLD_VOCAB
            else "256-token vocabulary, bytes as tokens"
        )
    if model.config.vocab_size not in (256, WORLD_VOCAB):
        raise SystemExit(
            f"rwkv5.demo: error: {args.model}: the model's vocabulary has {model.config.vocab_size} "
            f"tokens; the demo knows the World vocabulary ({WORLD_VOCAB}) and bytes (256)"
        )
    return model, what


def main(argv=None):
    args = parse_args(argv)
    import rwkv5
    from rwkv5.dataprep import BinIdx, build, stats_table
    from rwkv5.scoring import log_softmax
    from rwkv5.tokenizer import WorldTokenizer

    print(
        f"rwkv5 {rwkv5.__version__} demo: {rwkv5.get_num_threads()} threads, "
        f"kernels {rwkv5._model.get_isa()[0]}"
    )
    work = tempfile.mkdtemp(prefix="rwkv5-demo-")
    prefix = os.path.join(work, "sample")

    _section("1. Training data: multilingual corpus -> RWKV-LM binidx")
    print(f"input: {CORPUS} ({CORPUS.stat().st_size:,} bytes)")
    t0 = time.perf_counter()
    build([str(CORPUS)], prefix, lang_field="lang", ctx_len=CTX_LEN, workers=2, log=lambda s: None)
    print(
        f"built {prefix}.bin/.idx + .manifest.json in {time.perf_counter() - t0:.2f} s "
        f"(World tokenizer, token 0 after each document)\n"
    )
    print(stats_table(prefix))  # ends with the --my_exit_tokens/--magic_prime line for train.py

    _section("2. Model")
    model, what = load_model(args)
    world = model.config.vocab_size == WORLD_VOCAB
    print(what)
    print(f"{model!r}")

    _section("3. Scoring the data set, parallel vs recurrent mode")
    tok = WorldTokenizer()
    data = BinIdx(prefix)
    langs = corpus_languages(CORPUS)
    per_lang: dict[str, list[float]] = {}
    worst = largest = 0.0
    t_par = t_rec = 0.0
    n_tokens_total = 0
    for i in range(len(data)):
        world_ids = np.asarray(data[i][:-1], dtype=np.int64)  # drop the end-of-document 0
        raw = tok.decode_bytes(world_ids)
        ids = world_ids if world else np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
        t0 = time.perf_counter()
        lp_par, _ = model.forward(ids, mode="parallel", full_output=True)
        t_par += time.perf_counter() - t0
        t0 = time.perf_counter()
        lp_rec, _ = model.forward(ids, mode="recurrent", full_output=True)
        t_rec += time.perf_counter() - t0
        worst = max(worst, float(np.abs(lp_par - lp_rec).max()))
        largest = max(largest, float(np.abs(lp_rec).max()))
        nll = -log_softmax(lp_par[:-1])[np.arange(len(ids) - 1), ids[1:]].sum()
        # bits per byte over the bytes that were predicted: all but those of the first token
        first = len(tok.decode_bytes(ids[:1])) if world else 1
        per_lang.setdefault(langs[i], [0.0, 0])
        per_lang[langs[i]][0] += nll
        per_lang[langs[i]][1] += len(raw) - first
        n_tokens_total += len(ids)
    print(
        f"{len(data)} documents, {n_tokens_total:,} tokens: max |logit(parallel) - logit(recurrent)| = {worst:.2e} "
        f"(relative to the largest |logit|, {largest:.1f}: {worst / largest:.1e} - float32 rounding)"
    )
    print(
        f"speed: parallel {n_tokens_total / t_par:,.0f} tok/s, recurrent {n_tokens_total / t_rec:,.0f} tok/s\n"
    )
    print(f"{'language':10s} {'bytes':>7s} {'bits/byte':>10s}")
    for lang, (nll, n) in sorted(per_lang.items(), key=lambda kv: kv[1][0] / kv[1][1]):
        print(f"{lang:10s} {n:7d} {nll / n / np.log(2):10.3f}")
    if args.model is None:
        print(
            "(none of these documents was trained on; 'code' and 'emoji' are not among the model's\n"
            " training languages, so they stay near the 8 bits/byte of a uniform guess)"
        )

    _section("4. Generation (streaming, temperature 1.0, top_p 0.85, seed 0)")
    sys.stdout.write(args.prompt)
    for piece in model.generate(args.prompt, max_tokens=args.max_tokens, seed=0):
        sys.stdout.write(piece)
        sys.stdout.flush()
    print("\n")
    print(f"outputs left in {work} (python -m rwkv5.dataprep inspect {prefix} --doc 0)")
    return 0


def corpus_languages(corpus):
    import json

    with open(corpus, encoding="utf-8") as f:
        return [json.loads(line)["lang"] for line in f if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
