"""Resource behaviour of the bindings: no reference or memory growth over repeated calls, hostile
sizes refused before any allocation, and bounded peak memory on hostile files."""

import gc
import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import rwkv5
from rwkv5.dataprep import _dataprep
from rwkv5.dataprep.formats import FormatError, ZST_HEADER_SIZE, ZstShard, BinIdx
from rwkv5.formats.rwkvcpp import read_rwkvcpp
from rwkv5.formats.safetensors import read_safetensors
from rwkv5.testing import random_state_dict
from rwkv5.tokenizer import WorldTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def _rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


@pytest.fixture(scope="module")
def model():
    return rwkv5.Model.from_state_dict(
        random_state_dict(n_layer=2, n_embd=64, head_size=16, vocab_size=300, seed=4)
    )


@pytest.fixture(scope="module")
def tok():
    return WorldTokenizer()


def _no_growth(fn, inputs, warm=30, iters=300, traced_tol=64 * 1024, rss_tol_kib=8 * 1024):
    """Run fn warm+iters times: the refcounts of the inputs do not change, tracemalloc's traced
    Python memory and the process RSS (which includes C mallocs) stay within a tolerance."""
    for _ in range(warm):
        fn()
    gc.collect()
    refs = [sys.getrefcount(x) for x in inputs]
    tracemalloc.start()
    try:
        t0 = tracemalloc.get_traced_memory()[0]
        r0 = _rss_kib()
        for _ in range(iters):
            fn()
        gc.collect()
        t1 = tracemalloc.get_traced_memory()[0]
        r1 = _rss_kib()
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(x) for x in inputs] == refs, "a binding leaked a reference to its input"
    assert t1 - t0 < traced_tol, f"traced Python memory grew by {t1 - t0} bytes over {iters} calls"
    if not _UNDER_ASAN:  # ASan's quarantine keeps freed memory resident: RSS says nothing there
        assert r1 - r0 < rss_tol_kib, f"RSS grew by {r1 - r0} KiB over {iters} calls"


# -- leak loops -------------------------------------------------------------------------------


def test_model_calls_do_not_leak(model):
    toks = list(range(50))
    arr = np.arange(50, dtype=np.int64) % 300
    st = model.new_state()
    _no_growth(lambda: model.forward(toks), [toks])
    _no_growth(lambda: model.forward(arr, st), [arr, st])
    _no_growth(lambda: model.forward([toks, toks[:7]]), [toks])
    _no_growth(lambda: model.new_state(), [])
    _no_growth(lambda: model.new_state(batch=3), [])
    # errors on bad input release everything too
    bad = [0, 1, 10**6]

    def bad_call():
        with pytest.raises(ValueError):
            model.forward(bad)

    _no_growth(bad_call, [bad])


