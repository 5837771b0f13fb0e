"""rwkv5-prep reading its inputs from object storage (s3:// on the loopback server of
tests/s3server.py): every input type gives the same bytes as the local build of the same files;
globs and prefixes; byte-range and row-group tasks; one-line errors for a missing key, a bucket
without permission and a bad record; --storage-option; the manifest's record of the inputs."""

import gzip
import json
import os
import subprocess
import sys

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")
import pyarrow.ipc as ipc  # noqa: E402

from dataprep_helpers import gen_corpus  # noqa: E402
from s3server import subprocess_env  # noqa: E402
from rwkv5 import storage  # noqa: E402
from rwkv5.dataprep import DataprepError, build, verify  # noqa: E402
from rwkv5.dataprep.build import DEFAULTS, expand_inputs, plan_tasks  # noqa: E402


def _corpus(folder):
    """One file of every input type (plain, zstd, gzip .jsonl; .txt; Parquet with several row
    groups; Arrow IPC), as {relative name: bytes}."""
    os.makedirs(folder, exist_ok=True)
    lines, _ = gen_corpus(5, 3000)
    jsonl = b"\n".join(lines) + b"\n"
    files = {
        "a.jsonl": jsonl,
        "b.jsonl.zst": zstandard.ZstdCompressor().compress(
            b"\n".join(gen_corpus(6, 400)[0]) + b"\n"
        ),
        "c.json.gz": gzip.compress(b"\n".join(gen_corpus(7, 300)[0]) + b"\n", mtime=0),
        "sub/d.txt": "Ein Dokument.\nZwei Zeilen.\n".encode() * 50,
    }
    texts = [json.loads(x)["text"] for x in gen_corpus(8, 500, bad=False)[0]]
    table = pa.table({"text": texts, "lang": ["xx"] * len(texts)})
    pq.write_table(table, os.path.join(folder, "e.parquet"), row_group_size=60)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=100)
    files["sub/f.arrow"] = sink.getvalue().to_pybytes()
    for name, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    files["e.parquet"] = open(os.path.join(folder, "e.parquet"), "rb").read()
    return files


def _upload(s3, files, prefix="in/"):
    for name, data in files.items():
        s3.put(prefix + name, data)


def _outputs(prefix):
    return open(f"{prefix}.bin", "rb").read(), open(f"{prefix}.idx", "rb").read()


def _build(inputs, out, **kw):
    m = build(
        inputs, str(out), log=lambda s: None, workers=2, on_error="skip", lang_field="lang", **kw
    )
    verify(str(out))
    return m


def test_every_input_type_from_s3_equals_local(s3, tmp_path):
    files = _corpus(tmp_path / "in")
    _upload(s3, files)
    # small tasks: the .jsonl is cut into byte ranges and the Parquet file into row-group tasks
    local = _build([str(tmp_path / "in")], tmp_path / "local", task_size=40_000)
    remote = _build([s3.url("in/")], tmp_path / "remote", task_size=40_000)
    assert _outputs(tmp_path / "remote") == _outputs(tmp_path / "local")
    assert (
        remote["totals"] == local["totals"]
        and remote["skipped"]["total"] == local["skipped"]["total"]
    )
    assert remote["by_language"] == local["by_language"] if "by_language" in local else True
    urls = [i["path"] for i in remote["inputs"]]
    assert urls == sorted(s3.url("in/" + n) for n in files)
    for entry in remote["inputs"]:  # the URL, its size and its ETag
        assert entry["bytes"] == len(files[entry["path"].split("/in/", 1)[1]]) and entry["etag"]
    assert "storage_options" not in remote["options"]
    # the plan had byte-range tasks of the .jsonl and several row-group tasks of the Parquet file
    opts = {**DEFAULTS, "task_size": 40_000, "lang_field": "lang"}
    tasks = plan_tasks(expand_inputs([s3.url("in/")]), opts)
    assert sum(t["path"].endswith("a.jsonl") for t in tasks) > 3
    assert sum(t["path"].endswith(".parquet") for t in tasks) > 1
    assert [t["start"] for t in tasks if t["path"].endswith("a.jsonl")] == [
        t["start"]
        for t in plan_tasks(expand_inputs([str(tmp_path / "in")]), opts)
        if t["path"].endswith("a.jsonl")
    ]


