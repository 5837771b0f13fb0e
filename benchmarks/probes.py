"""Physical-limit probes: what this machine can do at best, measured in the same run as the
benchmarks so every figure can be given as a fraction of it.

- C probes (benchmarks/probes.c, compiled here with ``cc -O2`` into a cache folder under the temp
  dir and called through ctypes): memory read bandwidth with wide vector loads, one pinned
  pthread per core, on a 1 GiB buffer (far larger than the L3), best of several passes; float32
  FMA peak from independent FMA chains.
- NumPy references: ``np.sum`` streaming read of the same buffer (1 thread, and 2 Python threads
  on halves), and float32 matmul GFLOP/s on the parallel-mode shapes of each model
  ((T, C)x(C, C), (T, C)x(C, F), (T, F)x(F, C) at T = 512). The matmuls run in a subprocess
  with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE both unset (this environment may set them, which
  slows OpenBLAS); the BLAS kernel actually used is recorded from threadpoolctl. The test suite's
  environment is never changed.

``limits(quick)`` measures once per process and caches; bench_model uses it for its ratios.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from .common import run_in_subprocess, section

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "probes.c")
ISA_NAMES = {0: "scalar", 1: "AVX2+FMA", 2: "AVX-512F"}
BUFFER_BYTES = 1 << 30  # 1 GiB, far larger than any L3 of this machine kind
T_PARALLEL = 512

# The released RWKV-5 World shapes benchmarked (name, n_layer, n_embd).
MODEL_SHAPES = [("0.1B", 12, 768), ("0.4B", 24, 1024), ("1.5B", 24, 2048)]


def n_ffn(c: int) -> int:
    return int(3.5 * c) // 32 * 32


def thread_counts() -> list:
    """1 thread and all usable CPUs (deduplicated)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return sorted({1, max(1, n)})


_lib = None


def load_library():
    """Compile probes.c (once per source version) and load it with ctypes."""
    global _lib
    if _lib is not None:
        return _lib
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), f"rwkv5-bench-probes-{os.getuid()}")
    os.makedirs(cache, exist_ok=True)
    so = os.path.join(cache, f"probes-{digest}.so")
    if not os.path.exists(so):
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise OSError("no C compiler (cc/gcc) found to build benchmarks/probes.c")
        tmp = so + f".{os.getpid()}.tmp"
        p = subprocess.run(
            [cc, "-O2", "-Wall", "-Wextra", "-shared", "-fPIC", "-pthread", SOURCE, "-o", tmp],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise OSError(f"compiling {SOURCE} failed:\n{p.stderr}")
        os.replace(tmp, so)
    lib = ctypes.CDLL(so)
    lib.probe_best_isa.restype = ctypes.c_int
    lib.probe_read_bw.restype = ctypes.c_double
    lib.probe_read_bw.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.probe_read_sum.restype = ctypes.c_double
    lib.probe_read_sum.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.probe_fma_peak.restype = ctypes.c_double
    lib.probe_fma_peak.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int, ctypes.c_int]
    _lib = lib
    return lib


def best_isa() -> int:
    return load_library().probe_best_isa()


def read_bandwidth(buf: np.ndarray, threads: int, passes: int, isa: int | None = None) -> float:
    """Best-pass read bandwidth of the C probe over buf (float32, contiguous), GB/s."""
    if buf.dtype != np.float32 or not buf.flags.c_contiguous:
        raise ValueError(
            f"buf must be a contiguous float32 array, got {buf.dtype} contiguous={buf.flags.c_contiguous}"
        )
    lib = load_library()
    isa = lib.probe_best_isa() if isa is None else isa
    r = lib.probe_read_bw(buf.ctypes.data, buf.size, threads, passes, isa)
    if r <= 0:
        raise OSError(f"probe_read_bw failed: errno {-r:.0f}")
    return r


def read_sum(buf: np.ndarray, isa: int) -> float:
    """What the probe's read kernel for `isa` computes over buf: its float32 sum (for testing)."""
    if buf.dtype != np.float32 or not buf.flags.c_contiguous:
        raise ValueError(
            f"buf must be a contiguous float32 array, got {buf.dtype} contiguous={buf.flags.c_contiguous}"
        )
    lib = load_library()
    if not 0 <= isa <= lib.probe_best_isa():
        raise ValueError(f"isa must be 0..{lib.probe_best_isa()} on this CPU, got {isa}")
    return lib.probe_read_sum(buf.ctypes.data, buf.size, isa)


