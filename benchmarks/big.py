"""`python -m benchmarks --big` (``make bench BENCH_ARGS=--big``): the Eagle 7B shape (RWKV-5.2, L32,
C4096, head size 64, FFN 14336, vocab 65536) on a random bf16 safetensors file, made once and kept
in a cache folder outside the repository ($RWKV5_BENCH_CACHE, default ~/.cache/rwkv5/bench; about
15 GB, and 7.5 GB more for its int8 form). Needs about 17 GB of free memory.

Each row loads the file in a fresh process, as a user would, and reports:

- load s: ``rwkv5.load`` wall time (bf16: the blocked copy; int8: quantising at load, all threads;
  int8 saved: opening the file written by ``rwkv5 convert --dtype int8``, no quantising);
- peak RSS / weights: the process's VmHWM growth over the load and the decode, every weight touched,
  divided by the bytes the model holds (the bound is 1.1);
- decode tok/s: one token per call (recurrent mode), median after warm-up; bw_eff: tok/s x bytes
  read per token / the read bandwidth the C probe measures in the same process just before.

Values of the random weights do not matter for speed: each matrix is a strided view of a small
random pool (row r starts 7·r elements further in), written one tensor at a time so generating the
file needs one tensor's memory, not the model's.
"""

from __future__ import annotations

import os
import time
import zlib

import numpy as np

from .common import section

EAGLE_7B = {"n_layer": 32, "n_embd": 4096, "n_ffn": 14336, "vocab": 65536}
HEAD_SIZE = 64
THREADS = (1, 2)


def cache_dir() -> str:
    return os.environ.get("RWKV5_BENCH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "rwkv5", "bench"
    )


def _name(shape: dict, kind: str) -> str:
    return f"rwkv5.2-L{shape['n_layer']}-C{shape['n_embd']}-F{shape['n_ffn']}-V{shape['vocab']}-random-{kind}.safetensors"


def _matches(path: str, shape: dict) -> bool:
    """The cached file exists and is a complete file of this shape (its header and sizes check out)."""
    if not os.path.exists(path):
        return False
    try:
        from rwkv5.formats.safetensors import SafetensorsFile

        t = SafetensorsFile(path).tensors
        return (
            f"blocks.{shape['n_layer'] - 1}.ffn.key.weight" in t
            and f"blocks.{shape['n_layer']}.ffn.key.weight" not in t
            and tuple(t["emb.weight"].shape) == (shape["vocab"], shape["n_embd"])
            and t["blocks.0.ffn.key.weight"].shape[0] == shape["n_ffn"]
        )
    except (OSError, ValueError):
        return False


def random_bf16_file(shape: dict = EAGLE_7B, folder: str | None = None) -> str:
    """The cached random bf16 checkpoint of `shape` (made on the first call, atomically)."""
    from rwkv5.formats.safetensors import write_safetensors
    from rwkv5.testing import random_state_dict

    folder = folder or cache_dir()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, _name(shape, "bf16"))
    if _matches(path, shape):
        return path
    L, C, F, V = shape["n_layer"], shape["n_embd"], shape["n_ffn"], shape["vocab"]
    # one layer of the real widths (vectors and matrix shapes), small vocabulary: every name of layer 0
    one = random_state_dict(
        "5.2",
        n_layer=1,
        n_embd=C,
        head_size=HEAD_SIZE,
        vocab_size=8,
        n_ffn=F,
        seed=0,
        dtype="bf16",
        tiled=True,
    )
    rng = np.random.default_rng(1)
    pool_f = (rng.standard_normal(7 * max(V, F) + 8 * max(C, F) + 4096) / np.sqrt(C)).astype(
        np.float32
    )
    from rwkv5._checkpoint import float32_to_bf16_bits

    pool = float32_to_bf16_bits(pool_f)

    def window(rows, cols, seed):
        start = (seed * 7919) % 4096
        return np.lib.stride_tricks.as_strided(
            pool[start:], shape=(rows, cols), strides=(7 * 2, 2), writeable=False
        )

    tensors = {}
    for k, v in one.items():
        if k.startswith("blocks.0."):
            for i in range(L):
                name = f"blocks.{i}." + k[len("blocks.0.") :]
                tensors[name] = window(*v.shape, zlib.crc32(name.encode())) if v.ndim == 2 else v
        elif k in ("emb.weight", "head.weight"):
            tensors[k] = window(V, C, 1 if k == "emb.weight" else 2)
        else:
            tensors[k] = v
    write_safetensors(
        path,
        tensors,
        dtypes={k: "BF16" for k, v in tensors.items() if v.dtype == np.uint16},
        metadata={"note": "random weights for rwkv5 benchmarks"},
    )
    return path


