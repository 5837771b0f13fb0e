"""rwkv5.dataprep: hostile and unusual INPUTS and OPTIONS -- folders holding files the build does
not read, many input files under a low open-file limit, long language tags, inputs that change
during a build, odd paths and option values. Each test is the regression test of one defect."""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from dataprep_helpers import write_jsonl
from rwkv5.dataprep import DataprepError, build, verify


def quiet(**kw):
    m = build(log=lambda s: None, **kw)
    verify(kw["out"])
    return m


def run_cli(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "rwkv5.dataprep", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )


def one_line_error(r, *needles):
    assert r.returncode != 0, r.stdout
    assert r.stderr.count("\n") == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


# ----------------------------------------------------------------------------- many files, few fds


def test_3000_files_under_ulimit_256(tmp_path):
    """More input files (tasks) than open-file descriptors: the merge opens the parts in bounded
    batches (it used to hold every part open: 'Too many open files' after all the tokenizing)."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3000):
        (src / f"f{i:04d}.jsonl").write_bytes(b'{"text": "document %d"}\n' % i)
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        from rwkv5.dataprep import build, open_shards
        # shuffled: the copy ranges jump between the 3,000 parts
        m = build([{str(src)!r}], {str(tmp_path / "o")!r}, workers=1, shuffle=True, seed=3, log=lambda s: None)
        assert m["totals"]["documents"] == 3000, m["totals"]
        with open_shards({str(tmp_path / "o")!r}) as s:
            assert len(s) == 3000
        print("built")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "built" in r.stdout, r.stderr[-2000:]
    verify(str(tmp_path / "o"))


# ----------------------------------------------------------------------------- language tags


@pytest.mark.parametrize("unit", ["x", "é", "中", "😀", "ab\\"])
def test_long_lang_field_is_cut_at_63_bytes_on_a_character_boundary(tmp_path, unit):
    """--lang-field values longer than the parser's buffer gave stale bytes or another record's
    language; they are cut to their first 63 bytes (whole characters)."""
    lines, want = [], {}
    for k, reps in enumerate((1, 40, 100, 300)):
        lang = unit * reps + str(k)
        b = lang.encode()
        cut = b[:63].decode("utf-8", "ignore") if len(b) > 63 else lang
        want[cut] = want.get(cut, 0) + 1
        lines.append(json.dumps({"text": f"doc {k}", "lang": lang}, ensure_ascii=False).encode())
        lines.append(json.dumps({"text": "short", "lang": "en"}).encode())
    want["en"] = 4
    write_jsonl(tmp_path / "a.jsonl", lines)
    m = quiet(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "o"), lang_field="lang")
    got = {k: v["documents"] for k, v in m["statistics"]["per_language"].items()}
    assert got == want


# ----------------------------------------------------------------------------- long paths


def test_error_naming_a_long_path_keeps_its_reason(tmp_path):
    """A path over ~1,020 characters cut the C error message off before the reason."""
    d = tmp_path
    for i in range(7):
        d = d / (f"{i}" + "d" * 199)
    d.mkdir(parents=True)
    p = d / "bad.jsonl"
    assert len(str(p)) > 1400
    write_jsonl(p, [b'{"text": "ok"}', b'{"text": "ok"}', b"{bad"])
    with pytest.raises(DataprepError) as ei:
        quiet(inputs=[str(p)], out=str(tmp_path / "o"))
    assert str(ei.value).startswith(f"{p}:3: malformed_json"), str(ei.value)[-200:]


# ----------------------------------------------------------------------------- inputs that change


@pytest.mark.parametrize("change", ["truncate", "append", "touch"])
def test_input_changed_during_the_build_is_an_error(tmp_path, monkeypatch, change):
    """Truncating an input while the build read it gave exit 0 with a fraction of its documents.
    Each task re-checks its input's size and mtime when it has read it."""
    build_mod = importlib.import_module("rwkv5.dataprep.build")
    lines = [json.dumps({"text": f"document {i}"}).encode() for i in range(2000)]
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": "other file"}'])
    write_jsonl(tmp_path / "b.jsonl", lines)
    real = build_mod._dataprep.run_task

    def run_task_then_change(tok, path, *args, **kw):
        res = real(tok, path, *args, **kw)
        if os.fsdecode(path).endswith("b.jsonl"):  # as if another program wrote to it meanwhile
            p = tmp_path / "b.jsonl"
            if change == "truncate":
                os.truncate(p, 1000)
            elif change == "append":
                with open(p, "ab") as f:
                    f.write(b'{"text": "late"}\n')
            else:
                st = os.stat(p)
                os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        return res

    monkeypatch.setattr(build_mod._dataprep, "run_task", run_task_then_change)
    with pytest.raises(DataprepError, match=r"b\.jsonl: the input changed during the build"):
        build([str(tmp_path)], str(tmp_path / "o"), log=lambda s: None, task_size=4096)
    assert not os.path.exists(str(tmp_path / "o") + ".manifest.json")
    assert not os.path.exists(str(tmp_path / "o") + ".bin")


