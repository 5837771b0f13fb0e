"""Command line: ``python -m rwkv5 <command> ...`` (also installed as ``rwkv5``).

Commands are registered in ``COMMANDS``: each is a function ``add_<name>(subparsers)`` that
adds its subparser and sets ``func`` (called with the parsed args, returns an exit code).
To add a command, write such a function and append it to ``COMMANDS``.

Errors the user can fix (bad file, bad option) print one line ``rwkv5 <command>: error: ...``
and exit with code 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .formats.quantized import FORMS
from .model import STORAGE_DTYPES  # the package is imported already (python -m rwkv5)


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# -- convert -------------------------------------------------------------------------------------

QUANTIZED = tuple(FORMS)  # the quantised types: saved in their own form (rwkv5.formats.quantized)
CONVERT_DTYPES = ("bf16", "fp16", "fp32") + QUANTIZED


def _is_matrix(name, a) -> bool:
    """The big weights that take the requested storage type: 2-D+ tensors that are not ``time_*``."""
    return a.ndim >= 2 and ".time_" not in name


def convert(src, dst, dtype, out=None) -> dict:
    """Convert checkpoint ``src`` (any format ``rwkv5.load`` reads) to a safetensors file ``dst``.

    Matrices (2-D weights) are stored as ``dtype``; vectors and ``time_*`` tensors as fp32 (a
    lossless widening from bf16/fp16, negligible in size; rwkv.cpp's converter does the same),
    or fp64 if they are fp64.
    Names are written as RWKV-LM names; state-tuning tensors are kept. The source's GroupNorm
    epsilon default is recorded in the metadata (``gn_eps``) so the result computes the same.
    """
    import numpy as np

    from . import __version__
    from .formats.rwkvcpp import QuantizedTensor
    from .formats.safetensors import write_safetensors
    from .loading import convert_array, read_checkpoint

    out = out or sys.stdout
    if dtype not in CONVERT_DTYPES:
        raise CommandError(f"--dtype must be one of {', '.join(CONVERT_DTYPES)}, got {dtype!r}")
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise CommandError(f"output {dst} is the input file")
    t0 = time.perf_counter()
    if dtype in QUANTIZED:
        return _convert_quantized(src, dst, dtype, out, t0)
    sd, info = read_checkpoint(src)
    tensors, dtypes = {}, {}
    counts = {}
    for name, a in sd.items():
        kind = info["kinds"][name]
        # float64 vectors (rwkv.cpp's time_decay = log(-log(w)), see formats/rwkvcpp.py) stay float64:
        # rounding them would change what the converted file computes.
        target = dtype if _is_matrix(name, a) else ("fp64" if kind == "fp64" else "fp32")
        try:
            b = convert_array(a, kind, target)
        except ValueError as e:
            raise CommandError(f"tensor {name!r}: {e}") from None
        tensors[name] = b
        if target == "bf16":
            dtypes[name] = "BF16"
        # a quantised rwkv.cpp matrix is read as fp32 (dequantized exactly): say what it was
        label = f"{a.kind} (dequantized)" if isinstance(a, QuantizedTensor) else kind
        counts[(label, target)] = counts.get((label, target), 0) + 1
    if info["time_state"] is not None:
        for i, kv in enumerate(info["time_state"]):
            # back to the file layout [h][value][key] (see state_io.time_state_to_att_kv)
            tensors[f"blocks.{i}.att.time_state"] = np.ascontiguousarray(kv.transpose(0, 2, 1))
    meta = {
        "format": "rwkv5-checkpoint",
        "source_format": info["format"],
        "source": os.path.basename(src),
        "dtype": dtype,
        "gn_eps": repr(float(info["gn_eps"])),
        "converted_by": f"rwkv5 {__version__}",
    }
    nbytes = write_safetensors(dst, tensors, metadata=meta, dtypes=dtypes)
    dt = time.perf_counter() - t0
    print(
        f"read {src} ({info['format']}{', Hugging Face names' if info['hf_names'] else ''}): "
        f"{len(sd)} tensors",
        file=out,
    )
    for (kind, target), n in sorted(counts.items()):
        print(f"  {n:5d} tensors {kind} -> {target}", file=out)
    if info["time_state"] is not None:
        print(
            f"  kept {len(info['time_state'])} state-tuning tensors (blocks.i.att.time_state, fp32)",
            file=out,
        )
    print(
        f"wrote {dst}: safetensors, {nbytes} bytes, gn_eps default {info['gn_eps']:g} recorded, "
        f"{dt:.2f} s",
        file=out,
    )
    return {"tensors": len(tensors), "bytes": nbytes}


def _convert_quantized(src, dst, dtype, out, t0) -> dict:
    """convert --dtype int8|int4: the model quantised at load (all threads), saved in the quantised form
    (rwkv5.formats.quantized) that rwkv5.load maps without quantising again."""
    from . import __version__
    from .loading import load, sniff_format
    from .saving import save_model

    try:
        fmt = sniff_format(src)
        model = load(src, dtype=dtype)
    except ValueError as e:
        raise CommandError(str(e)) from None
    t1 = time.perf_counter()
    meta = {
        "source_format": fmt,
        "source": os.path.basename(src),
        "converted_by": f"rwkv5 {__version__}",
    }
    nbytes = save_model(model, dst, metadata=meta)
    n = sum(isinstance(w, tuple) for w in model._weights.values())
    print(
        f"read {src} and quantised {n} matrices to {dtype} in {t1 - t0:.2f} s "
        f"(the embedding and vectors kept as read)",
        file=out,
    )
    print(
        f"wrote {dst}: safetensors, {dtype} quantised form, {nbytes} bytes, gn_eps {model.config.gn_eps:g} "
        f"recorded, {time.perf_counter() - t0:.2f} s",
        file=out,
    )
    return {"tensors": None, "bytes": nbytes}


def _run_convert(args) -> int:
    convert(args.input, args.output, args.dtype)
    return 0


def add_convert(sub):
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint (.pth / safetensors / rwkv.cpp) to safetensors",
        description="Convert a checkpoint to safetensors with RWKV-LM names. Matrices are "
        "stored as --dtype, vectors and time_* tensors as fp32.",
    )
    p.add_argument(
        "input", help="checkpoint file (format detected from its content) or folder of shards"
    )
    p.add_argument("output", help="safetensors file to write (atomically)")
    p.add_argument(
        "--dtype",
        required=True,
        choices=CONVERT_DTYPES,
        help="storage type of the matrices; int8 and int4 write the quantised form (int8: scales "
        "beside the matrices; int4: blocks with their scales; docs/formats.md) that loads without "
        "quantising again",
    )
    p.set_defaults(func=_run_convert)


# -- model commands: info, generate, chat, eval, bench -------------------------------------------


def _add_model_args(p, dtype_help="storage type of the matrices (default: what the file holds)"):
    p.add_argument(
        "model", help="checkpoint: .pth, safetensors, rwkv.cpp .bin, or a folder of shards"
    )
    p.add_argument("--dtype", choices=STORAGE_DTYPES, default=None, help=dtype_help)
    p.add_argument(
        "--gn-eps",
        type=float,
        default=None,
        help="GroupNorm epsilon (default: 64e-5 for .pth/safetensors, 1e-5 for rwkv.cpp files)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="C threads (default: the CPUs this process may use)",
    )


def _load_model(args):
    import rwkv5

    if args.threads is not None:
        if args.threads < 1:
            raise CommandError(f"--threads must be >= 1, got {args.threads}")
        rwkv5.set_num_threads(args.threads)
    if not os.path.exists(args.model):
        raise CommandError(f"model file not found: {args.model}")
    return rwkv5.load(args.model, dtype=args.dtype, gn_eps=args.gn_eps)


def _weight_arrays(model):
    """Every array the model holds (weights, scales): the values of its name -> array mapping, an
    int8 matrix being a (q, scale) tuple."""
    import numpy as np

    out, todo = [], list(model._weights.values())
    while todo:
        x = todo.pop()
        if isinstance(x, np.ndarray):
            out.append(x)
        elif isinstance(x, (tuple, list)):
            todo.extend(x)
    return out


def _sampling_args(p):
    p.add_argument(
        "--max-tokens", type=int, default=200, help="tokens to generate at most (default: 200)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="applied to the probabilities after the top-p/top-k cut; 0 = greedy (default: 1.0)",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=0.85,
        help="keep the most likely tokens up to this cumulative probability (default: 0.85)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=0,
        help="keep only the k most likely tokens; 0 = no limit (default: 0)",
    )
    p.add_argument(
        "--presence-penalty",
        type=float,
        default=0.2,
        help="subtracted from the logit of every token already generated (default: 0.2)",
    )
    p.add_argument(
        "--frequency-penalty",
        type=float,
        default=0.2,
        help="subtracted once per earlier occurrence of a token (default: 0.2)",
    )
    p.add_argument(
        "--penalty-decay",
        type=float,
        default=0.996,
        help="the occurrence counts are multiplied by this after every token (default: 0.996)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the sampler (default: a fresh random seed)"
    )


def _sampling_kwargs(args) -> dict:
    return dict(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        penalty_decay=args.penalty_decay,
        seed=args.seed,
    )


def count_with_unit(n) -> str:
    """A parameter count in the unit models are named in: billions from 1e9, else millions from
    1e4, with 3 significant digits (2 decimals below 10): 495616 -> "0.50 M", 12_345_678 ->
    "12.3 M", 1_578_000_000 -> "1.58 B"; below 10,000 the plain number."""
    if n < 1e4:
        return f"{n:,d}"
    v, unit = (n / 1e9, "B") if n >= 999.5e6 else (n / 1e6, "M")
    return f"{v:,.0f} {unit}" if v >= 100 else f"{v:.1f} {unit}" if v >= 10 else f"{v:.2f} {unit}"


def _run_info(args) -> int:
    import resource

    t0 = time.perf_counter()
    model = _load_model(args)
    dt = time.perf_counter() - t0
    c = model.config
    arrays = _weight_arrays(model)
    n_params = sum(int(a.size) for a in arrays)
    held = sum(a.nbytes for a in arrays)
    print(f"model      {args.model}")
    print(
        f"version    RWKV-{c.version}   layers {c.n_layer}   n_embd {c.n_embd}   heads {c.n_head} x {c.head_size}"
        f"   ffn {c.n_ffn}   vocab {c.vocab_size}"
    )
    print(f"storage    {c.dtype}   GroupNorm eps {c.gn_eps:g}")
    print(f"parameters {n_params:,} ({count_with_unit(n_params)})")
    print(
        f"weights    {held / 2**20:,.1f} MiB held (file-backed where the storage type matches the file)"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"loaded in  {dt:.2f} s; peak RSS {rss:,.0f} MiB")
    return 0


def add_info(sub):
    p = sub.add_parser("info", help="show a checkpoint's configuration, size and memory use")
    _add_model_args(p)
    p.set_defaults(func=_run_info)


def _tokenizer_for(model, args):
    from .generation import default_tokenizer

    if getattr(args, "vocab", None):
        from rwkv5.tokenizer import WorldTokenizer

        return WorldTokenizer(args.vocab)
    return default_tokenizer(model)


def _run_generate(args) -> int:
    import rwkv5

    model = _load_model(args)
    tok = _tokenizer_for(model, args)
    state = rwkv5.State.load(args.state_in) if args.state_in else None
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if args.echo:
        sys.stdout.write(prompt)
    final = []
    for piece in model.generate(
        prompt,
        tokenizer=tok,
        state=state,
        stop=args.stop or None,
        on_state=final.append,
        **_sampling_kwargs(args),
    ):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.state_out and final:
        final[0].save(args.state_out)
        print(f"[state saved to {args.state_out}]", file=sys.stderr)
    return 0


def add_generate(sub):
    p = sub.add_parser(
        "generate",
        help="continue a prompt, streaming the text",
        description="Continue PROMPT (or standard input) with the model, printing text as it "
        "is generated. Sampling follows the ChatRWKV pipeline (see rwkv5.generation).",
    )
    _add_model_args(p)
    p.add_argument(
        "prompt", nargs="?", default=None, help="prompt text (default: read standard input)"
    )
    _sampling_args(p)
    p.add_argument("--stop", action="append", help="stop when this text appears (repeatable)")
    p.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    p.add_argument("--state-in", help="continue from a saved State file")
    p.add_argument("--state-out", help="save the final State to this file")
    p.add_argument(
        "--vocab",
        help="World-format vocab file (default: the World vocab; bytes for 256-token models)",
    )
    p.set_defaults(func=_run_generate)


CHAT_HELP = "commands: /reset (forget the conversation), /save FILE (save the state), /quit"


def chat_loop(model, tokenizer, read_line, write, kwargs, state=None, user="User", bot="Assistant"):
    """The interactive loop of ``rwkv5 chat``: the state is kept between turns, so each turn only feeds
    the new message. ``read_line`` returns None at end of input. Returns the final state."""
    start = state
    turn = 0
    while True:
        write(f"{user}: ")
        line = read_line()
        if line is None:
            write("\n")
            return state
        msg = line.strip()
        if not msg:
            continue
        if msg in ("/quit", "/exit"):
            return state
        if msg == "/reset":
            state = start
            write("[conversation reset]\n")
            continue
        if msg.startswith("/save"):
            path = msg[5:].strip()
            if not path or state is None:
                write("[usage: /save FILE, after at least one turn]\n")
            else:
                state.save(path)
                write(f"[state saved to {path}]\n")
            continue
        if msg.startswith("/"):
            write(f"[unknown command; {CHAT_HELP}]\n")
            continue
        prompt = f"{user}: {msg}\n\n{bot}:"
        write(f"{bot}:")
        turn_kwargs = dict(kwargs)
        if kwargs.get("seed") is not None:  # reproducible session, but a fresh draw each turn
            turn_kwargs["seed"] = [kwargs["seed"], turn]
        turn += 1
        reply = []
        for piece in model.generate(
            prompt, tokenizer=tokenizer, state=state, stop=["\n\n", f"\n{user}:"], **turn_kwargs
        ):
            write(piece)
            reply.append(piece)
        write("\n\n")
        # Close the turn: the state after exactly "prompt reply\n\n". The generator's own final state
        # may already hold the stop string it ended on, so the turn is fed again from its start.
        _, state = model.forward(tokenizer.encode(prompt + "".join(reply) + "\n\n"), state)


def _run_chat(args) -> int:
    model = _load_model(args)
    tok = _tokenizer_for(model, args)
    import rwkv5

    state = rwkv5.State.load(args.state_in) if args.state_in else None
    kwargs = _sampling_kwargs(args)

    def write(s):
        sys.stdout.write(s)
        sys.stdout.flush()

    echo = not sys.stdin.isatty()  # piped input: show it, so the transcript reads as a conversation

    def read_line():
        line = sys.stdin.readline()
        if line and echo:
            write(line if line.endswith("\n") else line + "\n")
        return line if line else None

    print(f"rwkv5 chat: {model!r}\n{CHAT_HELP}", file=sys.stderr)
    try:
        chat_loop(model, tok, read_line, write, kwargs, state=state)
    except KeyboardInterrupt:
        write("\n")
    return 0


def add_chat(sub):
    p = sub.add_parser(
        "chat",
        help="interactive chat that keeps the state between turns",
        description="Chat with the model in the 'User: ...\\n\\nAssistant: ...' format; the "
        "recurrent state carries the conversation. " + CHAT_HELP,
    )
    _add_model_args(p)
    _sampling_args(p)
    p.set_defaults(temperature=1.0, top_p=0.3, max_tokens=500)
    p.add_argument("--state-in", help="start from a saved State file")
    p.add_argument("--vocab", help="World-format vocab file")
    p.set_defaults(func=_run_chat)


def _run_eval(args) -> int:
    import numpy as np

    from .dataprep import DataprepError, open_shards
    from .scoring import score

    model = _load_model(args)
    try:
        # a data-prep set (binidx or zst) through its manifest, or a binidx pair without one
        data = open_shards(args.prefix, bare_binidx=True)
    except (OSError, ValueError, DataprepError) as e:
        raise CommandError(f"cannot read the dataset {args.prefix}: {e}") from None
    n_docs = len(data) if args.max_docs is None else min(len(data), args.max_docs)
    nll, n_tok, n_ok, used = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    for i in range(n_docs):
        doc = np.asarray(data[i], dtype=np.int64)
        if args.max_tokens is not None:
            doc = doc[: max(2, args.max_tokens - n_tok + 1)]
        if doc.size < 2:
            continue
        if int(doc.max()) >= model.config.vocab_size:
            raise CommandError(
                f"document {i} has token {int(doc.max())} >= the model's vocab {model.config.vocab_size}"
            )
        s = score(model, doc, chunk_len=args.chunk_len)
        nll += s.nll_sum
        n_tok += s.n_tokens
        n_ok += s.n_correct
        used += 1
        if args.max_tokens is not None and n_tok >= args.max_tokens:
            break
    if n_tok == 0:
        raise CommandError(f"{args.prefix}: no document with at least 2 tokens")
    dt = time.perf_counter() - t0
    loss = nll / n_tok
    print(
        f"documents {used}   predicted tokens {n_tok:,}   loss {loss:.4f} nats/token   "
        f"perplexity {float(np.exp(loss)):.3f}   accuracy {n_ok / n_tok:.3%}   ({n_tok / dt:,.0f} tok/s)"
    )
    return 0


def add_eval(sub):
    p = sub.add_parser(
        "eval",
        help="loss and perplexity of a model over a tokenized dataset",
        description="Score every document of a dataset written by `python -m rwkv5.dataprep build` "
        "(binidx or zst shards, read through PREFIX.manifest.json; a binidx pair "
        "without a manifest, as RWKV-LM's make_data writes, is read as it is) from a "
        "fresh state; each document's tokens, including its final end-of-document 0, "
        "are predicted from the ones before.",
    )
    p.add_argument(
        "prefix", help="dataset prefix (PREFIX.manifest.json, or PREFIX.bin / PREFIX.idx)"
    )
    p.add_argument("--model", required=True, help="checkpoint file")
    p.add_argument("--dtype", choices=STORAGE_DTYPES, default=None)
    p.add_argument("--gn-eps", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument(
        "--max-tokens", type=int, default=None, help="stop after this many predicted tokens"
    )
    p.add_argument("--chunk-len", type=int, default=256, help="positions per parallel-mode call")
    p.set_defaults(func=_run_eval)


def _run_bench(args) -> int:
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise CommandError(
            "the benchmarks ship with the source checkout, not the installed package: "
            "run `make bench` in a clone of the repository"
        )
    return subprocess.call([sys.executable, "-m", "benchmarks", *args.bench_args], cwd=root)


def add_bench(sub):
    p = sub.add_parser(
        "bench", help="run the benchmarks (same as `make bench`; from a source checkout)"
    )
    p.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        help="arguments for `python -m benchmarks` (e.g. --quick)",
    )
    p.set_defaults(func=_run_bench)


COMMANDS = [add_convert, add_info, add_generate, add_chat, add_eval, add_bench]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="rwkv5", description="RWKV-5 models on the CPU.")
    parser.add_argument("--version", action="version", version=f"rwkv5 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename and not isinstance(e, CommandError):
            msg = f"{e.strerror or e}: {e.filename}"
        print(f"rwkv5 {args.command}: error: {msg}", file=sys.stderr)
        return 2


def run(argv=None) -> int:
    """The installed ``rwkv5`` command: ``main`` with a defined exit status under Ctrl-C (rwkv5/_exit.py)."""
    from ._exit import run as run_guarded

    return run_guarded(main, "rwkv5", argv)


if __name__ == "__main__":
    sys.exit(run())
