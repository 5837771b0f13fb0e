"""rwkv5.load / read_checkpoint: format sniffing, HF names, time_state, dtype conversion, the
convert CLI, no torch import, and end-to-end logits across formats and against pip `rwkv`."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rwkv5
from rwkv5.__main__ import main as cli_main
from rwkv5.formats.hf import hf_name_to_rwkvlm
from rwkv5.formats.quantized import dequantize_int4
from rwkv5.formats.safetensors import read_safetensors, write_safetensors
from rwkv5.loading import (
    bf16_bits_to_f32,
    convert_array,
    f32_to_bf16_bits,
    read_checkpoint,
    sniff_format,
)

from _loaders_util import mmap_backed, random_rwkv5_torch_sd, torch_load_np, torch_to_np
from conftest import plain_rss

torch = pytest.importorskip("torch", reason="torch (test extra) writes the reference checkpoints")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- format detection and names ----------------------------------------------------------------


def test_format_from_content_not_extension(tmp_path, tiny_files):
    pth = tmp_path / "model.safetensors"  # a .pth with the wrong extension
    pth.write_bytes(tiny_files["bf16.pth"].read_bytes())
    st = tmp_path / "model.pth"  # a safetensors with the wrong extension
    write_safetensors(st, {"emb.weight": np.ones((4, 4), np.float32)})
    cpp = tmp_path / "model.json"
    cpp.write_bytes(tiny_files["FP32.bin"].read_bytes()[:64])
    assert sniff_format(pth) == "pth"
    assert sniff_format(st) == "safetensors"
    assert sniff_format(cpp) == "rwkvcpp"
    assert sniff_format(tmp_path) == "dir"
    sd, info = read_checkpoint(pth)
    assert (
        info["format"] == "pth"
        and info["gn_eps"] == 64e-5
        and len(sd) == len(tiny_files.state_dict()) == 72
    )
    assert set(info["kinds"].values()) == {"bf16"}


def test_hf_names_map_to_rwkvlm(tmp_path, tiny_files):
    sd = torch_load_np(tiny_files["fp32.pth"])

    # Rename exactly as the HF conversion script does (docs/model.md §7.2), written independently here.
    def to_hf(n):
        n = n.replace("emb.", "embeddings.", 1) if n.startswith("emb.") else n
        n = n.replace("blocks.0.ln0", "blocks.0.pre_ln")
        n = n.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
        for short, long in (("k", "key"), ("v", "value"), ("r", "receptance"), ("g", "gate")):
            if n.endswith(f".time_mix_{short}"):
                n = n[: -len(short)] + long
        return n if n == "head.weight" else "rwkv." + n

    hf = {to_hf(k): v for k, v in sd.items()}
    assert "rwkv.blocks.2.attention.time_mix_gate" in hf and "rwkv.blocks.0.pre_ln.weight" in hf
    assert "rwkv.blocks.1.feed_forward.time_mix_receptance" in hf
    p = tmp_path / "hf.safetensors"
    write_safetensors(p, hf)
    got, info = read_checkpoint(p)
    assert info["hf_names"]
    assert sorted(got) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k])
    assert (
        hf_name_to_rwkvlm("rwkv.blocks.12.attention.time_mix_value") == "blocks.12.att.time_mix_v"
    )


def test_sharded_folder(tmp_path, tiny_files):
    sd = torch_load_np(tiny_files["fp32.pth"])
    keys = list(sd)
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {k: sd[k] for k in keys[:40]})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {k: sd[k] for k in keys[40:]})
    (tmp_path / "config.json").write_text("{}")
    got, info = read_checkpoint(tmp_path)
    assert info["format"] == "safetensors" and len(info["files"]) == 2
    assert sorted(got) == sorted(sd)
    write_safetensors(tmp_path / "model-dup.safetensors", {keys[0]: sd[keys[0]]})
    with pytest.raises(ValueError, match="also appears in another shard"):
        read_checkpoint(tmp_path)


def test_time_state_kept_aside_and_transposed(tmp_path):
    tsd = random_rwkv5_torch_sd(n_layer=3, n_embd=128, head_size=32, time_state=True, seed=5)
    p = tmp_path / "state-tuned.pth"
    torch.save(tsd, p)
    sd, info = read_checkpoint(p)
    assert not any("time_state" in k for k in sd) and not any(
        "time_state" in k for k in info["kinds"]
    )
    kv = info["time_state"]
    assert kv.shape == (3, 4, 32, 32) and kv.dtype == np.float32
    for i in range(3):
        # pip rwkv: state[3i+1] = time_state.transpose(1, 2)
        np.testing.assert_array_equal(
            kv[i], tsd[f"blocks.{i}.att.time_state"].transpose(1, 2).numpy()
        )


# -- dtype conversion ------------------------------------------------------------------------------


def test_bf16_rounding_matches_torch():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(100_000).astype(np.float32)
            * 10.0 ** rng.integers(-40, 38, 100_000),
            # exact ties (low half 0x8000) with even and odd kept bits, and neighbours
            (np.arange(0, 4000, dtype=np.uint32) << 16 | np.uint32(0x8000)).view(np.float32),
            (np.arange(0, 4000, dtype=np.uint32) << 16 | np.uint32(0x7FFF)).view(np.float32),
            (np.arange(0, 4000, dtype=np.uint32) << 16 | np.uint32(0x8001)).view(np.float32),
            np.array(
                [0.0, -0.0, np.inf, -np.inf, 3.3895314e38, -3.4028235e38, 1e-45, -1e-45], np.float32
            ),
        ]
    ).astype(np.float32)
    x = x[np.isfinite(x) | np.isinf(x)]
    ours = f32_to_bf16_bits(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, ref)
    nan = f32_to_bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(bf16_bits_to_f32(nan)).all()
    np.testing.assert_array_equal(
        bf16_bits_to_f32(ours), torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    )


def test_convert_array_paths():
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    assert convert_array(x, "fp32", None) is x and convert_array(x, "fp32", "fp32") is x
    np.testing.assert_array_equal(convert_array(x, "fp32", "fp16"), x.astype(np.float16))
    b = convert_array(x, "fp32", "bf16")
    np.testing.assert_array_equal(convert_array(b, "bf16", "fp32"), bf16_bits_to_f32(b))
    np.testing.assert_array_equal(
        convert_array(x.astype(np.float16), "fp16", "fp32"), x.astype(np.float16).astype(np.float32)
    )
    with pytest.raises(ValueError, match="overflows float16"):
        convert_array(np.array([1e6], np.float32), "fp32", "fp16")
    with pytest.raises(ValueError, match="dtype must be"):
        convert_array(x, "fp32", "int8")


# -- convert CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_convert_cli(tmp_path, tiny_files, capsys, dtype):
    src = tiny_files["fp32.pth"]
    out = tmp_path / f"m-{dtype}.safetensors"
    assert cli_main(["convert", str(src), str(out), "--dtype", dtype]) == 0
    printed = capsys.readouterr().out
    assert "72 tensors" in printed and str(out) in printed
    t, dts, meta = read_safetensors(out)
    assert (
        meta["source_format"] == "pth" and float(meta["gn_eps"]) == 64e-5 and meta["dtype"] == dtype
    )
    ref = torch_load_np(src)
    want = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}[dtype]
    tref = torch.load(src, weights_only=True)
    for k, v in ref.items():
        if v.ndim >= 2 and ".time_" not in k:
            assert dts[k] == want, k
            tt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
            np.testing.assert_array_equal(t[k], torch_to_np(tref[k].to(tt)))
        else:
            assert dts[k] == "F32", k
            np.testing.assert_array_equal(t[k], v)


@pytest.mark.parametrize("src_name", ["bf16.pth", "FP32.bin"])
@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_convert_cli_saves_the_quantised_form(tmp_path, tiny_files, capsys, src_name, dtype):
    src = tiny_files[src_name]  # the shipped trained model as a BlinkDL .pth / rwkv.cpp .bin
    out = tmp_path / f"m-{dtype}.safetensors"
    assert cli_main(["convert", str(src), str(out), "--dtype", dtype]) == 0
    printed = capsys.readouterr().out
    n_layer = rwkv5.load(src).config.n_layer
    # 8 matrices per layer (att receptance/key/value/gate/output, ffn key/value/receptance) + head
    assert f"quantised {8 * n_layer + 1} matrices to {dtype}" in printed and str(out) in printed
    t, dts, meta = read_safetensors(out)
    last = f"blocks.{n_layer - 1}.ffn.key.weight"
    if dtype == "int8":
        assert dts[last] == "I8" and dts[last + ".scale"] == "F32"
    else:  # the blocks, row-major, scales inside
        C, F = t["emb.weight"].shape[1], t[last].shape[0]
        assert dts[last] == "U8" and t[last].shape == (F, -(-C // 64) * 36)
        assert last + ".scale" not in t
    assert meta["dtype"] == dtype and meta["source_format"] == (
        "pth" if src.suffix == ".pth" else "rwkvcpp"
    )
    want = rwkv5.load(src, dtype=dtype)
    got = rwkv5.load(out)
    assert got.config == want.config  # gn_eps of the source (1e-5 for rwkv.cpp) included
    for mode in ("recurrent", "parallel"):
        np.testing.assert_array_equal(
            got.forward(TOKENS, mode=mode)[0], want.forward(TOKENS, mode=mode)[0]
        )
    # loaded zero copy: the quantised matrices are views of the file's mapping, not new arrays
    from rwkv5.model import _mmap_base

    q = got._weights[last][0]
    assert _mmap_base(q) is not None
    np.testing.assert_array_equal(q.reshape(-1), want._weights[last][0].reshape(-1))
    # converting the quantised form again keeps it as it is (no second rounding)
    again = tmp_path / "again.safetensors"
    assert cli_main(["convert", str(out), str(again), "--dtype", dtype]) == 0
    np.testing.assert_array_equal(rwkv5.load(again).forward(TOKENS)[0], want.forward(TOKENS)[0])
    # and back to a float checkpoint: the dequantized values
    back = tmp_path / "fp32.safetensors"
    assert cli_main(["convert", str(out), str(back), "--dtype", "fp32"]) == 0
    C = want.config.n_embd
    held = want._weights["blocks.0.att.value.weight"]
    if dtype == "int8":
        q, scale = held
        rows = q.transpose(0, 2, 1, 3).reshape(-1, q.shape[1] * 64)[:C, :C]  # blocked layout undone
        values = rows.astype(np.float32) * scale[:, None]
    else:
        values = dequantize_int4(held[0], C)
    np.testing.assert_array_equal(read_safetensors(back)[0]["blocks.0.att.value.weight"], values)


def test_convert_cli_errors(tmp_path, capsys):
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint at all")
    out = tmp_path / "o.safetensors"
    assert cli_main(["convert", str(bad), str(out), "--dtype", "bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rwkv5 convert: error:") and "unrecognised checkpoint format" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()
    assert cli_main(["convert", str(tmp_path / "missing.pth"), str(out), "--dtype", "bf16"]) == 2
    assert "No such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["convert", str(bad), str(out), "--dtype", "int3"])
    assert e.value.code == 2
    r = subprocess.run(
        [sys.executable, "-m", "rwkv5", "convert", str(bad), str(out), "--dtype", "fp16"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "error" in r.stderr


# -- loading never imports torch ----------------------------------------------------------------------


def test_loading_does_not_import_torch(tmp_path, tiny_files):
    script = textwrap.dedent(f"""
        import sys
        from rwkv5.loading import read_checkpoint
        sd, info = read_checkpoint({str(tiny_files["bf16.pth"])!r})
        assert len(sd) == 72
        from rwkv5.__main__ import main
        assert main(["convert", {str(tiny_files["bf16.pth"])!r},
                     {str(tmp_path / "o.safetensors")!r}, "--dtype", "fp32"]) == 0
        read_checkpoint({str(tmp_path / "o.safetensors")!r})
        print("torch" in sys.modules, "safetensors" in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2:] == ["False", "False"]


