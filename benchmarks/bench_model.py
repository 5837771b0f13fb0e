"""Model benchmark: rwkv5's forward pass on random models of the released RWKV-5 World shapes,
against the memory bandwidth and FMA peak measured in the same run (benchmarks/probes.py), NumPy's
float32 GEMM on the same shapes, and the `rwkv` PyPI package (torch CPU, `cpu fp32`) on the same
weights.

Every configuration (shape, weight dtype, threads) runs in its own subprocess: the weights are made
there, so memory goes back to the OS between configurations and peak RSS is the configuration's
own. Figures:

- recurrent tok/s: one token per call from the state left by a 512-token prompt, after warm-up,
  median over several steps. bytes/token = every matrix except emb (att r,k,v,g,output; FFN key,
  value, receptance; head) at the stored weight size, plus one emb row; int8 adds one float32
  scale per row. bw_eff = tok/s x bytes/token / C-probe read bandwidth (same thread count).
- parallel tok/s: forward of T = 512 tokens from a fresh state, last-token logits only, median of
  calls after the first. GFLOP/s counts 2·(L·(6C² + 2CF))·T for the layer GEMMs + 2·V·C for the
  head (one position) + the chunked WKV: 2·C·(2N + Lc) flops per token per layer (per head and
  chunk of Lc tokens: 2·Lc·N² MACs for the state-in and state-out GEMMs, Lc²·N for the intra-chunk
  scores and A·V; Lc = 64 assumed). "vs NumPy" divides by NumPy's float32 GEMM GFLOP/s on the same
  layer mix of shapes; "vs FMA" by the FMA peak (same thread count).
- batched decode: B sequences (B = 1, 4, 16) stepped together, one token each per call
  (Model.forward with (B, 1) tokens and a batched state, from the prompt's state), aggregate
  tok/s = B / median s per step, shown beside the parallel-mode tok/s of the same model, dtype and
  threads. A step reads every weight once for all B rows, so the ratio approaches the share of
  the parallel-mode work a step repeats per token: a step also runs the head (V x C) for every
  sequence, which parallel mode runs once per prompt.
- first-token latency: the first forward of a 512-token prompt in a fresh process (cold: includes
  scratch allocation), prompt -> last-token logits.
- peak RSS: VmHWM of the subprocess after the weights are built and the random state dict freed
  ("during run"), and the whole process peak including weight generation ("with generation").
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np

from .common import median, peak_rss_mib, reset_peak_rss, rss_mib, run_in_subprocess, section
from .probes import (
    MODEL_SHAPES,
    T_PARALLEL,
    fma_limit,
    limits,
    n_ffn,
    numpy_model_gflops,
    thread_counts,
)

VOCAB = 65536
HEAD_SIZE = 64
WKV_CHUNK = 64
DTYPES = ["fp32", "bf16", "fp16", "int8", "int4"]
BYTES_PER_WEIGHT = {
    "fp32": 4,
    "bf16": 2,
    "fp16": 2,
    "int8": 1,
    "int4": 36 / 64,
}  # blocks of 64 weights in 36 bytes, their fp16 group scales inside
SHAPES = {name: (L, C) for name, L, C in MODEL_SHAPES}
BATCHES = (1, 4, 16)  # sequences per step of the batched decode
DESIGN_L3_BYTES = 260 << 20


def _os_l3_bytes():
    """The L3 size the OS reports for cpu0, in bytes, or None."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            s = f.read().strip()
    except OSError:
        return None
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:].upper(), 1)
    try:
        return int(s.rstrip("KMGkmg")) * mult
    except ValueError:
        return None


# Measured earlier on this machine kind (docs/performance.md, "Figures measured earlier"), not in this run.
RWKV_CPP_REFERENCE = [
    # model, weights, threads, recurrent tok/s, recurrent bw fraction, sequence T=512 tok/s
    ("0.1B", "fp32", 2, 44.9, None, 354.0),
    ("0.4B", "fp32", 2, 15.6, 0.92, 104.0),
    ("0.4B", "fp16", 2, 19.7, 0.59, None),
]


# ------------------------------------------------------------------------------ sizes and flops


def matrix_params(L: int, C: int, V: int = VOCAB) -> tuple:
    """(params in the per-layer matrices of all layers, params of the head)."""
    F = n_ffn(C)
    return L * (6 * C * C + 2 * C * F), V * C


