"""Write the small seed corpora of every fuzz target into csrc/fuzz/seeds/<target>/ (run from the
project root: python csrc/fuzz/make_seeds.py). Each seed is a few hundred bytes to a few KB:
valid files produced by the project's own writers, so the fuzzers start past the magic numbers."""

import bz2
import gzip
import io
import lzma
import os
import struct
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
OUT = os.path.join(ROOT, "csrc", "fuzz", "seeds")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def via_file(writer):
    with tempfile.TemporaryDirectory() as td:
        p = os.path.join(td, "f")
        writer(p)
        return open(p, "rb").read()


TEXTS = [
    "Hello, world! 1234",
    "Ünïcödé – “quotes” ½",
    "Привет, мир",
    "日本語のテキストです。",
    "مرحبا بالعالم",
    "🙂🚀 emoji \t tabs\r\n",
    "aaaaaaaabababab\xe4\xe4",
]


def c_seeds():
    # vocab: all 256 bytes (a mix of str and bytes literals) + multi-byte tokens with escapes
    lines, i = [], 1
    for b in range(256):
        lit = repr(bytes([b])) if b >= 0x80 or b < 0x20 or b in (0x27, 0x5C) else repr(chr(b))
        lines.append(f"{i} {lit} 1")
        i += 1
    for tok in ["ab", "abc", "\n\n", "\u00e4\u00e4", "Привет", "\\x41", "\u65e5\u672c"]:
        lines.append(f"{i} {tok!r} {len(tok.encode())}")
        i += 1
    lines.append(f"{i} b'\\xe4\\xb8' 2")
    put("vocab", "generated.txt", ("\n".join(lines) + "\n").encode())
    put("vocab", "crlf.txt", ("\r\n".join(lines[:300]) + "\r\n").encode())
    # encode: texts
    for k, t in enumerate(TEXTS):
        put("encode", f"t{k}", t.encode("utf-8", "surrogatepass"))
    put("encode", "invalid", b"\xff\xfe abc \xe4\xb8 \xf0\x9f\x99")
    # json: option byte + one line
    jl = [
        b'{"text": "hello", "lang": "en"}',
        b'{"lang": "ru", "text": "\\u041f\\u0440\\u0438"}',
        b'{"text": "\\ud83d\\ude42 pair and lone \\ud800"}',
        b'{"a": [1, 2.5e3, {"b": null}], "text": "x\\n\\t\\"y"}',
        b'{"content": "c", "text": 5}',
        b'{"text": "bad \xff utf8"}',
        b'  {"text":"a"}  ',
    ]
    for k, line in enumerate(jl):
        put("json", f"j{k}", bytes([k % 8]) + line)
    # utf8
    for k, t in enumerate(TEXTS):
        put("utf8", f"u{k}", t.encode())
    put("utf8", "bad", b"\xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82 ok \xf0\x9f\x99\x82")
    # task: two option bytes (see fuzz_task.c) + the file
    jsonl = b"\n".join(jl) + b"\n\n" + b'{"text": "last"}'
    from rwkv5.dataprep import _dataprep

    fmt = {f["name"]: i for i, f in enumerate(_dataprep.RECORD_FORMATS)}
    codecs = [c["name"] for c in _dataprep.CODECS]

    def task(
        name,
        record_format,
        codec="plain",
        compress=False,
        repair=False,
        fail_fast=False,
        threads2=False,
        small_batch=False,
        lang=False,
        body=b"",
    ):
        opt = fmt[record_format] | codecs.index(codec) << 2 | (0x80 if compress else 0)
        flags = repair | fail_fast << 1 | threads2 << 2 | small_batch << 3 | lang << 4
        put("task", name, bytes([opt, flags]) + body)

    task("jsonl", "jsonl", body=jsonl)
    task("jsonl-repair-lang", "jsonl", repair=True, small_batch=True, lang=True, body=jsonl)
    task("txt", "txt-file", body="\n".join(TEXTS).encode())
    task("txt-blank", "txt-blank", threads2=True, body="\n\n".join(TEXTS).encode() + b"\n\n\n\xff")
    for c in codecs[1:]:
        task(f"{c}-compressed", "jsonl", c, compress=True, body=jsonl)
        task(
            f"{c}-compressed-txt-blank",
            "txt-blank",
            c,
            compress=True,
            small_batch=True,
            body="\n\n".join(TEXTS).encode(),
        )
    task("zstd-raw", "jsonl", "zstd", body=bytes.fromhex("28b52ffd2000410000") + b"A")
    task(
        "gzip-raw-two-members",
        "jsonl",
        "gzip",
        body=gzip.compress(b'{"text": "a"}\n', mtime=0) + gzip.compress(b'{"text": "b"}', mtime=0),
    )
    task("bzip2-raw", "txt-file", "bzip2", body=bz2.compress(b"text\n"))
    task("xz-raw", "txt-blank", "xz", body=lzma.compress(b"one\n\ntwo\n"))


