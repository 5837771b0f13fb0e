"""Tests of the benchmark harness (benchmarks/): the probe kernels, the size and flop counts the
ratios rest on, the table and subprocess helpers, and the harness's handling of broken modules.
No timing is asserted: only that the figures exist and the arithmetic behind them is right."""

import json
import math
import os
import pathlib
import sys
import tempfile

import numpy as np
import pytest

# benchmarks/ is a top-level folder of the checkout, not part of the installed package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import bench_model as bm
from benchmarks import common, probes
from benchmarks import __main__ as harness  # noqa: E402
from conftest import UNDER_ASAN  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _probe_library_cache_in_tmp(tmp_path_factory):
    """probes.load_library compiles probes.c into a cache under the temp folder (kept between
    `make bench` runs); the tests build it under their own tmp folder instead, not in /tmp."""
    mp = pytest.MonkeyPatch()
    d = str(tmp_path_factory.mktemp("tmp"))
    mp.setattr(tempfile, "tempdir", d)
    mp.setenv("TMPDIR", d)  # the subprocesses of run_in_subprocess too
    mp.setattr(probes, "_lib", None)
    yield
    mp.undo()


def test_format_table_aligns_numbers_and_marks_missing():
    sec = common.section(
        "T", ["name", "tok/s", "x"], [["a", 1234.5, None], ["bbbb", 0.5, 2]], ["n1"]
    )
    lines = common.format_table(sec).splitlines()
    assert lines[0] == "T" and lines[1] == "="
    header, rule, r1, r2, note = lines[2:]
    assert len(r1) == len(r2) == len(header)  # every row as wide as the header
    assert r1.split() == ["a", "1,234", "-"] and r2.split() == ["bbbb", "0.500", "2"]
    assert note == "  note: n1"


def test_section_rejects_ragged_rows():
    with pytest.raises(ValueError, match="expected 2"):
        common.section("T", ["a", "b"], [[1, 2, 3]])


@pytest.mark.parametrize("isa", [0, 1, 2])
def test_probe_read_kernels_sum_the_buffer(isa):
    if isa > probes.best_isa():
        pytest.skip(f"CPU lacks ISA level {isa}")
    rng = np.random.default_rng(1)
    for n in (0, 1, 15, 127, 128, 1000, 4099):  # tails shorter than a vector step included
        x = rng.standard_normal(n).astype(np.float32)
        want = float(np.sum(x, dtype=np.float64))
        assert math.isclose(probes.read_sum(x, isa), want, rel_tol=1e-4, abs_tol=1e-3), (isa, n)


def test_probe_read_bandwidth_and_fma_peak_give_figures():
    buf = np.ones(1 << 20, np.float32)
    for nt in (1, 2):
        bw = probes.read_bandwidth(buf, nt, passes=2)
        assert math.isfinite(bw) and bw > 0
    g = probes.fma_peak(1, passes=1, seconds=0.01)
    assert math.isfinite(g) and g > 0


def test_probe_rejects_bad_arguments():
    with pytest.raises(ValueError, match="float32"):
        probes.read_bandwidth(np.ones(1024, np.float64), 1, 1)
    with pytest.raises(OSError, match="errno"):
        probes.read_bandwidth(np.ones(1024, np.float32), 0, 1)  # 0 threads
    with pytest.raises(OSError, match="errno"):
        probes.read_bandwidth(np.ones(1024, np.float32), 1, 1, isa=7)
    with pytest.raises(ValueError, match="isa"):
        probes.read_sum(np.ones(4, np.float32), 9)


def test_bytes_per_token_counts_every_matrix_but_emb():
    L, C, V = 2, 128, 256
    sd = bm.random_state_dict(L, C, V=V, storage="fp32")
    mats = [k for k, v in sd.items() if v.ndim == 2 and "time_" not in k and k != "emb.weight"]
    assert len(mats) == L * 8 + 1  # 5 att + 3 ffn per layer, + head
    want = 4 * (sum(sd[k].size for k in mats) + C)  # + one emb row
    assert bm.bytes_per_token(L, C, "fp32", V=V) == want
    assert bm.bytes_per_token(L, C, "bf16", V=V) == want / 2
    assert bm.model_bytes(L, C, "fp32", V=V) == 4 * (
        sum(sd[k].size for k in mats) + sd["emb.weight"].size
    )


def test_parallel_flops_formula():
    L, C, V, T = 1, 64, 100, 8
    F = probes.n_ffn(C)
    layer = 6 * C * C + 2 * C * F
    wkv = 2 * C * (2 * bm.HEAD_SIZE + bm.WKV_CHUNK) * T
    assert bm.parallel_flops(L, C, T=T, V=V) == 2 * layer * T + 2 * V * C + wkv


