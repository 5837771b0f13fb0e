"""rwkv.cpp itself, through benchmarks/rwkvcpp_peer.py, on the same files as rwkv5.

Runs only when RWKV_CPP_LIB points at a build of rwkv.cpp's librwkv.so (docs/performance.md, "rwkv.cpp
side by side"); rwkv.cpp is not a dependency and CI has no build of it.
"""

import os

import numpy as np
import pytest

import rwkv5

pytest.importorskip("benchmarks.rwkvcpp_peer")
from benchmarks import bench_rwkvcpp  # noqa: E402
from benchmarks.rwkvcpp_peer import ENV, Library, library_path  # noqa: E402

LIB = library_path()
needs_lib = pytest.mark.skipif(
    LIB is None, reason=f"{ENV} is not set (no rwkv.cpp build to compare with)"
)
TOKENS = list(range(1, 40))


@needs_lib
def test_fp32_file_same_logits_in_both(fixtures_dir):
    path = fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin"
    with Library(LIB).load(path, 1) as ctx:
        state = ctx.new_state()
        theirs = ctx.eval_sequence(TOKENS, None, state)
        theirs_next = ctx.eval(7, state, ctx.new_state())
    model = rwkv5.load(path)
    ours, st = model.forward(TOKENS)
    ours_next, _ = model.forward([7], st)
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.abs(ours_next - theirs_next).max() <= 1e-4


@needs_lib
def test_side_by_side_bench_runs_on_a_small_shape():
    secs = bench_rwkvcpp.run(quick=True, shapes=["1x64"], threads=[1])
    (sec,) = secs
    assert sec["rows"] and not [n for n in sec["notes"] if "failed" in n], sec["notes"]
    for row in sec["rows"]:
        assert all(v is not None and v > 0 for v in row[2:]), row


def test_without_the_library_the_section_says_how_to_enable_it(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    (sec,) = bench_rwkvcpp.run(quick=True)
    assert sec["rows"] == [] and ENV in sec["notes"][0]
    monkeypatch.setenv(ENV, os.path.join(os.sep, "nonexistent", "librwkv.so"))
    (sec,) = bench_rwkvcpp.run(quick=True)
    assert "no such file" in sec["notes"][0]
