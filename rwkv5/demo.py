"""`make demo`: run an RWKV-5 model in both modes and show that they agree.

Uses the tiny trained fixture (rwkv.cpp format, ../shared/fixtures relative to the project root)
when it is there, otherwise a small random model (and says so).
"""
from __future__ import annotations

import pathlib
import time

import numpy as np

PROMPT = b'"in'                     # the bytes the fixture's expected logits were made from
TEXT = b"The quick brown fox jumps over the lazy dog. " * 6


def _fixtures():
    root = pathlib.Path(__file__).resolve().parents[1]
    d = root.parent / "shared" / "fixtures"
    return d if (d / "tiny-rwkv-5v2-730K-FP32.bin").is_file() else None


def _rate(fn, n_tokens, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_tokens / best


def main():
    import rwkv5
    from rwkv5.formats.rwkvcpp import read_rwkvcpp
    from rwkv5.testing import random_state_dict

    print(f"rwkv5 {rwkv5.__version__}: {rwkv5.get_num_threads()} threads, kernels {rwkv5._model.get_isa()[0]}")
    fx = _fixtures()
    expected = None
    if fx is not None:
        path = fx / "tiny-rwkv-5v2-730K-FP32.bin"
        sd, info = read_rwkvcpp(path)
        model = rwkv5.Model.from_state_dict(sd, gn_eps=info["gn_eps"])
        expected = np.fromfile(fx / "expected-logits-5v2-730K.bin", dtype="<f4")
        print(f"model: {path.name} (trained, byte-level vocabulary, GroupNorm eps {info['gn_eps']:g} as rwkv.cpp)")
    else:
        model = rwkv5.Model.from_state_dict(random_state_dict("5.2", n_layer=4, n_embd=256, head_size=64))
        print("model: fixtures not found, using a RANDOM 5.2 model (4 layers, 256 wide) - its outputs mean nothing")
    print(f"       {model}")

    prompt = list(PROMPT)
    lr, _ = model.forward(prompt, mode="recurrent")
    lp, _ = model.forward(prompt, mode="parallel")
    print(f"prompt {PROMPT!r}: parallel vs recurrent max |dlogit| = {np.abs(lp - lr).max():.2e}")
    if expected is not None:
        print(f"  vs rwkv.cpp expected logits: recurrent {np.abs(lr - expected).max():.2e}, "
              f"parallel {np.abs(lp - expected).max():.2e} (max |d|)")

    toks = list(TEXT)
    rec = _rate(lambda: model.forward(toks, mode="recurrent"), len(toks))
    par = _rate(lambda: model.forward(toks, mode="parallel"), len(toks))
    print(f"{len(toks)} tokens: recurrent {rec:,.0f} tok/s, parallel {par:,.0f} tok/s")

    # a few greedy bytes, continuing from the prompt state
    logits, state = model.forward(list(b"The quick brown"))
    out = bytearray()
    for _ in range(24):
        t = int(np.argmax(logits))
        out.append(t)
        logits, state = model.forward([t], state)
    print(f"greedy continuation of b'The quick brown': {bytes(out)!r}")


if __name__ == "__main__":
    main()
