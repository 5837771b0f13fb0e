"""rwkv.cpp side by side: the same rwkv.cpp `.bin` files run by rwkv.cpp and by rwkv5, in one run.

Runs only when RWKV_CPP_LIB names a build of rwkv.cpp's shared library (``RWKV_CPP_LIB=/path/to/
librwkv.so make bench``); otherwise its section says how to enable it. Nothing of rwkv.cpp is in
this repository: build it yourself from its public source (docs/performance.md, "rwkv.cpp side by
side"). The binding is our own ctypes declaration of rwkv.h's API (benchmarks/rwkvcpp_peer.py).

Per shape: random RWKV-5.2 weights (benchmarks/bench_model.py's generator, vocab 65536) written once
as rwkv.cpp FP32 and FP16 files (rwkv5.formats.rwkvcpp.write_rwkvcpp); Q8_0, Q5_1 and Q4_0 made
from the FP16 file by rwkv.cpp's own quantizer. rwkv.cpp runs every file; rwkv5 loads the FP32 file
as fp32 and the FP16 file as fp16, bf16, int8 and int4 (rwkv5.load(path, dtype=...), default layout).
Every configuration runs in its own subprocess. Recurrent: one token per call from the state of a
512-token prompt, median of the steps after warm-up. Sequence: the 512-token prompt from a fresh
state (rwkv.cpp: rwkv_eval_sequence_in_chunks, best of chunk 16 and 64; rwkv5: parallel mode).
"B=8": rwkv5 decoding 8 sequences per call, aggregate tok/s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from .common import median, run_in_subprocess, section
from .probes import T_PARALLEL, thread_counts
from .rwkvcpp_peer import ENV, Library, library_path

VOCAB = 65536
CPP_KINDS = ["FP32", "FP16", "Q8_0", "Q5_1", "Q4_0"]
# rwkv5 dtype -> the rwkv.cpp file it loads
OURS = [("fp32", "FP32"), ("fp16", "FP16"), ("bf16", "FP16"), ("int8", "FP16"), ("int4", "FP16")]
BATCH = 8


def make_files(shape: str, folder: str, lib: str, seed: int = 0) -> dict:
    from rwkv5.formats.rwkvcpp import write_rwkvcpp

    from .bench_model import SHAPES, random_state_dict

    L, C = (
        SHAPES[shape] if shape in SHAPES else (int(x) for x in shape.split("x"))
    )  # "0.4B" or "LxC"
    sd = random_state_dict(L, C, V=VOCAB, storage="fp32", seed=seed)
    files = {k: os.path.join(folder, f"{shape}-{k}.bin") for k in CPP_KINDS}
    write_rwkvcpp(files["FP32"], sd, "FP32")
    write_rwkvcpp(files["FP16"], sd, "FP16")
    del sd
    cpp = Library(lib)
    for k in CPP_KINDS[2:]:
        cpp.quantize(files["FP16"], files[k], k)
    return {"files": files, "bytes": {k: os.path.getsize(p) for k, p in files.items()}}


def _steps(quick):
    return (10, 3) if quick else (24, 4)


def cpp_worker(
    path: str, lib: str, threads: int, quick: bool, sequence: bool, seed: int = 1
) -> dict:
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, VOCAB, T_PARALLEL)
    with Library(lib).load(path, threads) as ctx:
        state = ctx.new_state()
        ctx.eval_sequence(prompt[:16], None, state, chunk=16)  # warm-up: builds its graph
        seq = {}
        if sequence:
            for chunk in (16, 64):
                ts = []
                for _ in range(1 if quick else 2):
                    t0 = time.perf_counter()
                    ctx.eval_sequence(prompt, None, state, chunk=chunk)
                    ts.append(time.perf_counter() - t0)
                seq[str(chunk)] = min(ts)
        else:
            ctx.eval_sequence(prompt, None, state, chunk=64)
        steps, warm = _steps(quick)
        rec = []
        nxt = ctx.new_state()
        for i, tk in enumerate(rng.integers(0, VOCAB, steps + warm).tolist()):
            t0 = time.perf_counter()
            ctx.eval(tk, state, nxt)
            if i >= warm:
                rec.append(time.perf_counter() - t0)
            state, nxt = nxt, state
    return {
        "recurrent_s": median(rec),
        "sequence_s": min(seq.values()) if seq else None,
        "sequence_by_chunk": seq,
    }


def ours_worker(
    path: str, dtype: str, threads: int, quick: bool, sequence: bool, batch: int = 0, seed: int = 1
) -> dict:
    import rwkv5

    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, VOCAB, T_PARALLEL).tolist()
    t0 = time.perf_counter()
    model = rwkv5.load(path, dtype=dtype)
    load_s = time.perf_counter() - t0
    rwkv5.set_num_threads(threads)
    _, state = model.forward(prompt, None, mode="parallel")
    seq = None
    if sequence:
        ts = []
        for _ in range(1 if quick else 2):
            t0 = time.perf_counter()
            model.forward(prompt, None, mode="parallel")
            ts.append(time.perf_counter() - t0)
        seq = min(ts)
    steps, warm = _steps(quick)
    rec = []
    if batch:
        state = rwkv5.State.stack([state] * batch)
    for i in range(steps + warm):
        toks = rng.integers(0, VOCAB, (batch, 1)) if batch else [int(rng.integers(0, VOCAB))]
        t0 = time.perf_counter()
        _, state = model.forward(toks, state, mode="recurrent")
        if i >= warm:
            rec.append(time.perf_counter() - t0)
    return {"recurrent_s": median(rec), "sequence_s": seq, "load_s": load_s}


def _tps(r, n=1):
    return None if r is None else n / r["recurrent_s"]


def _ratio(a, b):
    return None if a is None or b is None else a / b


def run(quick: bool = False, shapes=None, threads=None) -> list:
    try:
        lib = library_path()
    except FileNotFoundError as e:
        return [section("rwkv.cpp side by side", [], [], [f"skipped: {e}"])]
    if lib is None:
        return [
            section(
                "rwkv.cpp side by side",
                [],
                [],
                [
                    f"skipped: set {ENV}=/path/to/librwkv.so (rwkv.cpp built by hand, docs/performance.md) to run "
                    "rwkv.cpp and rwkv5 on the same files in this run"
                ],
            )
        ]
    shapes = shapes or (["0.1B", "0.4B"] if quick else ["0.1B", "0.4B", "1.5B"])
    threads = threads or thread_counts()
    rows, notes, sizes = [], [], []
    info = Library(lib).system_info()
    for shape in shapes:
        folder = tempfile.mkdtemp(prefix=f"rwkv5-bench-cpp-{shape}-")
        try:
            made = run_in_subprocess(
                "benchmarks.bench_rwkvcpp:make_files",
                {"shape": shape, "folder": folder, "lib": lib},
                timeout=3600,
            )
            files = made["files"]
            sizes.append(
                f"{shape}: " + ", ".join(f"{k} {b / 1e9:.2f} GB" for k, b in made["bytes"].items())
            )
            for nt in threads:
                r = {}
                for k in CPP_KINDS:
                    try:
                        r["cpp", k] = run_in_subprocess(
                            "benchmarks.bench_rwkvcpp:cpp_worker",
                            {
                                "path": files[k],
                                "lib": lib,
                                "threads": nt,
                                "quick": quick,
                                "sequence": k == "FP32",
                            },
                            timeout=3600,
                        )
                    except Exception as e:
                        notes.append(f"rwkv.cpp {shape} {k} {nt} threads failed: {e}")
                for dt, k, batch in [(d, k, 0) for d, k in OURS] + [("int8", "FP16", BATCH)]:
                    try:
                        r["ours", dt, batch] = run_in_subprocess(
                            "benchmarks.bench_rwkvcpp:ours_worker",
                            {
                                "path": files[k],
                                "dtype": dt,
                                "threads": nt,
                                "quick": quick,
                                "sequence": dt == "fp32",
                                "batch": batch,
                            },
                            timeout=3600,
                        )
                    except Exception as e:
                        notes.append(
                            f"rwkv5 {shape} {dt}{f' B={batch}' if batch else ''} {nt} threads failed: {e}"
                        )
                cpp = {k: _tps(r.get(("cpp", k))) for k in CPP_KINDS}
                ours = {dt: _tps(r.get(("ours", dt, 0))) for dt, _ in OURS}
                b8 = _tps(r.get(("ours", "int8", BATCH)), BATCH)
                cseq = (r.get(("cpp", "FP32")) or {}).get("sequence_s")
                oseq = (r.get(("ours", "fp32", 0)) or {}).get("sequence_s")
                cseq = None if cseq is None else T_PARALLEL / cseq
                oseq = None if oseq is None else T_PARALLEL / oseq
                rows.append(
                    [
                        shape,
                        nt,
                        *[cpp[k] for k in CPP_KINDS],
                        *[ours[d] for d, _ in OURS],
                        b8,
                        cseq,
                        oseq,
                        _ratio(ours["fp32"], cpp["FP32"]),
                        _ratio(ours["fp16"], cpp["FP16"]),
                        _ratio(ours["bf16"], cpp["FP16"]),
                        _ratio(ours["int8"], cpp["Q8_0"]),
                        _ratio(ours["int4"], cpp["Q4_0"]),
                        _ratio(oseq, cseq),
                    ]
                )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    cols = [
        "shape",
        "thr",
        *[f"cpp {k}" for k in CPP_KINDS],
        *[f"rwkv5 {d}" for d, _ in OURS],
        f"rwkv5 int8 B={BATCH} (aggregate)",
        f"seq cpp FP32 T={T_PARALLEL}",
        "seq rwkv5 fp32",
        "fp32/FP32 x",
        "fp16/FP16 x",
        "bf16/FP16 x",
        "int8/Q8_0 x",
        "int4/Q4_0 x",
        "seq x",
    ]
    return [
        section(
            "rwkv.cpp side by side: recurrent tok/s on the same files, same run",
            cols,
            rows,
            [
                f"rwkv.cpp: {lib} ({info})",
                "recurrent = one token per call, median after warm-up; rwkv5 fp16/bf16/int8/int4 load the FP16 file; "
                "Q* made from the FP16 file by rwkv.cpp's quantizer",
                "files: " + "; ".join(sizes),
            ]
            + notes,
        )
    ]
