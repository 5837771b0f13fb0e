"""Output sets on disk (dataprep/sets.py): a set is read at the prefix it is given (renamed sets),
only through its complete manifest (readers during a rebuild); a build owns its prefix (stale
files), one writer at a time (the lock), a failed run does not block the rerun its error suggests,
and merge/unpack keep track of the vocab."""

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from dataprep_helpers import gen_corpus, write_jsonl
from rwkv5 import dataprep
from rwkv5.dataprep import DataprepError, build, open_shards, verify


def quiet(inputs, out, **kw):
    return build(inputs, out, log=lambda s: None, workers=1, **kw)


def run_cli(*args, check=False):
    return subprocess.run(
        [sys.executable, "-m", "rwkv5.dataprep", *map(str, args)], capture_output=True, text=True
    )


def docs_of(prefix):
    with open_shards(prefix) as s:
        return [d.tolist() for d in s]


def corpus(tmp_path, seed=1, n=60, name="a.jsonl"):
    lines, _ = gen_corpus(seed, n, bad=False)
    p = tmp_path / name
    write_jsonl(p, lines)
    return str(p)


def copy_set(src_prefix, dst_prefix):
    """Copy every file of a set to a new prefix, renaming each the same way (what a user does)."""
    d, base = os.path.split(src_prefix)
    for n in os.listdir(d):
        if n.startswith(base) and not n.endswith(".work") and (n[len(base) :][:1] in ("_", ".")):
            shutil.copy(os.path.join(d, n), dst_prefix + n[len(base) :])


# ----------------------------------------------------------------------------- renamed sets (issue 13 item 2)


@pytest.mark.parametrize(
    "kw",
    [{}, {"shard_size": 300}, {"format": "zst"}, {"format": "zst", "shard_size": 300}],
    ids=["binidx", "binidx-sharded", "zst", "zst-sharded"],
)
def test_renamed_set_is_read_at_its_new_prefix(tmp_path, kw):
    inp = corpus(tmp_path)
    quiet([inp], str(tmp_path / "t16"), **kw)
    want = docs_of(str(tmp_path / "t16"))
    os.mkdir(tmp_path / "ren")
    ren = str(tmp_path / "ren" / "renamed")
    copy_set(str(tmp_path / "t16"), ren)
    assert verify(ren)[-1].startswith(f"ok {ren}:")
    assert docs_of(ren) == want
    assert dataprep.inspect_docs(ren, 0, 1)[0][1] == len(want[0])
    assert dataprep.stats_table(ren).startswith(f"{ren}:")
    if kw.get("format") == "zst":
        dataprep.unpack(ren, str(tmp_path / "u"))
        assert docs_of(str(tmp_path / "u")) == want
    else:
        dataprep.merge_binidx([ren, ren], str(tmp_path / "m"))
        assert docs_of(str(tmp_path / "m")) == want + want
    # removing the originals changes nothing for the copy
    for p in os.listdir(tmp_path):
        if p.startswith("t16"):
            os.remove(tmp_path / p)
    assert verify(ren)[-1].startswith("ok ") and docs_of(ren) == want


def test_renamed_damaged_set_fails_naming_the_damaged_file(tmp_path):
    inp = corpus(tmp_path)
    os.mkdir(tmp_path / "ren")
    quiet([inp], str(tmp_path / "ren" / "t16"))  # the original stays beside the copy
    ren = str(tmp_path / "ren" / "renamed")
    copy_set(str(tmp_path / "ren" / "t16"), ren)
    with open(ren + ".bin", "r+b") as f:
        f.truncate(os.path.getsize(ren + ".bin") - 2)
    with pytest.raises(DataprepError, match=f"^{ren}.bin: "):
        verify(ren)
    with pytest.raises((DataprepError, ValueError), match=f"{ren}.bin"):
        open_shards(ren)
    r = run_cli("verify", ren)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and f"{ren}.bin" in r.stderr
    r = run_cli("inspect", ren)
    assert r.returncode == 1 and f"{ren}.bin" in r.stderr
    with pytest.raises((DataprepError, ValueError), match=f"{ren}.bin"):
        dataprep.merge_binidx([ren], str(tmp_path / "m"))
    # a missing file is named too
    shutil.copy(str(tmp_path / "ren" / "t16.bin"), ren + ".bin")
    verify(ren)
    os.remove(ren + ".idx")
    with pytest.raises(DataprepError, match=f"^{ren}.idx: missing"):
        verify(ren)
    with pytest.raises(DataprepError, match=f"{ren}.idx"):
        open_shards(ren)