# ----------------------------------------------------------------------------- files a folder holds


def test_files_of_other_types_under_a_folder_are_reported(tmp_path):
    """A folder holding .lz4 / .csv files (.gz before gzip inputs) printed 'skipped 0' and exited 0:
    every file found is now read or listed in a warning and in the manifest."""
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    write_jsonl(d / "a.jsonl", [b'{"text": "alpha"}'])
    (d / "b.jsonl.lz4").write_bytes(b"\x04\x22\x4d\x18 not read")
    (d / "sub" / "c.csv").write_bytes(b"text\nnot read\n")
    (d / "notes.md").write_text("hi")
    logs = []
    m = build([str(d)], str(tmp_path / "o"), log=logs.append)
    assert m["totals"]["documents"] == 1
    nr = m["inputs_not_read"]
    assert nr["count"] == 3 and sorted(os.path.basename(p) for p in nr["first"]) == [
        "b.jsonl.lz4",
        "c.csv",
        "notes.md",
    ]
    warn = [line for line in logs if line.startswith("warning: 3 file(s)")]
    assert len(warn) == 1 and "b.jsonl.lz4" in warn[0] and "c.csv" in warn[0]
    r = run_cli("build", d, "--out", tmp_path / "o2", "--no-progress")
    assert (
        r.returncode == 0 and "warning: 3 file(s) under the input folders are not read" in r.stderr
    )


def test_zero_documents_is_an_error_unless_allow_empty(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "x.gz").write_bytes(b"\x1f\x8b")
    write_jsonl(d / "e.jsonl", [b'{"text": ""}', b"  "])
    r = run_cli("build", d, "--out", tmp_path / "o", "--no-progress")
    assert r.returncode != 0 and r.stderr.count("\n") == 2, r.stderr  # the warning, then the error
    assert "error: no documents" in r.stderr and "--allow-empty" in r.stderr
    assert not os.path.exists(str(tmp_path / "o") + ".manifest.json")
    r = run_cli("build", d, "--out", tmp_path / "o", "--no-progress", "--allow-empty")
    assert r.returncode == 0, r.stderr
    assert json.load(open(str(tmp_path / "o") + ".manifest.json"))["totals"]["documents"] == 0
    verify(str(tmp_path / "o"))


def test_workers_zero_is_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": "alpha"}'])
    one_line_error(
        run_cli("build", tmp_path / "a.jsonl", "--out", tmp_path / "o", "--workers", "0"),
        "--workers: expected 1..1024, got 0",
    )
    with pytest.raises(DataprepError, match="--workers"):
        build([str(tmp_path / "a.jsonl")], str(tmp_path / "o"), workers=0, log=lambda s: None)


