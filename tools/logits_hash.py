"""Bit-identity hashes of the C forward pass: sha256 of the logits and final-state bytes of fixed
small models, for every weight dtype x layout x mode x thread count, under the active ISA level.

tests/test_logits_hash.py compares these against tests/data/logits_hashes.json (one entry per ISA
level). A change to the C model code that is meant to keep results to the bit must leave them
unchanged; a change that is meant to alter results re-records them, for every ISA level:

    python tools/logits_hash.py --record                      # the CPU's best ISA level
    RWKV5_ISA=scalar python tools/logits_hash.py --record     # the portable kernels

Without --record it prints the hashes of the active level and whether they match the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys

import numpy as np

from rwkv5 import _model

ROOT = pathlib.Path(__file__).resolve().parents[1]
HASHES = ROOT / "tests" / "data" / "logits_hashes.json"

# (name, random_state_dict kwargs): a regular shape and odd ones (n_ffn, vocab and C not multiples
# of the SIMD widths; 5.0 without gate, 5.1 with per-head decay)
RANDOM_MODELS = [
    (
        "r52-C128-N64",
        dict(version="5.2", n_layer=2, n_embd=128, head_size=64, vocab_size=256, seed=1),
    ),
    (
        "r52-C48-N16-odd",
        dict(version="5.2", n_layer=2, n_embd=48, head_size=16, vocab_size=101, n_ffn=77, seed=2),
    ),
    (
        "r50-C40-N8-odd",
        dict(version="5.0", n_layer=1, n_embd=40, head_size=8, vocab_size=67, n_ffn=99, seed=3),
    ),
    (
        "r51-C64-N32",
        dict(version="5.1", n_layer=1, n_embd=64, head_size=32, vocab_size=130, seed=4),
    ),
]
MODELS = [name for name, _ in RANDOM_MODELS] + ["tiny"]
DTYPES = tuple(name for name, _, _ in _model.DTYPES)  # every storage type of the C table
LAYOUTS = ("rows", "blocked")
MODES = ("parallel", "recurrent")
THREADS = (1, 2)
B, T = 2, 70  # B*T >= the GEMM's minimum M; T > one WKV chunk (64 positions)


def build(name, dtype, layout):
    import rwkv5

    if name == "tiny":
        import rwkv5.tiny

        return rwkv5.tiny.load(dtype=dtype, layout=layout)
    from rwkv5.testing import random_state_dict

    return rwkv5.Model.from_state_dict(
        random_state_dict(**dict(RANDOM_MODELS)[name]), dtype=dtype, layout=layout
    )


def tokens(vocab, seed):
    return np.random.default_rng(seed).integers(0, vocab, size=(B, T), dtype=np.int64)


def sha(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


def active_isa():
    from rwkv5 import _model

    return _model.get_isa()[0]


def compute(models=MODELS):
    """{key: {"logits": sha256, "state": sha256}} for the active ISA level."""
    import rwkv5

    keep = rwkv5.get_num_threads()
    out = {}
    try:
        for name in models:
            for dtype in DTYPES:
                for layout in LAYOUTS:
                    model = build(name, dtype, layout)
                    tok = tokens(model.config.vocab_size, MODELS.index(name))
                    for threads in THREADS:
                        rwkv5.set_num_threads(threads)
                        for mode in MODES:
                            logits, st = model.forward(tok, mode=mode, full_output=True)
                            out[f"{name}/{dtype}/{layout}/{mode}/t{threads}"] = {
                                "logits": sha(logits),
                                "state": sha(st.att_x, st.att_kv, st.ffn_x),
                            }
    finally:
        rwkv5.set_num_threads(keep)
    return out


def load_file():
    return json.loads(HASHES.read_text()) if HASHES.is_file() else {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--record", action="store_true", help=f"write the active ISA's hashes into {HASHES}"
    )
    args = p.parse_args(argv)
    isa = active_isa()
    got = compute()
    if args.record:
        data = load_file()
        data[isa] = got
        HASHES.parent.mkdir(parents=True, exist_ok=True)
        HASHES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(got)} hashes for ISA {isa} in {HASHES}")
        return 0
    want = load_file().get(isa)
    if want is None:
        print(f"no hashes recorded for ISA {isa}")
        return 1
    bad = [k for k in got if want.get(k) != got[k]]
    for k in bad:
        print(f"differs: {k}")
    print(f"ISA {isa}: {len(got) - len(bad)}/{len(got)} cases identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