def test_eval_reads_renamed_and_zst_sets(tmp_path):
    """`rwkv5 eval` reads a set through its manifest at the prefix given (zst too, issue 13 item 6)."""
    from rwkv5.formats.safetensors import write_safetensors
    from rwkv5.testing import random_state_dict

    sd = random_state_dict("5.2", n_layer=1, n_embd=32, head_size=16, vocab_size=65536, seed=2)
    model = str(tmp_path / "m.safetensors")
    write_safetensors(model, {k: np.ascontiguousarray(v) for k, v in sd.items()})
    inp = corpus(tmp_path, n=8)
    quiet([inp], str(tmp_path / "b"))
    quiet([inp], str(tmp_path / "z"), format="zst", shard_size=100)

    def ev(prefix):
        r = subprocess.run(
            [sys.executable, "-m", "rwkv5", "eval", prefix, "--model", model, "--max-docs", "3"],
            capture_output=True,
            text=True,
        )
        return r

    rb, rz = ev(str(tmp_path / "b")), ev(str(tmp_path / "z"))
    assert rb.returncode == 0 and rz.returncode == 0, rb.stderr + rz.stderr
    assert rb.stdout.split("(")[0] == rz.stdout.split("(")[0]  # same documents, same loss
    os.mkdir(tmp_path / "ren")
    copy_set(str(tmp_path / "z"), str(tmp_path / "ren" / "r"))
    rr = ev(str(tmp_path / "ren" / "r"))
    assert rr.returncode == 0 and rr.stdout.split("(")[0] == rz.stdout.split("(")[0], rr.stderr
    with open(str(tmp_path / "ren" / "r_00000.zst"), "r+b") as f:
        f.truncate(100)
    rr = ev(str(tmp_path / "ren" / "r"))
    assert rr.returncode != 0 and "r_00000.zst" in rr.stderr and rr.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "edit, what",
    [
        (lambda m: m["shards"][0].update(name="../escape"), "name"),
        (
            lambda m: m["shards"][0]["files"].update(
                {"/etc/passwd": {"bytes": 1, "sha256": "0" * 64}}
            ),
            "files",
        ),
        (lambda m: m["output"].update(prefix="../x"), "output.prefix"),
        (lambda m: m.update(shards={"a": 1}), "shards"),
        (lambda m: m["shards"][0].update(documents="many"), "counts"),
        (lambda m: m.update(totals=None), "totals"),
        (lambda m: m["tokenizer"].update(n_vocab=-1), "n_vocab"),
    ],
)
def test_manifest_of_the_wrong_shape_is_one_line(tmp_path, edit, what):
    inp = corpus(tmp_path, n=5)
    p = str(tmp_path / "o")
    quiet([inp], p)
    m = json.load(open(p + ".manifest.json"))
    edit(m)
    json.dump(m, open(p + ".manifest.json", "w"))
    for fn in (verify, open_shards, dataprep.stats_table):
        with pytest.raises(DataprepError, match="not a data-prep manifest"):
            fn(p)
    for cmd in ("verify", "stats", "inspect"):
        r = run_cli(cmd, p)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (
            r.stderr
        )


# ----------------------------------------------------------------------------- a build owns its prefix (issue 20 item 10)


def test_rebuild_removes_files_of_the_earlier_set(tmp_path):
    inp = corpus(tmp_path, n=80)
    p = str(tmp_path / "o")
    logs = []
    m1 = quiet([inp], p, shard_size=200)
    assert len(m1["shards"]) >= 4
    m2 = build([inp], p, shard_size=600, workers=1, log=logs.append)
    names = sorted(os.listdir(tmp_path))
    want = sorted(
        [os.path.basename(inp), "o.manifest.json"]
        + [s["name"] + e for s in m2["shards"] for e in (".bin", ".idx")]
    )
    assert names == want
    assert any(
        line.startswith(
            f"removed {2 * (len(m1['shards']) - len(m2['shards']))} file(s) of the earlier set"
        )
        for line in logs
    )
    verify(p)
    quiet([inp], p, format="zst")  # zst after binidx: no .bin/.idx stays
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(inp), "o.manifest.json", "o.zst"]
    )
    quiet([inp], p)  # binidx after zst
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(inp), "o.manifest.json", "o.bin", "o.idx"]
    )
    # other prefixes in the folder are not touched
    open(tmp_path / "other_00001.bin", "wb").close()
    open(tmp_path / "o_extra.bin", "wb").close()
    quiet([inp], p)
    assert os.path.exists(tmp_path / "other_00001.bin") and os.path.exists(tmp_path / "o_extra.bin")