def test_txt_zst_is_read_as_text(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    text = "line one {not json}\nline two\n"
    (tmp_path / "a.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    (tmp_path / "a.txt").write_text(text)
    m1 = quiet(inputs=[str(tmp_path / "a.txt.zst")], out=str(tmp_path / "z"))
    quiet(inputs=[str(tmp_path / "a.txt")], out=str(tmp_path / "t"))
    assert m1["totals"]["documents"] == 1
    for ext in (".bin", ".idx"):
        assert (
            open(str(tmp_path / "z") + ext, "rb").read()
            == open(str(tmp_path / "t") + ext, "rb").read()
        )
    # and a folder search picks it up
    m3 = quiet(inputs=[str(tmp_path)], out=str(tmp_path / "f"))
    assert sorted(os.path.basename(i["path"]) for i in m3["inputs"]) == ["a.txt", "a.txt.zst"]


# ----------------------------------------------------------------------------- paths and options


def test_non_utf8_input_name_is_one_line_naming_the_file(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    write_jsonl(d / "ok.jsonl", [b'{"text": "alpha"}'])
    bad = os.path.join(os.fsencode(d), b"caf\xe9.jsonl")
    with open(bad, "wb") as f:
        f.write(b'{"text": "beta"}\n')
    r = run_cli("build", d, "--out", tmp_path / "o")
    one_line_error(r, "caf\\xe9.jsonl", "not valid UTF-8")
    assert not os.path.exists(tmp_path / "o.work")


def test_non_utf8_out_is_refused_before_any_work(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": "alpha"}'])
    out = os.path.join(os.fsencode(tmp_path), b"o\xff")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv5.dataprep",
            "build",
            os.fsencode(tmp_path / "a.jsonl"),
            b"--out",
            out,
        ],
        capture_output=True,
    )
    assert r.returncode != 0 and r.stderr.count(b"\n") == 1 and b"not valid UTF-8" in r.stderr, (
        r.stderr
    )
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl"]


@pytest.mark.parametrize(
    "opt, needle",
    [
        (["--seed", "-1"], "--seed: expected 0..18446744073709551615, got -1"),
        (["--workers", "2000"], "--workers: expected 1..1024, got 2000"),
        (["--shard-size", "infMB"], "--shard-size 'infMB': expected a finite size"),
        (["--shard-size", "nanGB"], "--shard-size 'nanGB': expected a finite size"),
        (["--zst-level", "99"], "--zst-level: expected 1..22, got 99"),
        (["--epochs", "0"], "--epochs: expected >= 1, got 0"),
        (["--ctx-len", "0"], "--ctx-len: expected >= 1, got 0"),
        (["--vocab", "/nonexistent/vocab.txt"], "--vocab /nonexistent/vocab.txt: no such file"),
    ],
)
def test_options_are_validated_before_reading_input(tmp_path, opt, needle):
    """Every bad option value is one line before any input is read or any file is written (a
    missing input would otherwise be reported first)."""
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": "alpha"}'])
    r = run_cli("build", tmp_path / "missing.jsonl", "--out", tmp_path / "o", *opt)
    one_line_error(r, needle)
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl"]


@pytest.mark.parametrize("out", ["", "sub/", "sub"])
def test_out_must_be_a_file_prefix(tmp_path, out):
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": "alpha"}'])
    (tmp_path / "sub").mkdir()
    r = run_cli("build", "a.jsonl", "--out", out, cwd=tmp_path)
    one_line_error(r, "--out")
    assert "is a folder" in r.stderr or "expected a file prefix" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "sub"] and os.listdir(tmp_path / "sub") == []


def test_symlinks_loops_and_two_paths_to_one_file(tmp_path):
    """A symlink loop made a ** glob read 3,509 documents instead of 58; folder walks skipped
    symlinked folders; a file reached by two paths was read twice."""
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_jsonl(root / "a" / "one.jsonl", [b'{"text": "one"}'])
    write_jsonl(elsewhere / "two.jsonl", [b'{"text": "two"}'])
    os.symlink(root, root / "a" / "loop")  # a loop back to the top
    os.symlink(elsewhere, root / "linked")  # a symlinked folder
    os.symlink(root / "a" / "one.jsonl", root / "alias.jsonl")  # the same file by a second path
    for inputs in (
        [str(root)],
        [str(root / "**" / "*.jsonl")],
        [str(root), str(root / "a" / "one.jsonl")],
    ):
        m = quiet(inputs=inputs, out=str(tmp_path / "o"))
        assert m["totals"]["documents"] == 2, inputs
        assert sorted(os.path.basename(i["path"]) for i in m["inputs"]) == [
            "one.jsonl",
            "two.jsonl",
        ]


def test_zero_byte_jsonl_zst_is_an_error(tmp_path):
    (tmp_path / "e.jsonl.zst").write_bytes(b"")
    with pytest.raises(OSError, match=r"e\.jsonl\.zst: 0 bytes, not a zstd stream"):
        build([str(tmp_path / "e.jsonl.zst")], str(tmp_path / "o"), log=lambda s: None)


def test_build_accepts_one_string_as_one_input(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [b'{"text": "alpha"}', b'{"text": "beta"}'])
    m = quiet(inputs=str(tmp_path / "x.jsonl"), out=str(tmp_path / "o"))
    assert m["totals"]["documents"] == 2 and [i["path"] for i in m["inputs"]] == [
        str(tmp_path / "x.jsonl")
    ]


@pytest.mark.parametrize("txt_mode", ["file", "blank"])
def test_txt_errors_name_the_bad_line(tmp_path, txt_mode):
    (tmp_path / "a.txt").write_bytes(b"one\n\ntwo\nth\xffree\n\nfour\n")
    with pytest.raises(DataprepError, match=r"a\.txt:4: invalid_utf8"):
        build([str(tmp_path / "a.txt")], str(tmp_path / "o"), txt_mode=txt_mode, log=lambda s: None)


def test_language_statistics_do_not_depend_on_task_size(tmp_path):
    """Beyond 4,094 languages in a task the C table folded the rest into '(more languages)', so
    the statistics changed with --task-size."""
    lines = [json.dumps({"text": f"d{i}", "lang": f"l{i % 5000}"}).encode() for i in range(10000)]
    write_jsonl(tmp_path / "a.jsonl", lines)
    stats = []
    for ts in (1 << 20, 20_000):
        m = quiet(
            inputs=[str(tmp_path / "a.jsonl")],
            out=str(tmp_path / f"o{ts}"),
            lang_field="lang",
            task_size=ts,
        )
        stats.append(m["statistics"]["per_language"])
    assert len(stats[0]) == 5000 and "(more languages)" not in stats[0]
    assert stats[0] == stats[1]


# ----------------------------------------------------------------------------- manifests, merge, unpack


@pytest.fixture
def small_set(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": "alpha"}', b'{"text": "beta"}'])
    quiet(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "s"))
    return tmp_path / "s"


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: [],
        lambda m: {**m, "shards": {"a": 1}},
        lambda m: {**m, "shards": [{**m["shards"][0], "documents": "2"}]},
        lambda m: {**m, "shards": [{**m["shards"][0], "name": "../../etc/passwd"}]},
        lambda m: {**m, "totals": None},
        lambda m: {**m, "statistics": {"per_script": [], "per_language": {}}},
        lambda m: {k: v for k, v in m.items() if k != "tokenizer"},
    ],
)
def test_manifest_of_the_wrong_shape_is_one_line_everywhere(small_set, damage):
    path = str(small_set) + ".manifest.json"
    m = json.load(open(path))
    with open(path, "w") as f:
        json.dump(damage(m), f)
    for cmd in (
        ["verify", small_set],
        ["stats", small_set],
        ["inspect", small_set],
        ["merge", small_set, "--out", small_set.parent / "m"],
        ["unpack", small_set, "--out", small_set.parent / "u"],
    ):
        r = run_cli(*cmd)
        one_line_error(r, "not a data-prep manifest")
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("ctx", ["-1", "0"])
def test_merge_and_unpack_refuse_a_bad_ctx_len_before_writing(small_set, ctx):
    for cmd in ("merge", "unpack"):
        r = run_cli(cmd, small_set, "--out", small_set.parent / "m", "--ctx-len", ctx)
        one_line_error(r, f"--ctx-len: expected >= 1, got {ctx}")
        assert not os.path.exists(small_set.parent / "m.bin")