def py_seeds():
    from _loaders_util import dict_pkl, tensor_pkl, write_pth
    from rwkv5.formats.safetensors import write_safetensors
    from rwkv5.formats.state_io import save_state
    from rwkv5.model import State
    from rwkv5.dataprep.formats import write_idx, write_zst_shard

    data = np.arange(24, dtype=np.float32)
    pkl = dict_pkl(
        [
            ("a", tensor_pkl(numel=24, size=(4, 6), stride=(6, 1))),
            ("b", tensor_pkl(key="1", storage="HalfStorage", numel=8, size=(8,), stride=(1,))),
            (
                "c",
                tensor_pkl(key="2", storage="BFloat16Storage", numel=4, size=(2, 2), stride=(1, 2)),
            ),
        ]
    )
    stor = {
        "0": data.tobytes(),
        "1": np.ones(8, np.float16).tobytes(),
        "2": np.ones(4, np.uint16).tobytes(),
    }
    pth = via_file(lambda p: write_pth(p, pkl, stor))
    put("pth", "small.pth", pth)
    put("zip", "small.zip", pth)
    st = via_file(
        lambda p: write_safetensors(
            p, {"x": np.ones((2, 3), np.float32), "y": np.zeros(4, np.float16)}, metadata={"k": "v"}
        )
    )
    put("safetensors", "small.safetensors", st)
    L, H, N = 2, 2, 4
    s = State(
        np.ones((L, H * N), np.float32),
        np.full((L, H, N, N), 0.5, np.float32),
        np.zeros((L, H * N), np.float32),
    )
    put("state", "small.state", via_file(lambda p: save_state(s, p)))
    # rwkv.cpp: header (magic, version, n_vocab, n_embd, n_layer, ftype) + two tensors
    buf = io.BytesIO()
    buf.write(struct.pack("<6i", 0x67676D66, 101, 4, 4, 1, 0))
    for key, shape, arr in [
        ("emb.weight", (4, 4), np.ones(16, np.float32)),
        ("ln_out.weight", (4,), np.ones(4, np.float32)),
    ]:
        kb = key.encode()
        buf.write(
            struct.pack(f"<3i{len(shape)}i", len(shape), len(kb), 0, *shape[::-1])
            + kb
            + arr.tobytes()
        )
    put("rwkvcpp", "small.bin", buf.getvalue())
    # the same with one (2, 32) matrix in each quantised block format (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
    from rwkv5.formats.rwkvcpp import BLOCK_FORMATS

    for t, (name, bdt, _) in BLOCK_FORMATS.items():
        blocks = np.zeros(2, bdt)
        blocks["d"] = [0.5, -0.25]
        if "m" in bdt.names:
            blocks["m"] = 0.125
        blocks["qs"] = np.arange(blocks["qs"].size).reshape(blocks["qs"].shape) % 120
        if "qh" in bdt.names:
            blocks["qh"] = 0xA5A50F0F
        kb = f"blocks.0.att.key.{name}".encode()
        buf.write(struct.pack("<5i", 2, len(kb), t, 32, 2) + kb + blocks.tobytes())
    put("rwkvcpp", "quant.bin", buf.getvalue())
    # binidx: 4-byte .idx length + .idx + .bin
    sizes = np.array([3, 1, 5], np.int32)
    idx = via_file(lambda p: write_idx(p, sizes))
    toks = np.array([5, 6, 0, 0, 7, 8, 9, 10, 0], np.uint16).tobytes()
    put("binidx", "small", struct.pack("<I", len(idx)) + idx + toks)
    # zst shard (frames of 4 tokens so there are several)
    with tempfile.TemporaryDirectory() as td:
        tf = os.path.join(td, "t")
        open(tf, "wb").write(toks)
        zp = os.path.join(td, "z")
        write_zst_shard(zp, tf, sizes, 65536, frame_tokens=4)
        put("zst", "small.zst", open(zp, "rb").read())


if __name__ == "__main__":
    c_seeds()
    py_seeds()
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"seeds written to {OUT}: {total} bytes")