def test_verify_reports_files_its_manifest_does_not_list(tmp_path):
    inp = corpus(tmp_path, n=40)
    p = str(tmp_path / "o")
    quiet([inp], p, shard_size=300)
    shutil.copy(p + "_00000.bin", p + "_00042.bin")
    with pytest.raises(
        DataprepError,
        match=r"1 file\(s\) at the prefix that its manifest does not list.*o_00042\.bin",
    ):
        verify(p)
    r = run_cli("verify", p)
    assert r.returncode == 1 and "o_00042.bin" in r.stderr and r.stderr.count("\n") == 1
    os.remove(p + "_00042.bin")
    shutil.copy(p + "_00000.idx", p + ".idx")
    with pytest.raises(DataprepError, match=r"o\.idx"):
        verify(p)


# ----------------------------------------------------------------------------- failed runs (issue 13 item 4)


def test_the_rerun_a_failed_build_suggests_works(tmp_path):
    good = corpus(tmp_path, n=30, name="a.jsonl")
    bad = tmp_path / "bad.jsonl"
    write_jsonl(
        bad, [b'{"text": "one"}', b'{"text": "two"}', b'{"text": "thr', b'{"text": "four"}']
    )
    out = str(tmp_path / "o")
    r = run_cli("build", good, bad, "--out", out, "--no-progress", "--keep-work")
    assert r.returncode == 1 and "bad.jsonl:3: malformed_json (use --on-error skip" in r.stderr
    r = run_cli("build", good, bad, "--out", out, "--no-progress", "--on-error", "skip")
    assert r.returncode == 0, r.stderr
    assert "keeping 1 completed task(s) it can reuse" in r.stderr  # a.jsonl was done and is reused
    m = json.load(open(out + ".manifest.json"))
    assert m["skipped"]["counts"] == {"malformed_json": 1} and m["options"]["on_error"] == "skip"
    assert not os.path.exists(out + ".work")
    verify(out)


def test_missing_field_names_fields_and_suggests_text_field(tmp_path):
    src = tmp_path / "c.jsonl"
    write_jsonl(src, [b'{"content": "hello", "id": 7}', b'{"content": "world", "id": 8}'])
    out = str(tmp_path / "o")
    r = run_cli("build", src, "--out", out, "--no-progress")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert 'c.jsonl:1: missing_field: no member "text" (the record has "content", "id")' in r.stderr
    assert "--text-field" in r.stderr
    r = run_cli("build", src, "--out", out, "--no-progress", "--text-field", "content")
    assert r.returncode == 0, r.stderr
    assert [t for _, _, t in dataprep.inspect_docs(out, 0, 2)] == ["hello", "world"]


def test_interrupted_run_still_resumes_and_guards_its_parts(tmp_path):
    inp = [corpus(tmp_path, 1, 40, "a.jsonl"), corpus(tmp_path, 2, 40, "b.jsonl")]
    out = str(tmp_path / "o")
    quiet(inp, out, keep_work=True)
    ref = docs_of(out)
    # an interrupted run: its work area has a plan and parts, and no end record
    os.remove(out + ".work/ended.json")
    os.remove(out + ".work/task-000001.done.json")
    with pytest.raises(DataprepError, match="unfinished run with different inputs or options"):
        quiet(inp, out, shuffle=True)
    logs = []
    build(inp, out, workers=1, log=logs.append, progress=True)  # the same command resumes
    assert any("(resumed)" in line for line in logs) and docs_of(out) == ref


def test_reused_parts_match_a_fresh_build(tmp_path):
    """Parts kept from a failed run are only those the new options would write identically."""
    a = corpus(tmp_path, 3, 50, "a.jsonl")
    b = tmp_path / "b.jsonl"
    write_jsonl(b, [b'{"text": "x", "t2": "y"}', b"not json"])
    out = str(tmp_path / "o")
    with pytest.raises(DataprepError):
        quiet([a, str(b)], out)
    logs = []
    build(
        [a, str(b)], out, workers=1, log=logs.append, on_error="skip", lang_field="lang"
    )  # other task options
    assert any("keeping 0 completed task(s)" in line for line in logs)
    fresh = str(tmp_path / "f")
    quiet([a, str(b)], fresh, on_error="skip", lang_field="lang")
    assert docs_of(out) == docs_of(fresh)
    m1, m2 = json.load(open(out + ".manifest.json")), json.load(open(fresh + ".manifest.json"))
    assert m1["statistics"] == m2["statistics"]


# ----------------------------------------------------------------------------- merge and vocabularies (issue 20 item 11)