def test_unpack_and_merge_refuse_to_overwrite_their_input(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [b'{"text": "alpha"}'])
    quiet(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "z"), format="zst")
    quiet(inputs=[str(tmp_path / "a.jsonl")], out=str(tmp_path / "b"))
    before = {
        p: open(tmp_path / p, "rb").read()
        for p in os.listdir(tmp_path)
        if p.startswith(("z.", "b."))
    }
    one_line_error(run_cli("unpack", tmp_path / "z", "--out", tmp_path / "z"), "is also an input")
    one_line_error(run_cli("merge", tmp_path / "b", "--out", tmp_path / "b"), "is also an input")
    after = {
        p: open(tmp_path / p, "rb").read()
        for p in os.listdir(tmp_path)
        if p.startswith(("z.", "b."))
    }
    assert after == before
    verify(str(tmp_path / "z"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: {
            **m,
            "statistics": {"per_script": {"Latin": {"documents": "x"}}, "per_language": {}},
        },
        lambda m: {**m, "skipped": {"counts": {"empty": 1}, "total": None, "first": []}},
        lambda m: {**m, "rwkv_lm_args": 5},
    ],
)
def test_stats_refuses_a_manifest_of_the_wrong_shape(small_set, damage):
    path = str(small_set) + ".manifest.json"
    m = json.load(open(path))
    with open(path, "w") as f:
        json.dump(damage(m), f)
    one_line_error(run_cli("stats", small_set), "not a data-prep manifest")