def bytes_per_token(L: int, C: int, dtype: str, V: int = VOCAB) -> float:
    """Weight bytes streamed by one recurrent step: all matrices but emb, plus one emb row."""
    layers, head = matrix_params(L, C, V)
    b = BYTES_PER_WEIGHT[dtype] * (layers + head + C)
    if dtype == "int8":  # one float32 scale per output row of every matrix
        F = n_ffn(C)
        rows = L * (5 * C + F + 2 * C) + V
        b += 4 * rows
    return float(b)


def parallel_flops(L: int, C: int, T: int = T_PARALLEL, V: int = VOCAB) -> float:
    layers, head = matrix_params(L, C, V)
    wkv = 2.0 * C * (2 * HEAD_SIZE + WKV_CHUNK) * L * T
    return 2.0 * layers * T + 2.0 * head + wkv


def model_bytes(L: int, C: int, dtype: str, V: int = VOCAB) -> float:
    """Bytes of all weights (incl. emb) at the stored size; small vectors ignored."""
    layers, head = matrix_params(L, C, V)
    return float(BYTES_PER_WEIGHT[dtype] * (layers + head + V * C))


# ------------------------------------------------------------------------------ random weights


def random_state_dict(L: int, C: int, V: int = VOCAB, storage: str = "fp32", seed: int = 0) -> dict:
    """A random RWKV-5.2 state dict of L layers, width C (head size HEAD_SIZE) made fast for
    benchmarks: rwkv5.testing.random_state_dict with tiled=True (matrices tiled from one block of
    normals; values do not matter for speed). storage: "fp32", "fp16" or "bf16" (uint16 bits)."""
    from rwkv5.testing import random_state_dict as make

    dtype = {"fp32": np.float32, "fp16": np.float16, "bf16": "bf16"}[storage]
    return make(
        "5.2",
        n_layer=L,
        n_embd=C,
        head_size=HEAD_SIZE,
        vocab_size=V,
        seed=seed,
        dtype=dtype,
        tiled=True,
    )


def _storage_for(dtype: str) -> str:
    # int8 and int4 are quantised by the model from a bf16 checkpoint, as a user would load a released file.
    return {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "int8": "bf16", "int4": "bf16"}[dtype]


# ------------------------------------------------------------------------------ workers (subprocess)


def supported_dtypes() -> dict:
    """dtype -> None if rwkv5.Model builds a tiny model with it, else the reason it does not."""
    import rwkv5

    out = {}
    for dt in DTYPES:
        try:
            sd = random_state_dict(1, 128, V=256, storage=_storage_for(dt))
            m = rwkv5.Model.from_state_dict(sd, dtype=dt)
            m.forward([1, 2, 3], None, mode="parallel")
            out[dt] = None
        except Exception as e:
            out[dt] = f"{type(e).__name__}: {e}"
    return out