def test_glob_over_objects_equals_local_glob(s3, tmp_path):
    files = _corpus(tmp_path / "in")
    _upload(s3, files)
    s3.put("in/notes.md", b"not an input")
    _build([str(tmp_path / "in" / "*.json*")], tmp_path / "local")
    remote = _build([s3.url("in/*.json*")], tmp_path / "remote")
    assert _outputs(tmp_path / "remote") == _outputs(tmp_path / "local")
    assert len(remote["inputs"]) == 3
    with pytest.raises(DataprepError, match=r"in/\*\.nothing': the pattern matches no object"):
        _build([s3.url("in/*.nothing")], tmp_path / "none")


def test_prefix_reports_objects_it_does_not_read(s3, tmp_path):
    s3.put("p/a.jsonl", b'{"text": "hello"}\n')
    s3.put("p/readme.md", b"#")
    m = _build([s3.url("p")], tmp_path / "o")
    assert m["inputs_not_read"] == {"count": 1, "first": [s3.url("p/readme.md")]}


def test_bad_record_in_an_object_names_the_url_and_line(s3, tmp_path):
    s3.put("bad.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataprepError, match=rf"^{s3.url('bad.jsonl')}:3: malformed_json"):
        build([s3.url("bad.jsonl")], str(tmp_path / "o"), log=lambda s: None)


def _cli(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "rwkv5.dataprep", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_key_and_bucket_without_permission_are_one_line_errors(
    s3, s3server, tmp_path, monkeypatch
):
    env = subprocess_env(s3server.endpoint)
    env["RWKV5_STORAGE_BACKOFF"] = "5"  # a retry would show as a slow test: there is none
    r = _cli(["build", s3.url("in/nokey.jsonl"), "--out", str(tmp_path / "o")], env, tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"rwkv5-prep build: error: input {s3.url('in/nokey.jsonl')}: no such object or prefix"
    ]
    s3.put("in/a.jsonl", b'{"text": "x"}\n')
    from s3server import S3Bucket

    other = S3Bucket(s3server, s3.name + "-readable")
    key, secret = s3server.restricted_user(monkeypatch, [other.name])
    r = _cli(
        ["build", s3.url("in/a.jsonl"), "--out", str(tmp_path / "o")],
        subprocess_env(s3server.endpoint, key_id=key, secret=secret),
        tmp_path,
    )
    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"rwkv5-prep build: error: {s3.url('in/a.jsonl')}: permission denied"), (
        line
    )


def test_storage_option_on_the_command_line(s3, s3server, tmp_path):
    s3.put("in/a.jsonl", b'{"text": "hello"}\n{"text": "world"}\n')
    env = subprocess_env(s3server.endpoint)
    del env["AWS_ENDPOINT_URL"]  # only --storage-option says where the server is
    r = _cli(
        [
            "build",
            s3.url("in/a.jsonl"),
            "--out",
            str(tmp_path / "o"),
            "--storage-option",
            f"endpoint_url={s3server.endpoint}",
        ],
        env,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "o.manifest.json"))["totals"]["documents"] == 2
    r = _cli(
        [
            "build",
            s3.url("in/a.jsonl"),
            "--out",
            str(tmp_path / "o2"),
            "--storage-option",
            "novalue",
        ],
        env,
        tmp_path,
    )
    assert r.returncode == 2 and "--storage-option: expected KEY=VALUE, got 'novalue'" in r.stderr


def test_input_changed_during_the_build_is_an_error(s3, tmp_path, monkeypatch):
    url = s3.put("in/a.jsonl", b'{"text": "hello"}\n' * 100)
    from rwkv5.dataprep import tasks as tasks_mod

    real = tasks_mod._run_c_task_on_object

    def overwrite_then_run(task, *a, **kw):
        s3.put("in/a.jsonl", b'{"text": "HELLO"}\n' * 100)  # same size, another ETag
        return real(task, *a, **kw)

    monkeypatch.setattr(tasks_mod, "_run_c_task_on_object", overwrite_then_run)
    with pytest.raises(
        DataprepError, match=rf"^{url}: the input changed during the build \(its ETag changed\)"
    ):
        build([url], str(tmp_path / "o"), log=lambda s: None)