def test_merge_refuses_sets_of_different_vocabs_and_records_the_vocab(tmp_path):
    from rwkv5.dataprep.build import default_vocab_path

    other = tmp_path / "other_vocab.txt"
    other.write_bytes(open(default_vocab_path(), "rb").read() + b"\n")  # same ids, another file
    inp = corpus(tmp_path, n=20)
    quiet([inp], str(tmp_path / "A"))
    quiet([inp], str(tmp_path / "B"), vocab=str(other))
    quiet([inp], str(tmp_path / "B2"), vocab=str(other), shard_size=100)
    with pytest.raises(DataprepError, match="another vocab"):
        dataprep.merge_binidx([str(tmp_path / "A"), str(tmp_path / "B")], str(tmp_path / "M"))
    assert not os.path.exists(str(tmp_path / "M.bin"))
    r = run_cli("merge", tmp_path / "A", tmp_path / "B", "--out", tmp_path / "M")
    assert r.returncode == 1 and "another vocab" in r.stderr and r.stderr.count("\n") == 1
    m = dataprep.merge_binidx([str(tmp_path / "B"), str(tmp_path / "B2")], str(tmp_path / "M"))
    mb = json.load(open(str(tmp_path / "B.manifest.json")))
    assert m["tokenizer"]["vocab_sha256"] == mb["tokenizer"]["vocab_sha256"]
    assert json.load(open(str(tmp_path / "M.manifest.json")))["tokenizer"] == mb["tokenizer"]
    verify(str(tmp_path / "M"))
    quiet([inp], str(tmp_path / "Z"), vocab=str(other), format="zst")
    u = dataprep.unpack(str(tmp_path / "Z"), str(tmp_path / "U"))
    assert u["tokenizer"]["vocab_sha256"] == mb["tokenizer"]["vocab_sha256"]
    with pytest.raises(DataprepError, match="is also an input"):
        dataprep.unpack(str(tmp_path / "Z"), str(tmp_path / "Z"))


# ----------------------------------------------------------------------------- two writers, readers during a rebuild (issue 20 item 12)