def fma_peak(threads: int, passes: int = 5, seconds: float = 0.2, isa: int | None = None) -> float:
    """Best-pass float32 FMA throughput of `threads` threads together, GFLOP/s."""
    lib = load_library()
    isa = lib.probe_best_isa() if isa is None else isa
    # Calibrate iterations so one pass takes about `seconds`.
    iters = 1 << 16
    while True:
        t0 = time.perf_counter()
        r = lib.probe_fma_peak(threads, iters, 1, isa)
        dt = time.perf_counter() - t0
        if r <= 0:
            raise OSError(f"probe_fma_peak failed: errno {-r:.0f}")
        if dt >= seconds / 4 or iters > 1 << 30:
            break
        iters *= 4
    iters = max(1, int(iters * seconds / max(dt, 1e-6)))
    r = lib.probe_fma_peak(threads, iters, passes, isa)
    if r <= 0:
        raise OSError(f"probe_fma_peak failed: errno {-r:.0f}")
    return r


def numpy_sum_bandwidth(buf: np.ndarray, threads: int, passes: int) -> float:
    """Best-pass GB/s of np.sum over buf; with threads > 1, each Python thread sums its own slice
    (np.sum releases the GIL)."""
    if threads == 1:
        best = float("inf")
        for _ in range(passes):
            t0 = time.perf_counter()
            np.sum(buf)
            best = min(best, time.perf_counter() - t0)
        return buf.nbytes / best / 1e9
    parts = np.array_split(buf, threads)
    best = float("inf")
    for _ in range(passes):
        barrier = threading.Barrier(threads + 1)

        def work(x):
            barrier.wait()
            np.sum(x)

        ts = [threading.Thread(target=work, args=(p,)) for p in parts]
        for t in ts:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        best = min(best, time.perf_counter() - t0)
    return buf.nbytes / best / 1e9


def matmul_shapes(c: int, t: int = T_PARALLEL) -> list:
    """The three GEMM shapes of parallel mode for a model of width c, as (label, M, K, N):
    (T,C)x(C,C) for r/k/v/g/output and the FFN receptance, (T,C)x(C,F) FFN key, (T,F)x(F,C) FFN value."""
    f = n_ffn(c)
    return [("TxC.CxC", t, c, c), ("TxC.CxF", t, c, f), ("TxF.FxC", t, f, c)]