def test_ops_do_not_leak():
    """Every public op of rwkv5.ops, called correctly (and once with a bad argument), in the leak loop."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    wt, b = np.ones(64, np.float32), np.zeros(64, np.float32)
    T, H, N = 5, 2, 8
    r, k, v = (rng.standard_normal((T, H, N)).astype(np.float32) for _ in range(3))
    w = rng.uniform(0.5, 0.99, (H, N)).astype(np.float32)
    u = rng.standard_normal((H, N)).astype(np.float32)
    S = rng.standard_normal((H, N, N)).astype(np.float32)
    calls = {
        "layer_norm": (lambda: rwkv5.ops.layer_norm(x, wt, b), [x, wt, b]),
        "group_norm": (lambda: rwkv5.ops.group_norm(x, wt, b, 4), [x, wt, b]),
        "wkv5": (lambda: rwkv5.ops.wkv5(r, k, v, w, u, S), [r, k, v, w, u, S]),
    }
    assert sorted(calls) == sorted(rwkv5.ops.__all__), (
        "a public op is not covered by this leak test"
    )
    for fn, inputs in calls.values():
        fn()  # a wrong call fails the test here instead of being skipped
        _no_growth(fn, inputs)
    _no_growth(lambda: rwkv5.ops.wkv5(r, k, v, w, u, S, mode="parallel"), [r, k, v, w, u, S])

    def bad():
        with pytest.raises(ValueError):
            rwkv5.ops.layer_norm(x, wt[:3], b)

    _no_growth(bad, [x, wt, b])


def test_tokenizer_calls_do_not_leak(tok):
    text = "Hello мир 世界 🙂 " * 20
    ids = tok.encode(text)
    texts = [text, "", "abc", text[:17]]
    _no_growth(lambda: tok.encode(text), [text])
    _no_growth(lambda: tok.encode(text.encode()), [])
    _no_growth(lambda: tok.encode_to_numpy(text), [text])
    _no_growth(lambda: tok.decode(ids), [ids])
    _no_growth(lambda: tok.decode_bytes(ids), [ids])
    _no_growth(lambda: tok.encode_batch(texts, num_threads=2), [texts] + texts)
    _no_growth(lambda: tok.encode_batch(texts, num_threads=2, as_numpy=True), [texts] + texts)

    def bad_batch():
        with pytest.raises(TypeError):
            tok.encode_batch(texts + [5], as_numpy=True)

    _no_growth(bad_batch, [texts] + texts)

    def stream():
        d = tok.stream_decoder()
        d.feed_many(ids)
        d.flush()

    _no_growth(stream, [ids])

    def bad():
        with pytest.raises((ValueError, TypeError, OverflowError)):
            tok.decode([1, -5])

    _no_growth(bad, [])


def test_dataprep_calls_do_not_leak(tmp_path):
    data = ("some text, немного текста " * 50).encode()
    frame = _dataprep.zstd_compress(data, 3)
    line = json.dumps({"text": "héllo \ud83d\ude42", "lang": "fr"}).encode()
    _no_growth(lambda: _dataprep.crc32c(data), [data])
    _no_growth(lambda: _dataprep.zstd_compress(data, 3), [data])
    _no_growth(lambda: _dataprep.zstd_decompress(frame, len(data)), [frame])
    _no_growth(lambda: _dataprep.json_extract(line, "text", "lang", False), [line])
    _no_growth(lambda: _dataprep.utf8_copy(data + b"\xff", True), [data])

    def bad_frame():
        with pytest.raises(ValueError):
            _dataprep.zstd_decompress(frame[:-3], len(data))

    _no_growth(bad_frame, [frame])

    from rwkv5.dataprep import build

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i} текст"}) + "\n" for i in range(50)))
    k = [0]

    def one_build():
        k[0] += 1
        d = tmp_path / f"o{k[0]}"
        d.mkdir()
        build([str(src)], str(d / "train"))

    _no_growth(one_build, [], warm=3, iters=20, traced_tol=256 * 1024)


# -- hostile sizes ----------------------------------------------------------------------------


def _zst_header(n_docs, n_tokens, n_frames, index_offset, frame_tokens):
    head = struct.pack(
        "<8sIIQQQQQI",
        b"RWKV5ZST",
        1,
        8,
        n_docs,
        n_tokens,
        n_frames,
        index_offset,
        frame_tokens,
        65536,
    )
    return head + struct.pack("<I", _dataprep.crc32c(head))


def _hostile_zst(path, frame_tokens=1 << 40):
    """A valid-looking shard (checksums right) whose single frame claims frame_tokens tokens."""
    comp = _dataprep.zstd_compress(b"\x01\x00" * 4, 3)
    n_tokens = frame_tokens
    index_offset = ZST_HEADER_SIZE + len(comp)
    index = struct.pack("<QQ", ZST_HEADER_SIZE, len(comp)) + struct.pack("<QQ", 0, n_tokens)
    with open(path, "wb") as f:
        f.write(
            _zst_header(1, n_tokens, 1, index_offset, frame_tokens)
            + comp
            + index
            + struct.pack("<I", _dataprep.crc32c(index))
        )


def test_zst_shard_frame_claiming_huge_size_is_refused(tmp_path):
    # Regression: the reader used to allocate 2 * frame_tokens bytes before decompressing.
    p = tmp_path / "h.zst"
    _hostile_zst(p, frame_tokens=1 << 40)
    with ZstShard(str(p)) as z:
        with pytest.raises(FormatError, match="decompresses to 8 bytes"):
            z[0]


def test_zstd_decompress_checks_recorded_size_before_allocating():
    frame = _dataprep.zstd_compress(b"abc", 1)
    with pytest.raises(ValueError, match="decompresses to 3 bytes, expected 1099511627776"):
        _dataprep.zstd_decompress(frame, 1 << 40)
    with pytest.raises(ValueError, match="bad frame header"):
        _dataprep.zstd_decompress(b"\x00" * 16, 1 << 40)


@pytest.mark.parametrize("n,docs", [(1 << 62, 1), (1, 1 << 62), ((1 << 64) - 1, (1 << 64) - 1)])
def test_binidx_header_with_huge_counts(tmp_path, n, docs):
    idx = struct.pack("<9sQB", b"MMIDIDX\x00\x00", 1, 8) + struct.pack("<QQ", n, docs)
    (tmp_path / "b.idx").write_bytes(idx)
    (tmp_path / "b.bin").write_bytes(b"")
    with pytest.raises(FormatError, match="expected"):
        BinIdx(str(tmp_path / "b"))


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**62, 4], [2**64, 1], [3] * 40 + [2**20]])
def test_safetensors_shape_product_overflow(tmp_path, shape):
    hdr = json.dumps({"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, 16]}}).encode()
    p = tmp_path / "o.safetensors"
    p.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 16)
    with pytest.raises(ValueError, match="bytes"):
        read_safetensors(p)


def test_vocab_with_huge_length_column(tmp_path):
    lines = [f"{i + 1} {bytes([i])!r} 1" for i in range(256)] + [f"257 'ab' {2**40}"]
    p = tmp_path / "v.txt"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="byte length"):
        WorldTokenizer(p)


@pytest.mark.parametrize("field,value", [(3, 2**31 - 1), (2, 2**31 - 1), (4, 2**31 - 1), (3, -5)])
def test_rwkvcpp_header_with_huge_dims(tmp_path, field, value):
    hdr = [0x67676D66, 101, 256, 64, 2, 0]
    hdr[field] = value
    p = tmp_path / "h.bin"
    key = b"emb.weight"
    p.write_bytes(
        struct.pack("<6i", *hdr) + struct.pack("<5i", 2, len(key), 0, 64, 256) + key + b"\0" * 64
    )
    with pytest.raises(ValueError):
        read_rwkvcpp(p)


_PEAK = textwrap.dedent("""
    import resource, sys
    from rwkv5.dataprep.formats import ZstShard, BinIdx
    from rwkv5.formats.safetensors import read_safetensors
    from rwkv5.formats.rwkvcpp import read_rwkvcpp
    from rwkv5.formats.pth import read_pth
    from rwkv5.tokenizer import WorldTokenizer
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kind, path = sys.argv[1], sys.argv[2]
    try:
        if kind == "zst":
            with ZstShard(path) as z: z[0]
        elif kind == "safetensors": read_safetensors(path)
        elif kind == "rwkvcpp": read_rwkvcpp(path)
        elif kind == "pth": read_pth(path)
        elif kind == "vocab": WorldTokenizer(path)
        print("ACCEPTED")
    except (ValueError, OSError) as e:
        print("REFUSED", type(e).__name__)
    print("GROWTH_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
""")


def test_hostile_files_peak_memory_is_bounded(tmp_path):
    files = {}
    _hostile_zst(tmp_path / "h.zst", frame_tokens=1 << 33)
    files["zst"] = tmp_path / "h.zst"
    hdr = json.dumps(
        {"x": {"dtype": "F32", "shape": [1 << 30, 1 << 30], "data_offsets": [0, 8]}}
    ).encode()
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 8)
    files["safetensors"] = tmp_path / "h.safetensors"
    key = b"emb.weight"
    (tmp_path / "h.bin").write_bytes(
        struct.pack("<6i", 0x67676D66, 101, 2**31 - 1, 2**31 - 1, 1, 0)
        + struct.pack("<5i", 2, len(key), 0, 2**31 - 1, 2**31 - 1)
        + key
    )
    files["rwkvcpp"] = tmp_path / "h.bin"
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from _loaders_util import dict_pkl, tensor_pkl, write_pth

    pkl = dict_pkl([("a", tensor_pkl(numel=1 << 40, size=(1 << 20, 1 << 20), stride=(1 << 20, 1)))])
    write_pth(tmp_path / "h.pth", pkl, {"0": b"\0" * 64})
    files["pth"] = tmp_path / "h.pth"
    (tmp_path / "v.txt").write_text(
        "".join(f"{i + 1} {bytes([i])!r} 1\n" for i in range(256)) + f"257 'ab' {2**40}\n"
    )
    files["vocab"] = tmp_path / "v.txt"
    for kind, path in files.items():
        p = subprocess.run(
            [sys.executable, "-c", _PEAK, kind, str(path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert p.returncode == 0, (kind, p.stderr[-2000:])
        assert "REFUSED" in p.stdout, (kind, p.stdout)
        growth = int(p.stdout.split("GROWTH_KIB")[1])
        # every file here is < 1 KiB; 32 MiB covers imports done lazily by the readers
        assert growth < 32 * 1024, (kind, growth)
