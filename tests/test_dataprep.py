"""rwkv5.dataprep: end-to-end builds checked against the reference tokenizer and an independent
binidx reader, plus the format, option and error paths."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

zstandard = pytest.importorskip("zstandard")

from dataprep_helpers import (  # noqa: E402
    SAMPLES,
    gen_corpus,
    read_binidx_independent,
    ref_encode,
    write_jsonl,
)
from rwkv5 import dataprep  # noqa: E402
from rwkv5.dataprep import DataprepError, build, magic_prime, open_shards, verify  # noqa: E402


def quiet(**kw):
    """build() without progress output; every output it produces must pass verify()."""
    m = build(log=lambda s: None, **kw)
    verify(kw["out"])
    return m


def expected_docs(expected):
    return [e[1] for e in expected if e[0] == "doc"]


def expected_skips(expected):
    out = {}
    for e in expected:
        if e[0] not in ("doc", "blank"):
            out[e[0]] = out.get(e[0], 0) + 1
    return out


# ----------------------------------------------------------------------------- RWKV-LM numbers


def test_magic_prime_matches_spec_examples():
    # RWKV-LM's make_data.py example (docs/dataprep.md): minipile, 1,498,226,207 tokens
    assert magic_prime(1_498_226_207, 512) == 2_926_181
    assert magic_prime(1_498_226_207, 4096) == 365_759
    assert magic_prime(3 * 512 - 1, 512) is None


def _magic_prime_bruteforce(data_size, ctx):
    n_chunk = data_size // ctx - 1
    for p in range(n_chunk, 1, -1):
        if p % 3 == 2 and all(p % d for d in range(2, int(p**0.5) + 1)):
            return p
    return None


@pytest.mark.parametrize(
    "size,ctx", [(1536, 512), (10_000, 7), (123_457, 100), (99, 33), (5000, 4)]
)
def test_magic_prime_matches_bruteforce(size, ctx):
    assert magic_prime(size, ctx) == _magic_prime_bruteforce(size, ctx)


# ----------------------------------------------------------------------------- end to end


def test_build_binidx_matches_reference(tmp_path):
    lines, expected = gen_corpus(1, 300)
    write_jsonl(tmp_path / "a.jsonl", lines, bom=True)
    m = quiet(
        inputs=[str(tmp_path / "a.jsonl")],
        out=str(tmp_path / "o"),
        on_error="skip",
        lang_field="lang",
        ctx_len=64,
        workers=2,
    )
    docs, doc_idx = read_binidx_independent(str(tmp_path / "o"))
    want = expected_docs(expected)
    assert len(docs) == len(want)
    assert doc_idx.tolist() == list(range(len(docs) + 1))
    for d, text in zip(docs, want):
        assert tuple(d.tolist()) == ref_encode(text)
    try:
        from rwkv5.tokenizer import WorldTokenizer
    except (
        ImportError
    ):  # the tokenizer binding is a sibling part; the reference check above stands alone
        WorldTokenizer = None
    if WorldTokenizer is not None and hasattr(WorldTokenizer, "encode"):
        wt = WorldTokenizer()
        assert [d.tolist() for d in docs] == [wt.encode(t) + [0] for t in want]
    assert m["skipped"]["counts"] == expected_skips(expected)
    assert m["totals"]["blank_lines"] == sum(1 for e in expected if e[0] == "blank")
    # every skipped record is listed as file:line:reason with the right line
    listed = m["skipped"]["first"]
    bad = [(i + 1, e[0]) for i, e in enumerate(expected) if e[0] not in ("doc", "blank")]
    assert listed == [f"{tmp_path / 'a.jsonl'}:{ln}:{r}" for ln, r in bad][:100]
    # statistics per language and per script
    per_lang, per_script = m["statistics"]["per_language"], m["statistics"]["per_script"]
    for lang in SAMPLES:
        texts = [e[1] for e in expected if e[0] == "doc" and e[2] == lang]
        if not texts:
            assert per_lang.get(lang, {"documents": 0})["documents"] == 0, lang
            continue
        assert per_lang[lang]["documents"] == len(texts)
        assert per_lang[lang]["bytes"] == sum(len(t.encode()) for t in texts)
        assert per_lang[lang]["tokens"] == sum(len(ref_encode(t)) for t in texts)
    for lang, (_, script) in SAMPLES.items():
        if lang in per_lang:
            assert script in per_script
    assert sum(e["documents"] for e in per_script.values()) == len(want)
    ntok = sum(len(d) for d in docs)
    assert m["totals"]["tokens"] == ntok
    assert m["magic_prime"] == magic_prime(ntok, 64)
    verify(str(tmp_path / "o"))


def test_scripts_are_the_dominant_script(tmp_path):
    lines = [json.dumps({"text": t, "lang": k}).encode() for k, (t, _) in SAMPLES.items()]
    write_jsonl(tmp_path / "s.jsonl", lines)
    m = quiet(
        inputs=[str(tmp_path / "s.jsonl")], out=str(tmp_path / "o"), lang_field="lang", workers=1
    )
    per_script = m["statistics"]["per_script"]
    want = {}
    for _, script in SAMPLES.values():
        want[script] = want.get(script, 0) + 1
    assert {k: v["documents"] for k, v in per_script.items()} == want


def test_output_independent_of_workers_and_batches(tmp_path):
    lines, _ = gen_corpus(2, 400)
    write_jsonl(tmp_path / "a.jsonl", lines)
    outs = []
    for workers, batch, task_size in [
        (1, 0, 64 << 20),
        (2, 4096, 64 << 20),
        (2, 1000, 5000),
        (3, 300, 7777),
    ]:
        o = tmp_path / f"o{workers}_{batch}_{task_size}"
        m = quiet(
            inputs=[str(tmp_path / "a.jsonl")],
            out=str(o),
            on_error="skip",
            workers=workers,
            batch_bytes=batch,
            task_size=task_size,
            lang_field="lang",
        )
        outs.append(
            (
                open(str(o) + ".bin", "rb").read(),
                open(str(o) + ".idx", "rb").read(),
                m["statistics"],
                m["skipped"],
            )
        )
    for other in outs[1:]:
        assert other[0] == outs[0][0]
        assert other[1] == outs[0][1]
        assert other[2] == outs[0][2]
        assert other[3] == outs[0][3]


def test_split_tasks_keep_file_line_numbers(tmp_path):
    lines = [
        json.dumps({"text": f"doc {i}"}).encode() if i % 37 else b"{bad json"
        for i in range(1, 2001)
    ]
    write_jsonl(tmp_path / "a.jsonl", lines)
    m = quiet(
        inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "o"), on_error="skip", task_size=3000
    )
    want = [f"{tmp_path / 'a.jsonl'}:{i}:malformed_json" for i in range(1, 2001) if i % 37 == 0]
    assert m["skipped"]["first"] == want[:100]
    with pytest.raises(DataprepError, match=r"a\.jsonl:37: malformed_json"):
        quiet(
            inputs=[str(tmp_path / "a.jsonl")],
            out=str(tmp_path / "f"),
            task_size=3000,
            restart=True,
        )
    # a failing run leaves no final output
    assert not os.path.exists(str(tmp_path / "f") + ".bin")
    assert not os.path.exists(str(tmp_path / "f") + ".manifest.json")


def test_zst_and_txt_inputs(tmp_path):
    lines, expected = gen_corpus(3, 150)
    data = write_jsonl(tmp_path / "a.jsonl", lines)
    # three frames, one line split across frames
    cut1, cut2 = len(data) // 3, 2 * len(data) // 3
    c = zstandard.ZstdCompressor(write_checksum=True)
    (tmp_path / "b.jsonl.zst").write_bytes(
        c.compress(data[:cut1]) + c.compress(data[cut1:cut2]) + c.compress(data[cut2:])
    )
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbfFirst line\r\nsecond\n\n\nThird para\n  \nlast")
    m = quiet(inputs=[str(tmp_path)], out=str(tmp_path / "o1"), on_error="skip", txt_mode="blank")
    docs, _ = read_binidx_independent(str(tmp_path / "o1"))
    want = expected_docs(expected) * 2 + ["First line\nsecond", "Third para", "last"]
    assert [tuple(d.tolist()) for d in docs] == [ref_encode(t) for t in want]
    assert m["skipped"]["counts"] == {k: 2 * v for k, v in expected_skips(expected).items()}
    # one document per file keeps the file as it is (minus the BOM)
    quiet(inputs=[str(tmp_path / "c.txt")], out=str(tmp_path / "o2"))
    docs, _ = read_binidx_independent(str(tmp_path / "o2"))
    assert [tuple(d.tolist()) for d in docs] == [
        ref_encode("First line\r\nsecond\n\n\nThird para\n  \nlast")
    ]


def test_repair_utf8(tmp_path):
    lines = [
        b'{"text": "bad \xff\xe2\x82 bytes"}',
        b'{"text": "lone \\ud800 and \\udc00x"}',
        b'{"text": "fine \\ud83d\\ude00"}',
    ]
    write_jsonl(tmp_path / "a.jsonl", lines)
    m = quiet(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "o"), repair_utf8=True)
    docs, _ = read_binidx_independent(str(tmp_path / "o"))
    want = [
        b"bad \xff\xe2\x82 bytes".decode("utf-8", "replace"),
        "lone \ufffd and \ufffdx",
        "fine \U0001f600",
    ]
    assert [tuple(d.tolist()) for d in docs] == [ref_encode(t) for t in want]
    assert m["totals"]["repaired_documents"] == 2
    with pytest.raises(DataprepError, match=r"a\.jsonl:1: invalid_utf8"):
        quiet(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "f"))


def test_shuffle_epochs_dedup(tmp_path):
    texts = [f"document number {i} " + SAMPLES["ru"][0] for i in range(50)]
    lines = [json.dumps({"text": t}).encode() for t in texts + texts[:10]]  # 10 exact duplicates
    write_jsonl(tmp_path / "a.jsonl", lines)
    inp = [str(tmp_path / "a.jsonl")]
    base = [ref_encode(t) for t in texts]
    m = quiet(inputs=inp, out=str(tmp_path / "d"), dedup="exact")
    assert m["skipped"]["counts"] == {"duplicate": 10}
    docs, _ = read_binidx_independent(str(tmp_path / "d"))
    assert [tuple(d.tolist()) for d in docs] == base
    m1 = quiet(inputs=inp, out=str(tmp_path / "s1"), dedup="exact", shuffle=True, seed=7, epochs=3)
    quiet(inputs=inp, out=str(tmp_path / "s2"), dedup="exact", shuffle=True, seed=7, epochs=3)
    quiet(inputs=inp, out=str(tmp_path / "s3"), dedup="exact", shuffle=True, seed=8, epochs=3)
    b1, b2, b3 = (open(str(tmp_path / n) + ".bin", "rb").read() for n in ("s1", "s2", "s3"))
    assert b1 == b2 and b1 != b3
    docs, _ = read_binidx_independent(str(tmp_path / "s1"))
    got = [tuple(d.tolist()) for d in docs]
    assert len(got) == 150 and m1["totals"]["documents"] == 150
    epochs = [got[0:50], got[50:100], got[100:150]]
    for e in epochs:
        assert sorted(e) == sorted(base)  # each epoch is a permutation of all documents
    assert epochs[0] != epochs[1] and epochs[0] != base  # shuffled anew each epoch
    # epochs without shuffle repeat in order
    quiet(inputs=inp, out=str(tmp_path / "e"), epochs=2)
    docs, _ = read_binidx_independent(str(tmp_path / "e"))
    assert [tuple(d.tolist()) for d in docs] == [ref_encode(t) for t in texts + texts[:10]] * 2
    for n in ("d", "s1", "e"):
        verify(str(tmp_path / n))


def test_sharding_binidx_and_zst(tmp_path):
    lines, expected = gen_corpus(4, 200, bad=False)
    write_jsonl(tmp_path / "a.jsonl", lines)
    inp = [str(tmp_path / "a.jsonl")]
    quiet(inputs=inp, out=str(tmp_path / "one"))
    m = quiet(inputs=inp, out=str(tmp_path / "sh"), shard_size=500, ctx_len=8)
    names = [s["name"] for s in m["shards"]]
    assert names == [f"sh_{i:05d}" for i in range(len(names))] and len(names) > 3
    whole, _ = read_binidx_independent(str(tmp_path / "one"))
    parts = []
    for s in m["shards"]:
        d, _ = read_binidx_independent(str(tmp_path / s["name"]))
        total = sum(len(x) for x in d)
        assert total <= 500 or len(d) == 1
        assert s["tokens"] == total and s["magic_prime"] == magic_prime(total, 8)
        parts += d
    assert [x.tolist() for x in parts] == [x.tolist() for x in whole]
    verify(str(tmp_path / "sh"))
    # byte units: 1000 bytes of .bin = 500 tokens
    m2 = quiet(inputs=inp, out=str(tmp_path / "shb"), shard_size="1000B")
    assert [s["tokens"] for s in m2["shards"]] == [s["tokens"] for s in m["shards"]]
    # zst shards hold the same documents; unpack gives the same binidx bytes
    mz = quiet(inputs=inp, out=str(tmp_path / "z"), format="zst", shard_size=700, frame_tokens=97)
    assert all(os.path.exists(str(tmp_path / s["name"]) + ".zst") for s in mz["shards"])
    with open_shards(str(tmp_path / "z")) as zs:
        assert len(zs) == len(whole)
        assert [x.tolist() for x in zs] == [x.tolist() for x in whole]
        assert zs[5].tolist() == whole[5].tolist() and zs[-1].tolist() == whole[-1].tolist()
    verify(str(tmp_path / "z"))
    dataprep.unpack(str(tmp_path / "z"), str(tmp_path / "u"))
    for ext in (".bin", ".idx"):
        assert (
            open(str(tmp_path / "u") + ext, "rb").read()
            == open(str(tmp_path / "one") + ext, "rb").read()
        )
    verify(str(tmp_path / "u"))


def test_zst_shard_corruption_detected(tmp_path):
    lines, _ = gen_corpus(5, 100, bad=False)
    write_jsonl(tmp_path / "a.jsonl", lines)
    quiet(
        inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "z"), format="zst", frame_tokens=256
    )
    p = str(tmp_path / "z") + ".zst"
    good = open(p, "rb").read()
    rng = random.Random(0)
    for pos in [0, 10, 63, 64, 100, len(good) // 2, len(good) - 30, len(good) - 1] + [
        rng.randrange(len(good)) for _ in range(5)
    ]:
        bad = bytearray(good)
        bad[pos] ^= 0x40
        open(p, "wb").write(bytes(bad))
        with pytest.raises(DataprepError):
            verify(str(tmp_path / "z"))
        with pytest.raises((ValueError, dataprep.FormatError)):
            with open_shards(str(tmp_path / "z")) as zs:
                for _ in zs:
                    pass
    open(p, "wb").write(good)
    verify(str(tmp_path / "z"))


def test_merge(tmp_path):
    a, _ = gen_corpus(6, 60, bad=False)
    b, _ = gen_corpus(7, 40, bad=False)
    write_jsonl(tmp_path / "a.jsonl", a)
    write_jsonl(tmp_path / "b.jsonl", b)
    quiet(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "A"))
    quiet(inputs=[str(tmp_path / "b.jsonl")], out=str(tmp_path / "B"), shard_size=300)
    quiet(inputs=[str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], out=str(tmp_path / "AB"))
    dataprep.merge_binidx([str(tmp_path / "A"), str(tmp_path / "B")], str(tmp_path / "M"))
    for ext in (".bin", ".idx"):
        assert (
            open(str(tmp_path / "M") + ext, "rb").read()
            == open(str(tmp_path / "AB") + ext, "rb").read()
        )
    verify(str(tmp_path / "M"))


def test_verify_catches_tampering(tmp_path):
    lines, _ = gen_corpus(8, 50, bad=False)
    write_jsonl(tmp_path / "a.jsonl", lines)
    quiet(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "o"))
    p = str(tmp_path / "o") + ".bin"
    data = bytearray(open(p, "rb").read())
    data[10] ^= 1
    open(p, "wb").write(bytes(data))
    with pytest.raises(DataprepError, match="SHA-256"):
        verify(str(tmp_path / "o"))


# ----------------------------------------------------------------------------- zstd input errors


def _zst_input(tmp_path):
    lines, _ = gen_corpus(9, 120, bad=False)
    data = b"\n".join(lines) + b"\n"
    c = zstandard.ZstdCompressor(write_checksum=True)
    frames = [c.compress(data[: len(data) // 2]), c.compress(data[len(data) // 2 :])]
    return frames


def test_truncated_zst_is_an_error_naming_file_and_offset(tmp_path):
    frames = _zst_input(tmp_path)
    full = b"".join(frames)
    boundaries = {0, len(frames[0]), len(full)}
    p = tmp_path / "t.jsonl.zst"
    offsets = sorted(
        set(range(1, len(full), max(1, len(full) // 40)))
        | {1, len(frames[0]) - 1, len(frames[0]) + 1, len(full) - 1}
    )
    for cut in offsets:
        if cut in boundaries:
            continue
        p.write_bytes(full[:cut])
        with pytest.raises(
            (DataprepError, OSError),
            match=r"t\.jsonl\.zst: (truncated zstd frame|corrupt zstd data).*byte offset \d+",
        ):
            quiet(inputs=[str(p)], out=str(tmp_path / "o"), restart=True)
        assert not os.path.exists(str(tmp_path / "o") + ".bin")
    # cut exactly at the frame boundary: a valid, shorter stream
    p.write_bytes(frames[0])
    quiet(inputs=[str(p)], out=str(tmp_path / "ok"), on_error="skip", restart=True)


def test_corrupt_zst_and_trailing_garbage(tmp_path):
    frames = _zst_input(tmp_path)
    full = b"".join(frames)
    p = tmp_path / "t.jsonl.zst"
    p.write_bytes(full + b"garbage!")
    with pytest.raises(OSError, match=r"corrupt zstd data .* byte offset %d" % len(full)):
        quiet(inputs=[str(p)], out=str(tmp_path / "o"))
    rng = random.Random(1)
    for pos in [0, 5, len(frames[0]) // 2, len(frames[0]) + 7, len(full) - 2] + [
        rng.randrange(len(full)) for _ in range(5)
    ]:
        bad = bytearray(full)
        bad[pos] ^= 0x10
        p.write_bytes(bytes(bad))
        with pytest.raises(OSError, match=r"t\.jsonl\.zst"):
            quiet(inputs=[str(p)], out=str(tmp_path / "o"), restart=True)


# ----------------------------------------------------------------------------- CLI


def run_cli(*args, cwd=None, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "rwkv5.dataprep", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_cli_build_inspect_stats_verify(tmp_path):
    lines, expected = gen_corpus(10, 80)
    write_jsonl(tmp_path / "a.jsonl", lines)
    r = run_cli(
        "build",
        tmp_path / "*.jsonl",
        "--out",
        tmp_path / "o",
        "--ctx-len",
        "16",
        "--on-error",
        "skip",
        "--lang-field",
        "lang",
        "--workers",
        "2",
        "--no-progress",
    )
    m = json.load(open(str(tmp_path / "o") + ".manifest.json"))
    assert (
        f"--my_exit_tokens {m['totals']['tokens']} --magic_prime {m['magic_prime']} --ctx_len 16"
        in r.stdout
    )
    assert "verify" not in r.stderr
    r = run_cli("inspect", tmp_path / "o", "--doc", "1", "--count", "1")
    assert expected_docs(expected)[1] in r.stdout
    r = run_cli("stats", tmp_path / "o")
    assert "Cyrillic" in r.stdout and "bytes/token" in r.stdout
    r = run_cli("verify", tmp_path / "o")
    assert r.stdout.strip().splitlines()[-1].startswith("ok ")
    import hashlib
    from rwkv5.dataprep.build import default_vocab_path

    assert (
        m["tokenizer"]["vocab_sha256"]
        == hashlib.sha256(open(default_vocab_path(), "rb").read()).hexdigest()
    )


def test_cli_errors_are_one_line(tmp_path):
    r = run_cli("build", tmp_path / "missing.jsonl", "--out", tmp_path / "o", check=False)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    (tmp_path / "x.csv").write_text("a,b\n")
    r = run_cli("build", tmp_path / "x.csv", "--out", tmp_path / "o", check=False)
    assert r.returncode != 0 and "unsupported input type" in r.stderr and r.stderr.count("\n") == 1
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": "ok"}', b'{"text": 3}'])
    r = run_cli("build", tmp_path / "a.jsonl", "--out", tmp_path / "o", check=False)
    assert (
        r.returncode != 0
        and "a.jsonl:2: field_not_string" in r.stderr
        and r.stderr.count("\n") == 1
    )
    r = run_cli("build", tmp_path / "a.jsonl", "--out", tmp_path / "nodir" / "o", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr
    r = run_cli(
        "build", tmp_path / "a.jsonl", "--out", tmp_path / "o", "--shard-size", "lots", check=False
    )
    assert r.returncode != 0 and "--shard-size" in r.stderr
    r = run_cli("verify", tmp_path / "nothing", check=False)
    assert r.returncode != 0 and "no manifest" in r.stderr


def test_changed_options_need_restart(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": "ok"}'])
    inp = [str(tmp_path / "a.jsonl")]
    quiet(inputs=inp, out=str(tmp_path / "o"), keep_work=True)
    os.remove(str(tmp_path / "o") + ".work/ended.json")  # as if it had been interrupted
    with pytest.raises(DataprepError, match="--restart"):
        quiet(inputs=inp, out=str(tmp_path / "o"), shuffle=True)
    quiet(inputs=inp, out=str(tmp_path / "o"), shuffle=True, restart=True)


def test_executor(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    lines, _ = gen_corpus(11, 200)
    write_jsonl(tmp_path / "a.jsonl", lines)
    inp = [str(tmp_path / "a.jsonl")]
    quiet(inputs=inp, out=str(tmp_path / "a"), on_error="skip", task_size=4000)
    with ThreadPoolExecutor(2) as ex:
        quiet(
            inputs=inp,
            out=str(tmp_path / "b"),
            on_error="skip",
            task_size=4000,
            executor=ex,
            workers=1,
        )
    for ext in (".bin", ".idx"):
        assert (
            open(str(tmp_path / "a") + ext, "rb").read()
            == open(str(tmp_path / "b") + ext, "rb").read()
        )


def test_empty_inputs_warn_small_data(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": ""}', b"", b'{"text": "x"}'])
    m = quiet(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "o"), ctx_len=512)
    assert m["magic_prime"] is None and "warning" in m["rwkv_lm_args"]
    assert m["skipped"]["counts"] == {"empty": 1}
    verify(str(tmp_path / "o"))


# ----------------------------------------------------------------------------- large documents


@pytest.mark.slow
def test_50mb_single_document(tmp_path):
    """A 50 MB document, as one JSON line and as one .txt file. The unit U is longer than the
    longest token (128 bytes) and tokenizes the same alone and three times in a row, so greedy
    matching restarts at every copy and the reference for U*k is reference(U)*k."""
    unit = "".join(SAMPLES[k][0] + "\n" for k in SAMPLES) * 4
    ref = ref_encode(unit)[:-1]
    assert ref_encode(unit * 3)[:-1] == ref * 3
    k = 50_000_000 // len(unit.encode()) + 1
    doc = unit * k
    with open(tmp_path / "big.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    (tmp_path / "big.txt").write_text(doc, encoding="utf-8")
    want = np.array(ref * k + (0,), dtype=np.uint16)
    del doc
    for name in ("big.jsonl", "big.txt"):
        out = str(tmp_path / name.replace(".", "_"))
        m = quiet(inputs=[str(tmp_path / name)], out=out, workers=2)
        docs, _ = read_binidx_independent(out)
        assert len(docs) == 1 and np.array_equal(docs[0], want)
        assert m["totals"]["text_bytes"] == len(unit.encode()) * k


def test_folder_inputs_skip_our_outputs(tmp_path):
    write_jsonl(tmp_path / "train_extra.jsonl", [b'{"text": "extra"}'])
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": "alpha"}'])
    m1 = quiet(inputs=[str(tmp_path)], out=str(tmp_path / "train"), format="zst", shard_size=1)
    # a second build into the same folder must not read train_0000N.zst or train.manifest.json
    m2 = quiet(inputs=[str(tmp_path)], out=str(tmp_path / "train"), format="zst", shard_size=1)
    assert (
        [i["path"] for i in m1["inputs"]]
        == [i["path"] for i in m2["inputs"]]
        == [str(tmp_path / "a.jsonl"), str(tmp_path / "train_extra.jsonl")]
    )
    verify(str(tmp_path / "train"))