def int8_file(bf16_path: str, shape: dict) -> str:
    """The int8 saved form of the cached bf16 file (`rwkv5 convert --dtype int8`, made once)."""
    from rwkv5.__main__ import convert

    path = bf16_path.replace("-bf16.safetensors", "-int8.safetensors")
    if not _matches(path, shape) or os.path.getmtime(path) < os.path.getmtime(bf16_path):
        with open(os.devnull, "w") as null:
            convert(bf16_path, path, "int8", out=null)
    return path


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def worker(path: str, dtype: str | None, threads: int, steps: int = 8, warm: int = 2) -> dict:
    """One row, in a fresh process: load, touch every weight, probe bandwidth, decode."""
    import rwkv5

    from .bench_model import local_limits

    rwkv5.set_num_threads(threads)
    before = _status("VmRSS")
    t0 = time.perf_counter()
    model = rwkv5.load(path, dtype=dtype)
    load_s = time.perf_counter() - t0
    held, per_token = 0, 0
    for name, w in model._weights.items():
        arrays = w if isinstance(w, tuple) else (w,)
        for a in arrays:
            if isinstance(a, np.ndarray):
                held += a.nbytes
                a.view(np.uint8)[..., ::4096].sum()  # touch every page
        if name == "emb.weight":
            per_token += w.nbytes // w.shape[0]  # one row is gathered per token
        elif isinstance(w, tuple) or (isinstance(w, np.ndarray) and w.ndim >= 2):
            per_token += sum(a.nbytes for a in arrays)
    grow = _status("VmHWM") - before
    limits = local_limits(threads, quick=True)
    state = model.new_state()
    times = []
    for i in range(steps + warm):
        t0 = time.perf_counter()
        _, state = model.forward([i % 1000], state, mode="recurrent")
        if i >= warm:
            times.append(time.perf_counter() - t0)
    tok_s = 1.0 / float(np.median(times))
    return {
        "dtype": model.config.dtype,
        "load_s": load_s,
        "held": held,
        "peak_growth": grow,
        "bytes_per_token": per_token,
        "tok_s": tok_s,
        "read_bw_gbs": limits["local_read_bw_gbs"],
        "bw_eff": tok_s * per_token / (limits["local_read_bw_gbs"] * 1e9),
        "loadavg": os.getloadavg()[0],
    }


def run(
    quick: bool = False, shape: dict = EAGLE_7B, folder: str | None = None, threads=THREADS
) -> list:
    from .common import run_in_subprocess

    t0 = time.perf_counter()
    bf16 = random_bf16_file(shape, folder)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    int8 = int8_file(bf16, shape)
    t_conv = time.perf_counter() - t0
    rows = []
    steps = 4 if quick else 8
    for label, path, dtype in (
        ("bf16", bf16, None),
        ("int8 (quantised at load)", bf16, "int8"),
        ("int8 (saved form)", int8, None),
    ):
        for nt in threads:
            r = run_in_subprocess(
                "benchmarks.big:worker",
                {"path": path, "dtype": dtype, "threads": nt, "steps": steps},
                timeout=3600,
            )
            rows.append(
                [
                    label,
                    nt,
                    round(r["load_s"], 2),
                    round(r["held"] / 1e9, 3),
                    round(r["peak_growth"] / r["held"], 3),
                    round(r["tok_s"], 3),
                    round(r["bytes_per_token"] / 1e9, 3),
                    round(r["read_bw_gbs"], 1),
                    round(r["bw_eff"], 3),
                    round(r["loadavg"], 1),
                ]
            )
    L, C, F, V = shape["n_layer"], shape["n_embd"], shape["n_ffn"], shape["vocab"]
    notes = [
        f"random RWKV-5.2 L{L} C{C} F{F} V{V} head size {HEAD_SIZE}: {bf16}",
        f"file made or found in {t_gen:.1f} s; its int8 form (rwkv5 convert --dtype int8) in {t_conv:.1f} s",
        "peak RSS / weights: VmHWM growth over load + decode with every weight touched, over the bytes held",
        "bw_eff: tok/s x GB/token / the C read probe's GB/s in the same process just before",
    ]
    title = f"Big model: L{L} C{C}{' (Eagle 7B shape)' if shape == EAGLE_7B else ''}, decode"
    return [
        section(
            title,
            [
                "weights",
                "threads",
                "load s",
                "weights GB",
                "peak RSS / weights",
                "decode tok/s",
                "GB/token",
                "read GB/s",
                "bw_eff",
                "loadavg",
            ],
            rows,
            notes,
        )
    ]