class _HeldExecutor:
    """An Executor whose tasks wait until released: keeps a build running (holding its lock)."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.started = threading.Event()
        self.release = threading.Event()
        self._ex = ThreadPoolExecutor(1)

    def submit(self, fn, *a, **k):
        def run():
            self.started.set()
            assert self.release.wait(120)
            return fn(*a, **k)

        return self._ex.submit(run)

    def shutdown(self, wait=True):
        self._ex.shutdown(wait)


def test_two_builds_of_one_prefix_one_fails_at_once_with_one_line(tmp_path):
    inp = corpus(tmp_path, n=40)
    out = str(tmp_path / "o")
    ex = _HeldExecutor()
    res = {}

    def first():
        try:
            res["m"] = quiet([inp], out, executor=ex)
        except BaseException as e:  # reported by the assertion below
            res["e"] = e

    t = threading.Thread(target=first)
    t.start()
    try:
        assert ex.started.wait(60)
        # the second build of the same prefix, while the first one runs
        r = run_cli("build", inp, "--out", out, "--no-progress")
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "another build, merge or unpack is writing this prefix" in r.stderr
        assert f"by process {os.getpid()}" in r.stderr
        with pytest.raises(DataprepError, match="another build"):
            quiet([inp], out)
        from rwkv5.dataprep.sets import PrefixLock

        with pytest.raises(DataprepError, match="another build"):
            with PrefixLock(out):
                pass
        assert t.is_alive()  # it failed while the first build still ran
    finally:
        ex.release.set()
        t.join()
        ex.shutdown()
    assert "e" not in res, res.get("e")
    verify(out)
    assert not os.path.exists(out + ".work")
    quiet([inp], out)  # the prefix is free again


def _two_sets(tmp_path):
    a = corpus(tmp_path, 5, 30, "a.jsonl")
    b = corpus(tmp_path, 6, 45, "b.jsonl")
    out = str(tmp_path / "o")
    ref = {}
    for name, inp, kw in (("A", a, {"shard_size": 150}), ("B", b, {"shard_size": 400})):
        p = str(tmp_path / name)
        quiet([inp], p, **kw)
        ref[name] = docs_of(p)
    return a, b, out, ref


def test_readers_during_a_rebuild_see_a_whole_set_or_an_error(tmp_path, monkeypatch):
    """Open the set at every step of publishing a rebuild: a reader gets the whole old set, the
    whole new set, or a DataprepError — never files of one set read through the other's manifest,
    and never files without a manifest."""
    a, b, out, ref = _two_sets(tmp_path)
    quiet([a], out, shard_size=150)
    seen = []
    real_replace, real_remove = os.replace, os.remove

    def probe():
        try:
            got = docs_of(out)
        except DataprepError as e:
            seen.append(("error", str(e)))
            return
        assert got in (ref["A"], ref["B"]), "a reader got a mixture of two sets"
        seen.append("A" if got == ref["A"] else "B")

    def replace(src, dst, *a_, **k):
        r = real_replace(src, dst, *a_, **k)
        if str(dst).startswith(out):
            probe()
        return r

    def remove(p, *a_, **k):
        r = real_remove(p, *a_, **k)
        if str(p).startswith(out):
            probe()
        return r

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "remove", remove)
    quiet([b], out, shard_size=400)
    monkeypatch.undo()
    assert len(seen) > 4 and seen[-1] == "B"
    assert all(s in ("A", "B") or "no manifest" in s[1] for s in seen)
    assert docs_of(out) == ref["B"]


def test_a_reader_that_races_a_rebuild_starts_over(tmp_path, monkeypatch):
    """The manifest changes after a reader read it and before it opened every file: the reader
    notices (it reads the manifest again) and opens the new set."""
    from rwkv5.dataprep import tools as dtools

    a, b, out, ref = _two_sets(tmp_path)
    quiet([a], out, shard_size=150)
    real_open = dtools._open_shard
    calls = []

    def open_one(*args):
        calls.append(1)
        if len(calls) == 2:  # after the first shard of A is open: B replaces A
            quiet([b], out, shard_size=400)
        return real_open(*args)

    monkeypatch.setattr(dtools, "_open_shard", open_one)
    assert docs_of(out) == ref["B"]
    assert len(calls) > 2


def test_a_binidx_pair_without_manifest_is_read_only_when_asked_and_no_build_runs(tmp_path):
    """RWKV-LM's make_data writes PREFIX.bin/.idx without a manifest: inspect and eval read such a
    pair (open_shards(..., bare_binidx=True)), but never while PREFIX.work/ says a build of it is
    running or unfinished; open_shards and verify never read files without a manifest."""
    inp = corpus(tmp_path, n=10)
    quiet([inp], str(tmp_path / "o"))
    want = docs_of(str(tmp_path / "o"))
    bare = str(tmp_path / "bare")
    for ext in (".bin", ".idx"):
        shutil.copy(str(tmp_path / "o") + ext, bare + ext)
    with pytest.raises(DataprepError, match="no manifest"):
        open_shards(bare)
    with pytest.raises(DataprepError, match="no manifest"):
        verify(bare)
    with open_shards(bare, bare_binidx=True) as s:
        assert [d.tolist() for d in s] == want and s.manifest is None
    assert len(dataprep.inspect_docs(bare, 0, 100)) == len(want)
    os.mkdir(bare + ".work")
    with pytest.raises(DataprepError, match=r"no manifest.*PREFIX\.work/ exists"):
        open_shards(bare, bare_binidx=True)
    r = run_cli("inspect", bare)
    assert r.returncode == 1 and "PREFIX.work/ exists" in r.stderr and r.stderr.count("\n") == 1


def test_inspect_decodes_with_the_vocab_the_set_was_built_with(tmp_path):
    from rwkv5.dataprep.build import default_vocab_path

    lines = open(default_vocab_path(), "rb").read().splitlines(keepends=True)
    # a vocab whose id 34 ('!' in the World vocab) is 'Z' and the other way round
    i_bang = next(i for i, ln in enumerate(lines) if ln.startswith(b"34 "))
    i_z = next(i for i, ln in enumerate(lines) if ln.startswith(b"91 "))
    eol = lines[i_bang][len(b"34 '!' 1") :]
    assert lines[i_bang] == b"34 '!' 1" + eol and lines[i_z] == b"91 'Z' 1" + eol
    lines[i_bang], lines[i_z] = b"34 'Z' 1" + eol, b"91 '!' 1" + eol
    other = tmp_path / "swapped_vocab.txt"
    other.write_bytes(b"".join(lines))
    src = tmp_path / "a.jsonl"
    write_jsonl(src, [b'{"text": "Z"}', b'{"text": "!"}'])  # one byte each: one token each
    out = str(tmp_path / "o")
    quiet([str(src)], out, vocab=str(other))
    assert [t for _, _, t in dataprep.inspect_docs(out)] == ["Z", "!"]
    assert [t for _, _, t in dataprep.inspect_docs(out, vocab=default_vocab_path())] == ["!", "Z"]
    os.rename(other, tmp_path / "moved.txt")
    with pytest.raises(DataprepError, match="pass --vocab PATH"):
        dataprep.inspect_docs(out)
    assert [t for _, _, t in dataprep.inspect_docs(out, vocab=str(tmp_path / "moved.txt"))] == [
        "Z",
        "!",
    ]