def local_limits(threads: int, quick: bool) -> dict:
    """The read bandwidth and FMA peak measured again inside a worker, seconds before its timings:
    on a shared machine the load changes during a run, so the ratios use the best figure seen in
    the whole run at that thread count (the global probe or any of these)."""
    from .probes import fma_peak, read_bandwidth

    buf = np.full((512 << 20) // 4, 1.0, np.float32)  # 512 MiB: still far beyond the L3
    try:
        bw = read_bandwidth(buf, threads, passes=3 if quick else 5)
    finally:
        del buf
    return {"local_read_bw_gbs": bw, "local_fma_gflops": fma_peak(threads, passes=3, seconds=0.05)}


def ours_worker(shape: str, dtype: str, threads: int, quick: bool, seed: int = 0) -> dict:
    import rwkv5

    L, C = SHAPES[shape]
    t0 = time.perf_counter()
    sd = random_state_dict(L, C, storage=_storage_for(dtype), seed=seed)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = rwkv5.Model.from_state_dict(sd, dtype=dtype)
    t_load = time.perf_counter() - t0
    del sd
    gc.collect()
    peak_with_generation = peak_rss_mib()
    rss_loaded = rss_mib()
    local = local_limits(threads, quick)
    reset_peak_rss()
    rwkv5.set_num_threads(threads)
    load1 = os.getloadavg()[0]
    rng = np.random.default_rng(seed + 1)
    prompt = rng.integers(0, VOCAB, T_PARALLEL).tolist()

    # First-token latency: the first call in this process, cold.
    t0 = time.perf_counter()
    _, state = model.forward(prompt, None, mode="parallel")
    latency = time.perf_counter() - t0

    # Parallel throughput: median of further calls from a fresh state.
    reps = 2 if quick else 4
    par = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.forward(prompt, None, mode="parallel")
        par.append(time.perf_counter() - t0)

    # Recurrent decode from the prompt's state.
    steps, warm = (12, 3) if quick else (32, 4)
    toks = rng.integers(0, VOCAB, steps + warm).tolist()
    rec = []
    for i, tk in enumerate(toks):
        t0 = time.perf_counter()
        _, state = model.forward([tk], state, mode="recurrent")
        if i >= warm:
            rec.append(time.perf_counter() - t0)
    peak_run = peak_rss_mib()
    paired = paired_rounds(model, state, threads, rng, rounds=3 if quick else 5)
    batched = batched_decode(model, state, rng, quick)
    return {
        "shape": shape,
        "dtype": dtype,
        "threads": threads,
        "gen_s": t_gen,
        "load_s": t_load,
        "loadavg_start": load1,
        "loadavg_end": os.getloadavg()[0],
        **local,
        "latency_s": latency,
        "parallel_s": median(par),
        "parallel_all_s": par,
        "recurrent_s": median(rec),
        "recurrent_all_s": rec,
        "rss_loaded_mib": rss_loaded,
        "peak_with_generation_mib": peak_with_generation,
        "peak_run_mib": peak_run,
        "paired_rounds": paired,
        "batched_s": batched,
    }


def batched_decode(model, state, rng, quick: bool) -> dict:
    """{B: median seconds per step} for steps of B sequences, one token each, from the prompt's
    state (shared by the B sequences at the first step, then a batched state)."""
    out = {}
    for B in BATCHES:
        steps, warm = (4, 1) if quick else (8, 2)
        st, times = state, []
        for i in range(steps + warm):
            toks = rng.integers(0, model.config.vocab_size, (B, 1))
            t0 = time.perf_counter()
            _, st = model.forward(toks, st, mode="recurrent")
            if i >= warm:
                times.append(time.perf_counter() - t0)
        out[str(B)] = median(times)
    return out


def paired_rounds(model, state, threads: int, rng, rounds: int, tokens: int = 6) -> list:
    """[read GB/s, median s/token] pairs: the C read probe, then a few decode steps, repeated. On a
    machine whose bandwidth moves during a run (this VM's 2-thread bandwidth does), the ratio of a
    round's decode rate to the bandwidth measured a moment before is the like-for-like bw_eff; the
    median over rounds is reported ("bw_eff paired")."""
    from .probes import read_bandwidth

    buf = np.full((512 << 20) // 4, 1.0, np.float32)  # 512 MiB: far beyond the L3
    out = []
    try:
        for _ in range(rounds):
            bw = read_bandwidth(buf, threads, passes=2)
            ts = []
            for tk in rng.integers(0, VOCAB, tokens).tolist():
                t0 = time.perf_counter()
                _, state = model.forward([tk], state, mode="recurrent")
                ts.append(time.perf_counter() - t0)
            out.append([bw, median(ts)])
    finally:
        del buf
    return out


def peer_worker(shape: str, threads: list, quick: bool, seed: int = 0) -> dict:
    """The `rwkv` package (torch CPU, strategy `cpu fp32`) on the same fp32 weights as ours_worker
    (same seed). Needs RWKV_JIT_ON=1, RWKV_CUDA_ON=0 in the environment (set by the caller)."""
    import tempfile

    import torch

    L, C = SHAPES[shape]
    sd = random_state_dict(L, C, storage="fp32", seed=seed)
    fd, path = tempfile.mkstemp(prefix="rwkv5-bench-peer-", suffix=".pth")
    os.close(fd)
    try:
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
        del sd
        gc.collect()
        from rwkv.model import RWKV

        model = RWKV(model=path, strategy="cpu fp32", verbose=False)
    finally:
        os.remove(path)
    gc.collect()
    rng = np.random.default_rng(seed + 1)
    prompt = rng.integers(0, VOCAB, T_PARALLEL).tolist()
    out = {
        "shape": shape,
        "torch": torch.__version__,
        "version": getattr(model, "version", None),
        "runs": {},
    }
    for nt in threads:
        torch.set_num_threads(nt)
        with torch.no_grad():
            seq = []
            for _ in range(1 if quick else 2):
                t0 = time.perf_counter()
                _, state = model.forward(prompt, None)
                seq.append(time.perf_counter() - t0)
            steps, warm = (8, 2) if quick else (16, 3)
            toks = rng.integers(0, VOCAB, steps + warm).tolist()
            rec = []
            for i, tk in enumerate(toks):
                t0 = time.perf_counter()
                _, state = model.forward([tk], state)
                if i >= warm:
                    rec.append(time.perf_counter() - t0)
        out["runs"][str(nt)] = {
            "sequence_s": median(seq),
            "recurrent_s": median(rec),
            "sequence_all_s": seq,
            "recurrent_all_s": rec,
            "loadavg_end": os.getloadavg()[0],
        }
    return out


# ------------------------------------------------------------------------------ driver


def plan(quick: bool) -> tuple:
    """(list of (shape, dtype) to run for rwkv5, list of shapes to run the peer on)."""
    if quick:
        # 0.1B fits in the L3 of some machine kinds (fp32 ~0.76 GB here does not fit 260 MiB, bf16
        # 0.38 GB neither, but only the 0.4B fp32 ~1.8 GB is comfortably larger than any L3).
        return [
            ("0.1B", "fp32"),
            ("0.1B", "bf16"),
            ("0.4B", "fp32"),
            ("0.4B", "bf16"),
            ("0.4B", "int8"),
        ], ["0.1B", "0.4B"]
    return [(s, d) for s, _, _ in MODEL_SHAPES for d in DTYPES], [s for s, _, _ in MODEL_SHAPES]


def run(quick: bool = False) -> list:
    lim = limits(quick)
    threads = thread_counts()
    configs, peer_shapes = plan(quick)
    l3 = max(DESIGN_L3_BYTES, _os_l3_bytes() or 0)
    notes_common = [
        f"L3: docs/performance.md gives 260 MiB for this machine kind, the OS reports {(_os_l3_bytes() or 0) >> 20} MiB "
        f"here; recurrent figures measure the memory limit honestly only when the weights read per token "
        f"exceed the L3 (> {l3 >> 20} MiB column; 0.4B fp32 ~1.6 GB/token is always well above it)",
        "every configuration runs in a fresh subprocess with its own random weights (seed 0)",
    ]
    try:
        support = run_in_subprocess("benchmarks.bench_model:supported_dtypes", {}, timeout=120)
        support.pop("peak_rss_mib", None)
    except Exception as e:
        return [section("Model", [], [], [f"skipped: rwkv5.Model is not usable here: {e}"])]

    ours = {}
    skipped = []
    for shape, dt in configs:
        if support.get(dt) is not None:
            skipped.append(f"{shape} {dt}: not supported by rwkv5.Model yet ({support[dt]})")
            continue
        for nt in threads:
            try:
                ours[(shape, dt, nt)] = run_in_subprocess(
                    "benchmarks.bench_model:ours_worker",
                    {"shape": shape, "dtype": dt, "threads": nt, "quick": quick},
                    timeout=1800,
                )
            except Exception as e:
                skipped.append(f"{shape} {dt} {nt} threads failed: {e}")

    peers = {}
    peer_notes = []
    env = dict(os.environ, RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
    for shape in peer_shapes:
        try:
            peers[shape] = run_in_subprocess(
                "benchmarks.bench_model:peer_worker",
                {"shape": shape, "threads": threads, "quick": quick},
                timeout=2400,
                env=env,
            )
        except Exception as e:
            peer_notes.append(f"rwkv package on {shape} failed: {e}")

    # Best limits seen in the whole run (the machine may be shared: a depressed probe would
    # flatter every ratio, so each worker measured again and the best figure is the limit).
    # A limit at n threads is the best seen with at most n threads: when another process holds a
    # core, the 2-thread probe can fall below the 1-thread one, and the ratio must not gain from it.
    best_bw = {
        nt: max(
            [lim["read_bw_gbs"][t] for t in threads if t <= nt]
            + [r["local_read_bw_gbs"] for (_, _, t), r in ours.items() if t <= nt]
        )
        for nt in threads
    }
    best_fma = {
        nt: fma_limit(lim, nt, [r["local_fma_gflops"] / t for (_, _, t), r in ours.items()])
        for nt in threads
    }
    mm = lim.get("numpy_matmul", {"results": {}})

    def numpy_limit(c, nt):
        vals = [
            g for g in (numpy_model_gflops(mm, c, t) for t in threads if t <= nt) if g is not None
        ]
        return max(vals) if vals else None

    loads = [r[k] for r in ours.values() for k in ("loadavg_start", "loadavg_end")]
    limit_notes = [
        "limits used for the ratios (best seen in this run with at most that many threads): read "
        + ", ".join(
            f"{best_bw[nt]:.1f} GB/s at {nt} thread{'s' if nt > 1 else ''}" for nt in threads
        )
        + "; FMA "
        + ", ".join(f"{best_fma[nt]:.0f} GFLOP/s at {nt}" for nt in threads),
    ]
    if loads:
        limit_notes.append(
            f"1-minute load average during the model runs: {min(loads):.1f} .. {max(loads):.1f} "
            f"on {os.cpu_count()} CPUs (above the thread count means other work shared the "
            "machine and the figures are depressed)"
        )

    # --- recurrent table
    rows = []
    for (shape, dt, nt), r in ours.items():
        L, C = SHAPES[shape]
        bpt = bytes_per_token(L, C, dt)
        tps = 1.0 / r["recurrent_s"]
        rows.append(
            [
                shape,
                dt,
                nt,
                model_bytes(L, C, dt) / 1e6,
                bpt / 1e6,
                bpt > l3,
                tps,
                1e3 * r["recurrent_s"],
                tps * bpt / 1e9,
                tps * bpt / 1e9 / best_bw[nt],
                median([bpt / t / 1e9 / bw for bw, t in r["paired_rounds"]])
                if r.get("paired_rounds")
                else None,
                r["peak_run_mib"],
                r["peak_with_generation_mib"],
            ]
        )
    rec = section(
        "Model: recurrent decode (one token per call)",
        [
            "model",
            "weights",
            "threads",
            "weights MB",
            "MB read/token",
            f"> {l3 >> 20} MiB L3",
            "tok/s",
            "ms/token",
            "GB/s streamed",
            "bw_eff x",
            "bw_eff paired x",
            "peak RSS MiB",
            "peak RSS incl. gen MiB",
        ],
        rows,
        notes_common
        + limit_notes
        + [
            "bw_eff = tok/s x MB read/token / best C-probe read bandwidth with at most the row's threads "
            "(1.0 = at the memory limit); MB = 1e6 bytes",
            "bw_eff paired: median over rounds of (a read probe, then 6 decode steps) of the round's "
            "decode GB/s / its probe GB/s; on a VM whose bandwidth moves during the run (2 threads here: "
            "42-80 GB/s at different moments) this is the like-for-like figure, and bw_eff (against the "
            "run's best moment) the conservative one",
            "MB read/token: all matrices except emb (incl. head) at the stored size + one emb row; "
            "int8 adds a float32 scale per row",
            "peak RSS: VmHWM after building the model and freeing the random state dict; "
            "'incl. gen' also counts weight generation",
        ]
        + skipped,
    )

    # --- parallel table
    rows = []
    for (shape, dt, nt), r in ours.items():
        L, C = SHAPES[shape]
        tps = T_PARALLEL / r["parallel_s"]
        gf = parallel_flops(L, C) / r["parallel_s"] / 1e9
        npg = numpy_limit(C, nt)
        rows.append(
            [
                shape,
                dt,
                nt,
                tps,
                gf,
                None if npg is None else gf / npg,
                npg,
                gf / best_fma[nt],
                tps * r["recurrent_s"],
                1e3 * r["latency_s"],
            ]
        )
    par = section(
        f"Model: parallel mode, T = {T_PARALLEL} (last-token logits)",
        [
            "model",
            "weights",
            "threads",
            "tok/s",
            "GFLOP/s",
            "vs NumPy GEMM x",
            "NumPy GEMM GFLOP/s",
            "vs FMA peak x",
            "parallel/recurrent x",
            "first-token ms",
        ],
        rows,
        [
            f"GFLOP/s counts 2·params·T for the layer matrices, the head once (last token only), and "
            f"the chunked WKV 2·C·(2N+Lc) per token and layer (N = {HEAD_SIZE}, Lc = {WKV_CHUNK})",
            "vs NumPy GEMM: NumPy float32 GEMM GFLOP/s on the same layer mix of shapes "
            "(6x (T,C)x(C,C), (T,C)x(C,F), (T,F)x(F,C)), best of repeats and of thread counts up to this "
            "row's, OPENBLAS_* unset; "
            "vs FMA peak: threads x the best per-thread C-probe FMA figure of the run",
            "first-token ms: first forward of a 512-token prompt in a fresh process (cold), to the "
            "last-token logits; tok/s: median of later calls",
        ],
    )

    # --- batched decode beside parallel mode
    rows = []
    for (shape, dt, nt), r in ours.items():
        if not r.get("batched_s"):
            continue
        par_tps = T_PARALLEL / r["parallel_s"]
        agg = {int(B): int(B) / t for B, t in r["batched_s"].items()}
        rows.append(
            [shape, dt, nt]
            + [agg.get(B) for B in BATCHES]
            + [par_tps]
            + [None if agg.get(B) is None else agg[B] / par_tps for B in BATCHES]
        )
    bat = section(
        "Model: batched decode (B sequences per step) beside parallel mode",
        ["model", "weights", "threads"]
        + [f"B={B} tok/s" for B in BATCHES]
        + ["parallel tok/s"]
        + [f"B={B}/parallel x" for B in BATCHES],
        rows,
        [
            "B sequences stepped together, one token each per call, from the prompt's state; aggregate "
            "tok/s = B / median s per step. parallel tok/s: the parallel-mode table's figure (same model, "
            "weights, threads)",
            "a step runs the head for every sequence, parallel mode once per prompt: with equally fast "
            "kernels the ratio tends to (layer matrices) / (layer matrices + head) per token, 0.83 at "
            "0.4B, 0.91 at 1.5B",
        ],
    )

    # --- peers
    rows = []
    for shape, p in peers.items():
        for nt in threads:
            pr = p["runs"].get(str(nt))
            o = ours.get((shape, "fp32", nt))
            if pr is None:
                continue
            their_rec, their_seq = 1.0 / pr["recurrent_s"], T_PARALLEL / pr["sequence_s"]
            our_rec = None if o is None else 1.0 / o["recurrent_s"]
            our_par = None if o is None else T_PARALLEL / o["parallel_s"]
            rows.append(
                [
                    shape,
                    nt,
                    their_rec,
                    our_rec,
                    None if our_rec is None else our_rec / their_rec,
                    their_seq,
                    our_par,
                    None if our_par is None else our_par / their_seq,
                ]
            )
    torch_v = next((p.get("torch") for p in peers.values()), None)
    peer = section(
        "Peers: the rwkv package (torch CPU, cpu fp32), same fp32 weights, same run",
        [
            "model",
            "threads",
            "rwkv rec tok/s",
            "ours rec tok/s",
            "ours/rwkv rec x",
            f"rwkv seq T={T_PARALLEL} tok/s",
            "ours parallel tok/s",
            "ours/rwkv seq x",
        ],
        rows,
        [
            f"rwkv {_pkg_version('rwkv')} on torch {torch_v}, RWKV_JIT_ON=1 RWKV_CUDA_ON=0; sequence = its "
            "forward() with a list of 512 tokens; weights saved once with torch.save (fp32) to a temp file",
            "ours = rwkv5 with fp32 weights (rows of the tables above); torch's threads spin while "
            "waiting, so its 2-thread figures suffer most when another process holds a core",
        ]
        + peer_notes,
    )

    rows = []
    for shape, dt, nt, rtps, rbw, stps in RWKV_CPP_REFERENCE:
        o = ours.get((shape, dt, nt))
        our_rec = None if o is None else 1.0 / o["recurrent_s"]
        our_par = None if o is None else T_PARALLEL / o["parallel_s"]
        rows.append(
            [
                shape,
                dt,
                nt,
                rtps,
                rbw,
                our_rec,
                None if our_rec is None else our_rec / rtps,
                stps,
                our_par,
                None if (our_par is None or stps is None) else our_par / stps,
            ]
        )
    ref = section(
        "Peers: rwkv.cpp reference figures (measured earlier on this machine kind, NOT in this run)",
        [
            "model",
            "weights",
            "threads",
            "rwkv.cpp rec tok/s",
            "rwkv.cpp bw frac",
            "ours rec tok/s",
            "ours/rwkv.cpp rec x",
            "rwkv.cpp seq tok/s",
            "ours parallel tok/s",
            "ours/rwkv.cpp seq x",
        ],
        rows,
        [
            "rwkv.cpp is not on PyPI: its figures come from docs/performance.md (AVX-512 build, random RWKV-5.2 "
            "weights, 2 threads); the machine of this run may differ from the one they were measured on "
            "(compare the probe figures with its ~15 GB/s per core, 26-29 GB/s both cores)",
            "It also gives the rwkv package on torch 1.13 (0.1B fp32, 2 threads): 8.2 tok/s "
            "recurrent, 15.3 tok/s sequence",
        ],
    )
    # Raw per-configuration measurements for the JSON file (the harness prints only the tables).
    rec["raw"] = {
        "ours": [dict(r) for r in ours.values()],
        "peers": list(peers.values()),
        "supported_dtypes": support,
    }
    return [rec, par, bat, peer, ref]


def _pkg_version(name: str):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