# -- end to end: logits -----------------------------------------------------------------------------

TOKENS = [34, 105, 110]  # '"', 'i', 'n' — the fixture's expected-logit prompt


def _logits(model, mode):
    if mode == "recurrent-serial":  # one token per call, carrying the state
        state = model.new_state()
        for t in TOKENS:
            out, state = model.forward([t], state, mode="recurrent")
        return out
    out, _ = model.forward(TOKENS, model.new_state(), mode=mode)
    return out


MODES = ["parallel", "recurrent", "recurrent-serial"]


@pytest.mark.parametrize("mode", MODES)
def test_fixture_formats_give_the_same_logits(tmp_path, fixtures_dir, mode):
    expected = np.fromfile(fixtures_dir / "expected-logits-5v2-730K.bin", dtype="<f4")
    bin_path = fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin"
    pth_path = fixtures_dir / "tiny-rwkv-5v2-730K-fp32.pth"
    st_from_pth = tmp_path / "from-pth.safetensors"
    st_from_bin = tmp_path / "from-bin.safetensors"
    assert cli_main(["convert", str(pth_path), str(st_from_pth), "--dtype", "fp32"]) == 0
    assert cli_main(["convert", str(bin_path), str(st_from_bin), "--dtype", "fp32"]) == 0
    m_bin = rwkv5.load(bin_path)  # rwkv.cpp default eps 1e-5
    assert m_bin.config.gn_eps == 1e-5
    m_st_bin = rwkv5.load(st_from_bin)  # eps recorded by convert
    assert m_st_bin.config.gn_eps == 1e-5
    m_pth = rwkv5.load(pth_path, gn_eps=1e-5)  # the fixture was made with rwkv.cpp's eps
    assert rwkv5.load(pth_path).config.gn_eps == 64e-5
    m_st_pth = rwkv5.load(st_from_pth, gn_eps=1e-5)
    lb, lsb, lp, lsp = (_logits(m, mode) for m in (m_bin, m_st_bin, m_pth, m_st_pth))
    np.testing.assert_array_equal(lb, lsb)  # same values, same eps -> identical
    np.testing.assert_array_equal(lp, lsp)
    np.testing.assert_allclose(lb, expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(lp, expected, atol=2e-5, rtol=0)
    # .bin and .pth differ only by the rounding of time_decay stored as d vs w
    np.testing.assert_allclose(lb, lp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_tiny_formats_give_the_same_logits(tmp_path, tiny_files, mode):
    """The checks of test_fixture_formats_give_the_same_logits on the shipped model, written at test
    time as rwkv.cpp .bin and RWKV-LM .pth, against logits of rwkv5/reference.py (float64)."""
    expected = tiny_files.expected_logits(gn_eps=1e-5)
    bin_path = tiny_files["FP32.bin"]
    pth_path = tiny_files["fp32.pth"]
    st_from_pth = tmp_path / "from-pth.safetensors"
    st_from_bin = tmp_path / "from-bin.safetensors"
    assert cli_main(["convert", str(pth_path), str(st_from_pth), "--dtype", "fp32"]) == 0
    assert cli_main(["convert", str(bin_path), str(st_from_bin), "--dtype", "fp32"]) == 0
    m_bin = rwkv5.load(bin_path)  # rwkv.cpp default eps 1e-5
    assert m_bin.config.gn_eps == 1e-5
    m_st_bin = rwkv5.load(st_from_bin)  # eps recorded by convert
    assert m_st_bin.config.gn_eps == 1e-5
    m_pth = rwkv5.load(pth_path, gn_eps=1e-5)  # the eps of the .bin, to compare the two
    assert rwkv5.load(pth_path).config.gn_eps == 64e-5
    m_st_pth = rwkv5.load(st_from_pth, gn_eps=1e-5)
    lb, lsb, lp, lsp = (_logits(m, mode) for m in (m_bin, m_st_bin, m_pth, m_st_pth))
    np.testing.assert_array_equal(lb, lsb)  # same values, same eps -> identical
    np.testing.assert_array_equal(lp, lsp)
    np.testing.assert_allclose(lb, expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(lp, expected, atol=2e-5, rtol=0)
    # .bin and .pth differ only by the rounding of time_decay stored as d vs w
    np.testing.assert_allclose(lb, lp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_bf16_pth_in_bf16_and_fp32(tiny_files, mode):
    p = tiny_files["bf16.pth"]
    expected = tiny_files.expected_logits(gn_eps=1e-5)
    m16 = rwkv5.load(p, dtype="bf16", gn_eps=1e-5)
    m32 = rwkv5.load(p, dtype="fp32", gn_eps=1e-5)
    assert m16.config.dtype == "bf16" and m32.config.dtype == "fp32"
    a, b = _logits(m16, mode), _logits(m32, mode)
    # bf16 -> fp32 widening is exact, so both compute the same network; only summation order may differ
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert np.abs(a - expected).max() < 0.1  # README: ~5e-2 from bf16 rounding of the weights
    # dtype=None keeps the file's bf16
    assert rwkv5.load(p).config.dtype == "bf16"


def test_model_weights_are_file_views(tmp_path, tiny_files):
    """dtype equal to the stored type (or None) and layout="rows": the model's matrices are the
    file's mmap pages. When the matrices are copied (blocked by layout="auto", or converted), the
    embedding is copied too: no stray view keeps the file mapped."""
    p = tiny_files["bf16.pth"]
    st = tmp_path / "bf16.safetensors"
    assert cli_main(["convert", str(p), str(st), "--dtype", "bf16"]) == 0
    for path in (p, st):
        for dtype in (None, "bf16"):
            w = rwkv5.load(path, dtype=dtype, layout="rows")._weights
            assert w["emb.weight"].dtype == np.uint16 and mmap_backed(w["emb.weight"]), (
                path,
                dtype,
            )
            assert mmap_backed(w["head.weight"]) and mmap_backed(w["blocks.0.att.key.weight"]), (
                path,
                dtype,
            )
            emb = rwkv5.load(path, dtype=dtype)._weights[
                "emb.weight"
            ]  # layout="auto": blocked copies
            assert emb.dtype == np.uint16 and not mmap_backed(emb), (path, dtype)
        emb32 = rwkv5.load(path, dtype="fp32")._weights["emb.weight"]
        assert emb32.dtype == np.float32 and not mmap_backed(emb32)


def test_convert_rwkvcpp_fp16(tmp_path, tiny_files):
    src = tiny_files["FP16.bin"]
    out = tmp_path / "cpp16.safetensors"
    assert cli_main(["convert", str(src), str(out), "--dtype", "fp16"]) == 0
    a, b = rwkv5.load(src), rwkv5.load(out)
    assert b.config.gn_eps == a.config.gn_eps == 1e-5
    np.testing.assert_array_equal(a.forward(TOKENS)[0], b.forward(TOKENS)[0])


def test_load_argument_errors(tiny_model_path, tmp_path):
    p = tiny_model_path  # the shipped model: this test needs only *a* checkpoint
    with pytest.raises(ValueError, match="dtype must be"):
        rwkv5.load(p, dtype="int3")
    with pytest.raises(ValueError, match="gn_eps must be"):
        rwkv5.load(p, gn_eps=-1.0)
    with pytest.raises(OSError):
        rwkv5.load(tmp_path / "does-not-exist.pth")


# -- peers: the rwkv package on the same random checkpoints ---------------------------------------------

_PIP_SCRIPT = """
import os, sys
os.environ["RWKV_JIT_ON"] = "1"
os.environ["RWKV_CUDA_ON"] = "0"
import numpy as np, torch
torch.set_num_threads(1)
from rwkv.model import RWKV
m = RWKV(sys.argv[1], strategy="cpu fp32")
toks = [int(t) for t in sys.argv[3].split(",")]
a, st = m.forward(toks[:7], None)
b, _ = m.forward(toks[7:], st)
np.save(sys.argv[2], np.stack([a.float().numpy(), b.float().numpy()]))
"""


@pytest.mark.peers
@pytest.mark.parametrize(
    "version, kw",
    [
        ("5.0", {"time_first": True}),
        ("5.0", {}),
        ("5.1", {}),
        ("5.2", {}),
        ("5.2", {"time_state": True}),
        ("5.2", {"n_layer": 4, "n_embd": 256}),
    ],
)
def test_logits_match_pip_rwkv(tmp_path, version, kw):
    pytest.importorskip("rwkv.model", reason="the rwkv package (peers extra)")
    args = dict(version=version, n_layer=2, n_embd=128, head_size=64, vocab=300, seed=7)
    args.update(kw)
    sd = random_rwkv5_torch_sd(**args)
    p = tmp_path / "rand.pth"
    torch.save(sd, p)
    toks = [int(t) for t in np.random.default_rng(1).integers(0, 300, 12)]
    out = tmp_path / "pip.npy"
    r = subprocess.run(
        [sys.executable, "-c", _PIP_SCRIPT, str(p), str(out), ",".join(map(str, toks))],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    ref = np.load(out)
    model = rwkv5.load(p)
    assert model.config.version == version and model.config.gn_eps == 64e-5
    for mode in ("parallel", "recurrent"):
        a, st = model.forward(toks[:7], model.new_state(), mode=mode)
        b, _ = model.forward(toks[7:], st, mode=mode)
        np.testing.assert_allclose(a, ref[0], atol=1e-4, rtol=0, err_msg=mode)
        np.testing.assert_allclose(b, ref[1], atol=1e-4, rtol=0, err_msg=mode)


# -- zero copy: memory use of a ~200 MB bf16 checkpoint ------------------------------------------------

_RSS_SCRIPT = """
import json, sys, time
def status():
    d = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            d[k] = int(v.split()[0]) * 1024
    return d
import numpy as np, rwkv5
rwkv5.load(sys.argv[3])            # warm imports and the C extension on a tiny file first
before = status()
t0 = time.perf_counter()
model = rwkv5.load(sys.argv[1], dtype=sys.argv[2], layout=sys.argv[4])
t_load = time.perf_counter() - t0
t0 = time.perf_counter()
logits, _ = model.forward([1], model.new_state(), mode="recurrent")
t_fwd = time.perf_counter() - t0
# A token reads one row of the embedding; read every weight the model holds so that all of the
# file's pages are resident: RSS then shows what the weights really cost.
def touch(x):
    if isinstance(x, np.ndarray):
        return int(x.view(np.uint8).sum(dtype=np.uint64)) if x.size else 0
    if isinstance(x, (tuple, list)):
        return sum(touch(y) for y in x)
    return 0
touch(list(model._weights.values()))
after = status()
print(json.dumps({"before": before, "after": after, "load_s": t_load, "first_token_s": t_fwd,
                  "finite": bool(np.isfinite(logits).all())}))
"""


@pytest.mark.slow
def test_zero_copy_rss(tmp_path, tiny_files, record_property):
    # emb + head of 65536 x 768 in bf16 = 201 MB, plus 2 small layers
    sd = random_rwkv5_torch_sd(
        version="5.2", n_layer=2, n_embd=768, head_size=64, vocab=65536, seed=3
    )
    p = tmp_path / "big-bf16.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, p)
    del sd
    size = p.stat().st_size
    results = {}
    for dtype, layout in (("bf16", "rows"), ("bf16", "auto"), ("fp32", "auto")):
        r = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(p), dtype, str(tiny_files["bf16.pth"]), layout],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        import json

        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["finite"]
        grow = res["after"]["VmHWM"] - res["before"]["VmRSS"]
        results[dtype, layout] = (grow, res["load_s"], res["first_token_s"])
        record_property(f"rss_growth_{dtype}_{layout}_MB", round(grow / 1e6, 1))
        record_property(f"load_s_{dtype}_{layout}", round(res["load_s"], 3))
        print(
            f"[rss] file {size / 1e6:.1f} MB dtype={dtype} layout={layout}: peak RSS growth {grow / 1e6:.1f} MB, "
            f"load {res['load_s']:.3f} s, first token {res['first_token_s']:.3f} s"
        )
    # bf16 from a bf16 file, layout "rows": the weights are the file's pages, so RSS grows by about
    # the file size (a copy would add the file size again)
    assert 0.8 * size < results["bf16", "rows"][0] < 1.3 * size + 50e6
    # layout "auto" copies every matrix but the embedding into the blocked layout, and releases the file's
    # pages of each matrix once copied: the peak stays about the file size, not twice it
    assert 0.8 * size < results["bf16", "auto"][0] < 1.3 * size + 50e6
    # fp32 must convert: at least the doubled matrices are new memory (a sanity check that the
    # measurement sees allocations at all)
    assert results["fp32", "auto"][0] > 1.5 * size


_PEAK_SCRIPT = """
import json, sys
import numpy as np, rwkv5
def status(key):         # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
    return [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":")][0]
rwkv5.load(sys.argv[3])            # warm imports and the C extension on a tiny file first
before = status("VmRSS")
model = rwkv5.load(sys.argv[1], dtype=None if sys.argv[2] == "None" else sys.argv[2], layout=sys.argv[4])
held = 0
for w in model._weights.values():          # read every byte the model holds: all of it resident
    for a in (w if isinstance(w, tuple) else (w,)):
        held += a.nbytes
        a.view(np.uint8).sum(dtype=np.uint64)
print(json.dumps({"held": held, "grow": status("VmHWM") - before, "dtype": model.config.dtype}))
"""


@pytest.mark.slow
@plain_rss
def test_peak_rss_of_a_load_is_the_weights(tmp_path, tiny_model_path):
    """Loading stays within 1.1x the bytes the model holds (+ 32 MB of interpreter and scratch) for
    every dtype, whether the matrices are used in place, blocked, converted or quantised: a copy
    releases the file's pages chunk by chunk (rwkv5.model._chunks), so the source of a copy is never
    resident beside the whole copy. Peak = VmHWM of a fresh process after touching every weight."""
    from rwkv5.testing import random_state_dict

    files = {}
    for kind, dt in (("bf16", "bf16"), ("fp32", np.float32)):
        sd = random_state_dict(
            "5.2", n_layer=4, n_embd=512, head_size=64, vocab_size=65536, dtype=dt, tiled=True
        )
        files[kind] = tmp_path / f"m-{kind}.safetensors"  # 162 MB bf16, 323 MB fp32
        write_safetensors(
            files[kind], sd, dtypes={k: "BF16" for k, v in sd.items() if v.dtype == np.uint16}
        )
        del sd
    for q in ("int8", "int4"):
        files[q] = tmp_path / f"m-{q}.safetensors"
        assert cli_main(["convert", str(files["bf16"]), str(files[q]), "--dtype", q]) == 0
    import json

    for src, dtype, layout, want in [
        ("bf16", "None", "auto", "bf16"),
        ("bf16", "int8", "auto", "int8"),
        ("bf16", "fp32", "auto", "fp32"),
        ("bf16", "None", "rows", "bf16"),
        ("fp32", "None", "auto", "fp32"),
        ("fp32", "int8", "auto", "int8"),
        ("int8", "None", "auto", "int8"),
        ("bf16", "int4", "auto", "int4"),
        ("fp32", "int4", "auto", "int4"),
        ("int4", "None", "auto", "int4"),
    ]:
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                _PEAK_SCRIPT,
                str(files[src]),
                dtype,
                str(tiny_model_path),
                layout,
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["dtype"] == want
        assert res["grow"] <= 1.1 * res["held"] + (32 << 20), (src, dtype, layout, res)
        assert res["grow"] >= 0.8 * res["held"], (
            src,
            dtype,
            layout,
            res,
        )  # the measurement sees the weights


_CONVERT_PEAK_SCRIPT = """
import json, sys
import rwkv5
from rwkv5.__main__ import main
def status(key):
    return [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":")][0]
rwkv5.load(sys.argv[3])            # warm imports and the C extension on a tiny file first
before = status("VmRSS")
assert main(["convert", sys.argv[1], sys.argv[2], "--dtype", sys.argv[4]]) == 0
print(json.dumps({"grow": status("VmHWM") - before}))
"""


@pytest.mark.slow
@plain_rss
@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_peak_rss_of_a_quantising_convert_is_the_weights(tmp_path, tiny_model_path, dtype):
    """rwkv5 convert --dtype int8|int4 of a bf16 file: peak RSS within 1.1x the weights it writes
    (+ 32 MB): the source is quantised a chunk at a time with its pages released, and the writer
    streams each tensor to the file."""
    from rwkv5.testing import random_state_dict
    import json

    sd = random_state_dict(
        "5.2", n_layer=4, n_embd=512, head_size=64, vocab_size=65536, dtype="bf16", tiled=True
    )
    src, dst = tmp_path / "m-bf16.safetensors", tmp_path / f"m-{dtype}.safetensors"
    write_safetensors(src, sd, dtypes={k: "BF16" for k, v in sd.items() if v.dtype == np.uint16})
    del sd
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            _CONVERT_PEAK_SCRIPT,
            str(src),
            str(dst),
            str(tiny_model_path),
            dtype,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    grow, size = json.loads(r.stdout.strip().splitlines()[-1])["grow"], dst.stat().st_size
    print(
        f"[rss] convert --dtype {dtype}: peak RSS growth {grow / 1e6:.1f} MB, file {size / 1e6:.1f} MB"
    )
    assert grow <= 1.1 * size + (32 << 20), (dtype, grow, size)
    assert grow >= 0.5 * size, (dtype, grow, size)  # the measurement sees the weights


def test_sniff_safetensors_whose_header_length_starts_with_0x80(tmp_path):
    p = tmp_path / "x"
    hb = b'{"__metadata__":{"pad":"' + b"x" * (0x80 - 27) + b'"}}'
    assert len(hb) % 256 == 0x80
    p.write_bytes(len(hb).to_bytes(8, "little") + hb)
    assert sniff_format(p) == "safetensors"


def test_load_int8_quantises_the_matrices(tiny_model_path):
    """dtype="int8": matrices quantised per output row at load; logits stay close to fp32.
    (The shipped trained model, an fp32 safetensors file: the test needs only *a* trained model.)"""
    from rwkv5.model import quantize_int8

    src = tiny_model_path
    m32, m8 = rwkv5.load(src), rwkv5.load(src, dtype="int8")
    assert m8.config.dtype == "int8"
    # the int8 model computes exactly what the fp32 model computes on the dequantised weights
    sd, info = read_checkpoint(src)
    deq = dict(sd)
    for name, a in sd.items():
        if a.ndim == 2 and not name.startswith("emb.") and ".time_" not in name:
            q, scale = quantize_int8(a)
            deq[name] = (q.astype(np.float32) * scale[:, None]).astype(np.float32)
    m_deq = rwkv5.Model.from_state_dict(deq, gn_eps=info["gn_eps"])
    np.testing.assert_allclose(m8.forward(TOKENS)[0], m_deq.forward(TOKENS)[0], atol=1e-4)
    assert np.abs(m8.forward(TOKENS)[0] - m32.forward(TOKENS)[0]).max() < 0.5
