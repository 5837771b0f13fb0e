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
    return subprocess.run([sys.executable, "-m", "rwkv5.dataprep", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env)


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
        m = build([{str(src)!r}], {str(tmp_path / 'o')!r}, workers=1, shuffle=True, seed=3, log=lambda s: None)
        assert m["totals"]["documents"] == 3000, m["totals"]
        with open_shards({str(tmp_path / 'o')!r}) as s:
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