def test_a_task_reads_its_object_in_bounded_ranged_reads(s3, tmp_path, monkeypatch):
    """The C reader is fed block-size GETs (never the whole object in one) and gives the same
    output as from the local file."""
    data = b"".join(b'{"text": "line %d"}\n' % i for i in range(20000))  # ~360 kB
    url = s3.put("big.jsonl", data)
    (tmp_path / "big.jsonl").write_bytes(data)
    fs, _ = storage.filesystem(url)  # the cached instance the build uses
    gets = []
    real = fs.cat_file

    def spy(path, start=None, end=None, **kw):
        gets.append((start, end))
        return real(path, start=start, end=end, **kw)

    monkeypatch.setattr(fs, "cat_file", spy)
    monkeypatch.setattr(storage, "BLOCK_SIZE", 1 << 16)
    _build([url], tmp_path / "remote")
    _build([str(tmp_path / "big.jsonl")], tmp_path / "local")
    assert _outputs(tmp_path / "remote") == _outputs(tmp_path / "local")
    reads = [(a, b) for a, b in gets if a is not None and b - a > 1024]  # (not the codec sniff)
    assert len(reads) == -(-len(data) // (1 << 16)) and max(b - a for a, b in reads) == 1 << 16
    assert all(a is not None for a, b in gets)  # no whole-object GET


def _upload_set(s3, prefix, key_prefix):
    """The files of the local set `prefix` uploaded under key_prefix (as a build with --out URL
    leaves them); returns the set's URL."""
    d, base = os.path.split(str(prefix))
    for name in sorted(os.listdir(d)):
        if name.startswith((base + ".", base + "_")) and os.path.isfile(os.path.join(d, name)):
            s3.put_file(key_prefix + name[len(base) :], os.path.join(d, name))
    return s3.url(key_prefix)


def test_read_tools_on_a_set_at_a_url(s3, tmp_path):
    from rwkv5.dataprep import inspect_docs, open_shards, stats_table
    from rwkv5.dataprep.tools import merge_binidx, unpack

    src = tmp_path / "a.jsonl"
    src.write_bytes(b"".join(b'{"text": "doc %d", "lang": "en"}\n' % i for i in range(300)))
    build([str(src)], str(tmp_path / "bi"), log=lambda s: None, lang_field="lang")
    build([str(src)], str(tmp_path / "zs"), log=lambda s: None, format="zst", shard_size=400)
    bi = _upload_set(s3, tmp_path / "bi", "sets/bi")
    zs = _upload_set(s3, tmp_path / "zs", "sets/zs")
    lines = verify(bi)
    assert lines[-1] == verify(str(tmp_path / "bi"))[-1].replace(str(tmp_path / "bi"), bi)
    assert all(str(tmp_path) not in line for line in verify(zs))
    assert stats_table(bi) == stats_table(str(tmp_path / "bi")).replace(str(tmp_path / "bi"), bi)
    assert inspect_docs(bi, 5, 2) == inspect_docs(str(tmp_path / "bi"), 5, 2)
    with open_shards(zs) as remote_set, open_shards(str(tmp_path / "zs")) as local_set:
        assert len(remote_set) == 300 and all((a == b).all() for a, b in zip(remote_set, local_set))
        staged = remote_set._staged
    assert not os.path.exists(staged)  # the local copy goes with close()
    merge_binidx([bi, str(tmp_path / "bi")], str(tmp_path / "merged"))
    assert json.load(open(tmp_path / "merged.manifest.json"))["merged_from"][0] == bi
    unpack(zs, str(tmp_path / "unpacked"))
    assert _outputs(tmp_path / "unpacked") == _outputs(tmp_path / "bi")
    s3.put("sets/bi.bin", b"\0" * 10)  # damaged: one line naming the URL
    with pytest.raises(
        DataprepError, match=rf"^{s3.url('sets/bi.bin')}: 10 bytes, the manifest says"
    ):
        verify(bi)
    with pytest.raises(DataprepError, match=rf"^{s3.url('sets/none.manifest.json')}: no manifest"):
        verify(s3.url("sets/none"))