def numpy_matmul_child(widths: list, threads: list, repeat: int) -> dict:
    """Runs in a subprocess (env prepared by numpy_matmul): float32 x @ W.T GFLOP/s per shape."""
    import threadpoolctl

    info = [
        {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
        for i in threadpoolctl.threadpool_info()
    ]
    rng = np.random.default_rng(0)
    out: dict = {
        "blas": info,
        "env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
        "results": {},
    }
    for c in widths:
        for label, m, k, n in matmul_shapes(c):
            x = rng.standard_normal((m, k), dtype=np.float32)
            w = rng.standard_normal((n, k), dtype=np.float32)  # stored [out, in] like the model
            y = np.empty((m, n), np.float32)
            for nt in threads:
                with threadpoolctl.threadpool_limits(limits=nt, user_api="blas"):
                    np.matmul(x, w.T, out=y)  # warm-up
                    # At least `repeat` calls, more while under a 0.3 s budget: the best call is the
                    # figure, and on a shared machine more tries find an undisturbed one.
                    ts = []
                    t_end = time.perf_counter() + 0.3
                    while len(ts) < repeat or (time.perf_counter() < t_end and len(ts) < 200):
                        t0 = time.perf_counter()
                        np.matmul(x, w.T, out=y)
                        ts.append(time.perf_counter() - t0)
                ts.sort()
                best, med = ts[0], ts[len(ts) // 2]
                flops = 2.0 * m * k * n
                # "seconds"/"gflops" are the best call: the limit, least affected by other load.
                out["results"][f"{c}:{label}:{nt}"] = {
                    "seconds": best,
                    "gflops": flops / best / 1e9,
                    "median_seconds": med,
                    "median_gflops": flops / med / 1e9,
                }
    return out


def numpy_matmul(widths: list, threads: list, repeat: int) -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    res = run_in_subprocess(
        "benchmarks.probes:numpy_matmul_child",
        {"widths": widths, "threads": threads, "repeat": repeat},
        timeout=900,
        env=env,
    )
    res["unset_env"] = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ]
    return res


def numpy_model_gflops(mm: dict, c: int, threads: int) -> float | None:
    """NumPy GFLOP/s over one layer's GEMM mix of parallel mode for width c: six (T,C)x(C,C)
    (r, k, v, g, output, FFN receptance), one (T,C)x(C,F), one (T,F)x(F,C); total flops / total time."""
    weights = {"TxC.CxC": 6, "TxC.CxF": 1, "TxF.FxC": 1}
    flops = secs = 0.0
    for label, m, k, n in matmul_shapes(c):
        r = mm["results"].get(f"{c}:{label}:{threads}")
        if r is None:
            return None
        flops += weights[label] * 2.0 * m * k * n
        secs += weights[label] * r["seconds"]
    return flops / secs / 1e9


_cache: dict = {}


def limits(quick: bool = False) -> dict:
    """All probe figures, measured once per process (later calls return the cached dict)."""
    if "limits" in _cache:
        return _cache["limits"]
    threads = thread_counts()
    passes = 5 if quick else 10
    lib_isa = best_isa()
    res: dict = {
        "threads": threads,
        "isa": ISA_NAMES[lib_isa],
        "buffer_bytes": BUFFER_BYTES,
        "read_bw_gbs": {},
        "read_bw_gbs_avx2": {},
        "fma_gflops": {},
        "numpy_sum_gbs": {},
    }
    buf = np.full(BUFFER_BYTES // 4, 1.0, dtype=np.float32)  # touches every page
    try:
        for nt in threads:
            res["read_bw_gbs"][nt] = read_bandwidth(buf, nt, passes)
            if lib_isa == 2 and not quick:
                res["read_bw_gbs_avx2"][nt] = read_bandwidth(buf, nt, passes, isa=1)
            res["numpy_sum_gbs"][nt] = numpy_sum_bandwidth(buf, nt, passes)
    finally:
        del buf
    for nt in threads:
        res["fma_gflops"][nt] = fma_peak(
            nt, passes=3 if quick else 7, seconds=0.1 if quick else 0.25
        )
    widths = [c for _, _, c in (MODEL_SHAPES[:2] if quick else MODEL_SHAPES)]
    try:
        res["numpy_matmul"] = numpy_matmul(widths, threads, repeat=5 if quick else 9)
    except Exception as e:  # threadpoolctl missing, subprocess failure...
        res["numpy_matmul"] = {"error": f"{type(e).__name__}: {e}", "results": {}}
    _cache["limits"] = res
    return res


def fma_limit(L: dict, threads: int, extra_per_thread=()) -> float:
    """FMA peak of `threads` cores: threads x the best per-thread figure seen (cores are alike; a
    2-thread probe that shared a core with another process would understate it)."""
    per = [g / t for t, g in L["fma_gflops"].items()] + list(extra_per_thread)
    return threads * max(per)


def run(quick: bool = False) -> list:
    """Probe sections for the harness (and the cached limits for the model benchmark)."""
    L = limits(quick)
    rows = []
    for nt in L["threads"]:
        rows.append(
            [
                nt,
                L["read_bw_gbs"][nt],
                L["read_bw_gbs_avx2"].get(nt),
                L["numpy_sum_gbs"][nt],
                L["numpy_sum_gbs"][nt] / L["read_bw_gbs"][nt],
                L["fma_gflops"][nt],
                L["fma_gflops"][nt] / nt,
            ]
        )
    notes = [
        f"C probe: {L['isa']} loads, 8 accumulators, one pinned pthread per thread, "
        f"{L['buffer_bytes'] >> 20} MiB buffer, best of several passes; GB/s = 1e9 bytes/s",
        "numpy sum: np.sum over the same buffer (with 2 threads: 2 Python threads on halves)",
        "FMA peak: 12 independent FMA chains per thread, 2 flops per lane per FMA",
        "the machine is shared: figures are best-of passes and may still be depressed by other load "
        f"(1-minute load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs when printed)",
    ]
    probes = section(
        "Limits: memory read bandwidth and FMA peak",
        [
            "threads",
            "read GB/s (C)",
            "read GB/s (C, AVX2)",
            "np.sum GB/s",
            "np.sum / C x",
            "FMA GFLOP/s",
            "FMA GFLOP/s per thread",
        ],
        rows,
        notes,
    )
    mm = L["numpy_matmul"]
    rows = []
    for key, r in mm.get("results", {}).items():
        c, label, nt = key.split(":")
        m, k, n = next((m, k, n) for lb, m, k, n in matmul_shapes(int(c)) if lb == label)
        rows.append(
            [
                int(c),
                f"({m},{k})x({k},{n})",
                int(nt),
                r["seconds"] * 1e3,
                r["gflops"],
                r["gflops"] / fma_limit(L, int(nt)),
            ]
        )
    blas = mm.get("blas") or []
    kernel = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} {b.get('architecture')}" for b in blas
    )
    notes = [
        f"BLAS used: {kernel or 'unknown'}",
        f"run in a subprocess with {', '.join(mm.get('unset_env') or ['(none)'])} unset "
        "(the test environment is not changed)",
        "best of several calls after a warm-up (the limit; medians are in the JSON); FMA peak = "
        "threads x best per-thread FMA figure; "
        "x = W.T with W stored [out, in] as in the model",
    ]
    if "error" in mm:
        notes.insert(0, f"NumPy matmul probe failed: {mm['error']}")
    gemm = section(
        "Limits: NumPy float32 matmul on the parallel-mode shapes (T = 512)",
        ["C", "product", "threads", "ms", "GFLOP/s", "of FMA peak x"],
        rows,
        notes,
    )
    return [probes, gemm]


if __name__ == "__main__":
    from .common import format_table

    for sec in run(quick="--quick" in sys.argv):
        print(format_table(sec))
        print()