def test_random_state_dict_storages_agree_and_decays_are_realistic():
    L, C, V = 1, 64, 128
    f32 = bm.random_state_dict(L, C, V=V, storage="fp32", seed=3)
    b16 = bm.random_state_dict(L, C, V=V, storage="bf16", seed=3)
    f16 = bm.random_state_dict(L, C, V=V, storage="fp16", seed=3)
    for k, v in f32.items():
        assert b16[k].dtype == np.uint16 and f16[k].dtype == np.float16 and v.dtype == np.float32
        back = (b16[k].astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_allclose(back, v, rtol=2**-7, atol=1e-30)  # bf16 truncation
        np.testing.assert_allclose(f16[k].astype(np.float32), v, rtol=1e-3, atol=1e-4)
    d = f32["blocks.0.att.time_decay"]
    assert d.shape == (C // 64, 64) and d.min() >= -6 and d.max() <= 2.5
    w = np.exp(-np.exp(d.astype(np.float64)))
    assert (w > np.finfo(np.float32).tiny).all()  # no subnormal decays
    assert f32["blocks.0.ffn.key.weight"].shape == (probes.n_ffn(C), C)


def test_numpy_model_gflops_weights_the_layer_mix():
    C = 64
    shapes = probes.matmul_shapes(C)
    mm = {
        "results": {
            f"{C}:{lb}:1": {"seconds": s, "gflops": 0.0}
            for (lb, *_), s in zip(shapes, (1.0, 2.0, 4.0))
        }
    }
    flops = sum(w * 2 * m * k * n for w, (_, m, k, n) in zip((6, 1, 1), shapes))
    assert probes.numpy_model_gflops(mm, C, 1) == pytest.approx(flops / (6 * 1.0 + 2.0 + 4.0) / 1e9)
    assert probes.numpy_model_gflops(mm, C, 2) is None


def test_run_in_subprocess_returns_result_with_peak_rss_and_reports_failures():
    res = common.run_in_subprocess("benchmarks.common:machine_facts", {}, timeout=120)
    assert res["logical_cpus"] >= 1 and res["peak_rss_mib"] > 0
    with pytest.raises(RuntimeError, match="expected dict"):
        common.run_in_subprocess(
            "benchmarks.bench_model:_pkg_version", {"name": "numpy"}, timeout=120
        )


def test_harness_skips_a_module_that_fails_to_import(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "discover", lambda: ["no_such_module"])
    assert harness.main(["--only", "no_such_module", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "could not import benchmarks.bench_no_such_module" in out
    data = json.loads((tmp_path / "latest.json").read_text())
    assert "no_such_module" in data["errors"] and data["machine"]["logical_cpus"] >= 1
    assert len(list(tmp_path.glob("bench-*.json"))) == 1
    capsys.readouterr()
    assert harness.main(["--render", str(tmp_path / "latest.json")]) == 0
    assert "- no_such_module: skipped: could not import" in capsys.readouterr().out
    assert harness.main(["--render", str(tmp_path / "missing.json")]) == 2


def test_format_markdown_right_aligns_numeric_columns():
    md = common.format_markdown(
        common.section("T", ["name", "GB/s"], [["a", 1.5], ["b", None]], ["n"])
    )
    assert md.splitlines() == [
        "**T**",
        "",
        "| name | GB/s |",
        "|---|---:|",
        "| a | 1.50 |",
        "| b | - |",
        "",
        "- n",
    ]


def test_harness_rejects_unknown_section(capsys):
    with pytest.raises(SystemExit):
        harness.main(["--only", "nonsense"])
    assert "unknown section" in capsys.readouterr().err


def test_fma_limit_is_threads_times_best_per_thread_figure():
    lim = {"fma_gflops": {1: 100.0, 2: 150.0}}  # a contended 2-thread probe
    assert probes.fma_limit(lim, 2) == 200.0
    assert probes.fma_limit(lim, 1, extra_per_thread=[120.0]) == 120.0


@pytest.mark.slow
def test_big_model_section_through_the_same_code_on_a_small_shape(tmp_path):
    """`--big` (benchmarks/big.py) on a small shape: the random file is made once and then reused,
    its int8 saved form loads as int8, and every row has a load time, a peak RSS ratio and a
    decode rate."""
    from benchmarks import big

    shape = {"n_layer": 2, "n_embd": 128, "n_ffn": 448, "vocab": 512}
    path = big.random_bf16_file(shape, str(tmp_path))
    stamp = os.path.getmtime(path)
    assert big.random_bf16_file(shape, str(tmp_path)) == path and os.path.getmtime(path) == stamp
    (sec,) = big.run(quick=True, shape=shape, folder=str(tmp_path), threads=(1,))
    assert os.path.getmtime(path) == stamp  # cached, not made again
    assert [r[0] for r in sec["rows"]] == ["bf16", "int8 (quantised at load)", "int8 (saved form)"]
    for row in sec["rows"]:
        load_s, ratio, tok_s = row[2], row[4], row[5]
        assert load_s > 0 and tok_s > 0 and ratio > 0.5
        assert UNDER_ASAN or ratio < 5  # (ASan's shadow memory counts)
    import rwkv5

    assert rwkv5.load(big.int8_file(path, shape)).config.dtype == "int8"


def test_batched_decode_times_each_batch_size():
    """bench_model.batched_decode steps B = 1, 4, 16 sequences from one prompt state (shared at the
    first step) and reports a positive median step time for each B."""
    import rwkv5

    model = rwkv5.Model.from_state_dict(
        bm.random_state_dict(1, 64, V=97, storage="fp32"), dtype="fp32"
    )
    _, state = model.forward([1, 2, 3], None, mode="parallel")
    got = bm.batched_decode(model, state, np.random.default_rng(0), quick=True)
    assert sorted(got, key=int) == [str(B) for B in bm.BATCHES] and all(t > 0 for t in got.values())
