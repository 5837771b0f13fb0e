"""rwkv5.dataprep writing to object storage (docs/dataprep.md, "Object storage"; docs/ray.md): a
set built to an s3:// prefix is byte-identical to a local build, nothing appears at the final
names before the set is complete, a build SIGKILLed mid-upload or cut off from the server resumes
from its work area on the store, refused permissions are one line, and Ray tasks on nodes that
share no folder exchange their parts through the store. The S3 server is moto's, on loopback,
started by these tests (tests/s3server.py)."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

from dataprep_helpers import gen_corpus, write_jsonl
from s3server import subprocess_env  # the fixtures s3 and s3server come from conftest.py
from rwkv5.dataprep import build, merge_binidx

OPTS = dict(on_error="skip", lang_field="lang", shuffle=True, seed=7, task_size=30_000, ctx_len=64)
ZST_OPTS = dict(OPTS, format="zst", shard_size=20_000, dedup="exact", epochs=2)
CLI_OPTS = [
    "--on-error",
    "skip",
    "--lang-field",
    "lang",
    "--shuffle",
    "--seed",
    "7",
    "--task-size",
    "30000",
    "--ctx-len",
    "64",
]


def quiet(**kw):
    return build(log=lambda s: None, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three JSONL files, two of them cut into several byte-range tasks (12+ tasks in all)."""
    d = tmp_path_factory.mktemp("corpus")
    for i, n in enumerate((400, 250, 30)):
        lines, _ = gen_corpus(100 + i, n)
        if i == 0:
            lines += lines[:20]
        write_jsonl(d / f"part{i}.jsonl", lines)
    return d


_REFS = {}


def local_outputs(prefix) -> dict:
    """{name: bytes} of the files of a local set; the manifest parsed, without its timing."""
    d, base = os.path.split(str(prefix))
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if name.startswith(base) and os.path.isfile(p):
            with open(p, "rb") as f:
                out[name] = f.read()
    return _comparable(out)


def store_outputs(bucket, key_prefix) -> dict:
    """The same for a set on the store; every object under the prefix's folder that starts with
    its name counts (a leftover work area or temporary key would show up here)."""
    folder, base = key_prefix.rsplit("/", 1)
    out = {}
    for key in bucket.keys(folder + "/"):
        name = key[len(folder) + 1 :]
        if name.startswith(base):
            out[name] = bucket.get(key)
    return _comparable(out)


def _comparable(files: dict) -> dict:
    for name in list(files):
        if name.endswith(".manifest.json"):
            m = json.loads(files[name])
            m.pop("timing", None)
            m.pop("storage", None)
            files[name] = m
    return files


def reference(corpus, tmp_path_factory, fmt):
    if fmt not in _REFS:
        d = tmp_path_factory.mktemp(f"local-{fmt}")
        quiet(
            inputs=[str(corpus)],
            out=str(d / "o"),
            workers=1,
            **{"binidx": OPTS, "zst": ZST_OPTS}[fmt],
        )
        ref = local_outputs(d / "o")
        assert ref["o.manifest.json"]["totals"]["tokens"] > 0 and len(ref) >= 3, sorted(ref)
        _REFS[fmt] = ref
    return _REFS[fmt]


def manifest_of(bucket, key_prefix) -> dict:
    return json.loads(bucket.get(key_prefix + ".manifest.json"))


# ----------------------------------------------------------------------------- --out s3://...


@pytest.mark.parametrize("fmt", ["binidx", "zst"])
def test_out_url_is_byte_identical_to_a_local_build(corpus, tmp_path_factory, s3, fmt):
    m = quiet(
        inputs=[str(corpus)],
        out=s3.url("out/o"),
        workers=2,
        **{"binidx": OPTS, "zst": ZST_OPTS}[fmt],
    )
    assert store_outputs(s3, "out/o") == reference(corpus, tmp_path_factory, fmt)
    assert m["storage"] == {"retries": 0} == manifest_of(s3, "out/o")["storage"]
    assert m["output"]["prefix"] == "o"
    # the set and nothing else: no work area, no temporary key left on the store
    assert all(
        re.fullmatch(r"out/o(_\d{5})?\.(bin|idx|zst|manifest\.json)", k) for k in s3.keys()
    ), s3.keys()


@pytest.mark.slow
def test_cli_out_url_and_rebuild_replaces_the_earlier_set(corpus, tmp_path_factory, s3):
    """Through the command line; a second build of the prefix with fewer shards removes the shards
    of the first that the new set does not have."""
    env = subprocess_env(s3.server.endpoint)
    cmd = [
        sys.executable,
        "-m",
        "rwkv5.dataprep",
        "build",
        str(corpus),
        "--out",
        s3.url("out/o"),
        "--workers",
        "1",
        *CLI_OPTS,
        "--format",
        "zst",
        "--shard-size",
        "5000",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"manifest {s3.url('out/o')}.manifest.json" in r.stdout
    many = [k for k in s3.keys() if k.endswith(".zst")]
    cmd = cmd[:-4] + [
        "--format",
        "zst",
        "--shard-size",
        "20000",
        "--dedup",
        "exact",
        "--epochs",
        "2",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ref = reference(corpus, tmp_path_factory, "zst")
    assert len(many) > sum(n.endswith(".zst") for n in ref)
    assert store_outputs(s3, "out/o") == ref


def test_work_area_on_the_store_is_kept_with_keep_work(corpus, tmp_path_factory, s3):
    m = quiet(inputs=[str(corpus)], out=s3.url("out/o"), workers=1, keep_work=True, **OPTS)
    work = s3.keys("out/o.work/")
    n = len([k for k in work if k.endswith(".done.json")])
    assert n >= 10 and m["totals"]["documents"] > 0
    for k in work:
        assert re.fullmatch(
            r"out/o\.work/(plan\.json|ended\.json|task-\d{6}\.(tok|meta|done\.json))", k
        ), k
    assert json.loads(s3.get("out/o.work/ended.json")) == {"status": "done"}
    # a rerun of the same build uses every record on the store and writes the same set
    log = []
    build(
        inputs=[str(corpus)], out=s3.url("out/o"), workers=1, progress=True, log=log.append, **OPTS
    )
    assert sum("(resumed)" in s for s in log) == n
    assert store_outputs(s3, "out/o") == reference(corpus, tmp_path_factory, "binidx")
    assert s3.keys("out/o.work/") == []


def test_local_work_dir_for_an_out_url(corpus, tmp_path, tmp_path_factory, s3):
    work = tmp_path / "w"
    quiet(
        inputs=[str(corpus)],
        out=s3.url("out/o"),
        workers=1,
        work_dir=str(work),
        keep_work=True,
        **ZST_OPTS,
    )
    assert store_outputs(s3, "out/o") == reference(corpus, tmp_path_factory, "zst")
    assert (work / "plan.json").exists() and any(n.endswith(".done.json") for n in os.listdir(work))
    assert s3.keys("out/o.work/") == []  # the work area is the local folder


def test_work_dir_url_for_a_local_out(corpus, tmp_path, tmp_path_factory, s3):
    quiet(
        inputs=[str(corpus)],
        out=str(tmp_path / "o"),
        workers=1,
        work_dir=s3.url("scratch/w"),
        keep_work=True,
        **OPTS,
    )
    assert local_outputs(tmp_path / "o") == reference(corpus, tmp_path_factory, "binidx")
    assert any(k.endswith(".done.json") for k in s3.keys("scratch/w/"))


def test_work_dir_checks(corpus, tmp_path, s3):
    from rwkv5.dataprep import DataprepError

    with pytest.raises(
        DataprepError, match=r"--work-dir .*: a local --out keeps its work area at PREFIX.work"
    ):
        quiet(inputs=[str(corpus)], out=str(tmp_path / "o"), work_dir=str(tmp_path / "w"), **OPTS)
    with pytest.raises(
        DataprepError, match=r"--out s3://.*/out/: is a folder or a bucket; give a file prefix"
    ):
        quiet(inputs=[str(corpus)], out=s3.url("out/"), **OPTS)
    with pytest.raises(DataprepError, match=r"Python records .* pass a local work_dir"):
        quiet(inputs=iter(["a text", "another"]), out=s3.url("out/r"))


def test_work_dir_holding_other_files_is_refused_and_left_alone(corpus, tmp_path, s3):
    """The work area is cleared and deleted after a build: --work-dir never takes a folder or a
    prefix of other files (a work area on s3://bucket/data would have deleted data/)."""
    from rwkv5.dataprep import DataprepError

    s3.put("data/keep.txt", b"mine")
    s3.put("data/sub/keep2.txt", b"mine too")
    with pytest.raises(
        DataprepError,
        match=rf"--work-dir s3://{s3.name}/data: holds objects that are not a "
        rf"build's work area \(keep.txt, sub\)",
    ):
        quiet(
            inputs=[str(corpus / "part2.jsonl")],
            out=s3.url("out/o"),
            work_dir=s3.url("data"),
            **OPTS,
        )
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("mine")
    with pytest.raises(
        DataprepError, match=r"--work-dir .*/w: holds files and is not a work area of a build"
    ):
        quiet(
            inputs=[str(corpus / "part2.jsonl")],
            out=s3.url("out/o"),
            work_dir=str(tmp_path / "w"),
            **OPTS,
        )
    assert s3.keys() == ["data/keep.txt", "data/sub/keep2.txt"]
    assert os.listdir(tmp_path / "w") == ["notes.txt"]


def test_merge_out_url(corpus, tmp_path, s3):
    a, b = tmp_path / "a", tmp_path / "b"
    quiet(inputs=[str(corpus / "part1.jsonl")], out=str(a), workers=1, **OPTS)
    quiet(inputs=[str(corpus / "part2.jsonl")], out=str(b), workers=1, **OPTS)
    merge_binidx([str(a), str(b)], str(tmp_path / "m"))
    m = merge_binidx([str(a), str(b)], s3.url("out/m"))
    assert (
        store_outputs(s3, "out/m") == local_outputs(tmp_path / "m") and m["totals"]["documents"] > 0
    )
    assert s3.keys() == ["out/m.bin", "out/m.idx", "out/m.manifest.json"]


# ----------------------------------------------------------------------------- faults


def test_permission_denied_is_one_line_at_once(corpus, tmp_path, s3, monkeypatch):
    """A user who may read the bucket but not write to it. (The work area is a local folder here:
    moto's server rejects the signature of a listing whose query holds a '/', which the work area
    on the store starts with, when it checks credentials; the first request is then the upload.)"""
    key, secret = s3.server.restricted_user(monkeypatch, [s3.name])
    env = subprocess_env(s3.server.endpoint, key_id=key, secret=secret)
    env["RWKV5_STORAGE_BACKOFF"] = "600"  # a retry would outlast the timeout: there must be none
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv5.dataprep",
            "build",
            str(corpus / "part2.jsonl"),
            "--out",
            s3.url("out/o"),
            "--work-dir",
            str(tmp_path / "w"),
            *CLI_OPTS,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert re.match(
        rf"rwkv5-prep build: error: s3://{s3.name}/out/o\.work/publish/o\.bin: permission denied",
        lines[0],
    ), lines
    assert s3.server.client(key, secret).list_objects_v2(Bucket=s3.name)["KeyCount"] == 0


def test_missing_bucket_is_one_line(corpus, s3):
    env = dict(subprocess_env(s3.server.endpoint), RWKV5_STORAGE_BACKOFF="600")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv5.dataprep",
            "build",
            str(corpus / "part2.jsonl"),
            "--out",
            "s3://no-such-bucket-here/out/o",
            *CLI_OPTS,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(
        r"rwkv5-prep build: error: s3://no-such-bucket-here/out/o\.work\S*: not found", lines[0]
    ), r.stderr


# SIGKILL in the middle of the multipart upload of the first shard: the child process patches
# s3fs so that its third upload_part request under the publish/ keys kills it
_KILL_MID_UPLOAD = """
import os, signal, sys
import s3fs.core
orig = s3fs.core.S3FileSystem._call_s3
parts = []
async def call_s3(self, method, *a, **kw):
    if method == "upload_part" and "/publish/" in kw.get("Key", ""):
        parts.append(kw["Key"])
        if len(parts) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    return await orig(self, method, *a, **kw)
s3fs.core.S3FileSystem._call_s3 = call_s3
from rwkv5.dataprep.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_mid_upload_then_rerun_resumes(corpus, tmp_path_factory, s3, monkeypatch):
    import moto.s3.models

    monkeypatch.setattr(
        moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1024
    )  # small parts for a small set
    env = subprocess_env(s3.server.endpoint)
    env["RWKV5_STORAGE_PART_SIZE"] = str(16 << 10)  # multipart above 32 KiB: every shard here
    args = [
        "build",
        str(corpus),
        "--out",
        s3.url("out/o"),
        "--workers",
        "1",
        "--progress",
        *CLI_OPTS,
    ]
    r = subprocess.run(
        [sys.executable, "-c", _KILL_MID_UPLOAD, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == -9, r.stderr
    # nothing at the final names; every task's parts and record in the work area on the store
    keys = s3.keys()
    assert not [k for k in keys if not k.startswith("out/o.work/")], keys
    done = [k for k in keys if k.endswith(".done.json")]
    assert len(done) >= 10
    assert s3.client.list_multipart_uploads(Bucket=s3.name).get("Uploads"), "not killed mid-upload"

    r = subprocess.run(
        [sys.executable, "-m", "rwkv5.dataprep", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert len(re.findall(r"\(resumed\)", r.stderr)) == len(done)
    assert store_outputs(s3, "out/o") == reference(corpus, tmp_path_factory, "binidx")
    assert json.loads(s3.get("out/o.manifest.json"))["storage"]["retries"] == 0


def _stop_server_at(monkeypatch, server, task_id, down_seconds):
    """Stop the S3 server when the build first uploads a part of task `task_id`; start it again
    after down_seconds (None: leave it stopped). Returns the list the restart thread appends to."""
    from rwkv5.dataprep import remote

    orig, state = remote.upload, []

    def upload(local, url, storage_options=None):
        if not state and url.endswith(f"task-{task_id:06d}.tok"):
            server.stop()
            state.append("stopped")
            if down_seconds is not None:
                threading.Timer(
                    down_seconds, lambda: (server.start(), state.append("started"))
                ).start()
        return orig(local, url, storage_options)

    monkeypatch.setattr(remote, "upload", upload)
    return state


def test_server_down_briefly_is_retried_and_counted(corpus, tmp_path_factory, s3, monkeypatch):
    monkeypatch.setenv(
        "RWKV5_STORAGE_BACKOFF", "0.2"
    )  # 0.2, 0.4, 0.8, 1.6 ... s: back within 8 tries
    state = _stop_server_at(monkeypatch, s3.server, 3, 1.0)
    m = quiet(inputs=[str(corpus)], out=s3.url("out/o"), workers=1, **OPTS)
    assert state == ["stopped", "started"]
    assert m["storage"]["retries"] >= 1
    assert manifest_of(s3, "out/o")["storage"] == m["storage"]
    assert store_outputs(s3, "out/o") == reference(corpus, tmp_path_factory, "binidx")


@pytest.mark.slow
def test_server_down_too_long_fails_then_rerun_resumes(corpus, tmp_path_factory, s3, monkeypatch):
    monkeypatch.setenv("RWKV5_STORAGE_BACKOFF", "0.05")
    monkeypatch.setenv("RWKV5_STORAGE_RETRIES", "3")
    state = _stop_server_at(monkeypatch, s3.server, 4, None)
    with pytest.raises(
        OSError,
        match=rf"s3://{s3.name}/out/o\.work/task-000004\.tok: upload failed after 3 "
        rf"attempts: .*(Connect|connect)",
    ):
        quiet(inputs=[str(corpus)], out=s3.url("out/o"), workers=1, **OPTS)
    assert state == ["stopped"]
    s3.server.start()
    assert not [k for k in s3.keys() if not k.startswith("out/o.work/")]
    done = sorted(int(k[-16:-10]) for k in s3.keys("out/o.work/") if k.endswith(".done.json"))
    assert done == [0, 1, 2, 3]
    log = []
    build(
        inputs=[str(corpus)], out=s3.url("out/o"), workers=1, progress=True, log=log.append, **OPTS
    )
    assert (
        sorted(int(re.search(r"task (\d+) ", s).group(1)) for s in log if "(resumed)" in s) == done
    )
    assert store_outputs(s3, "out/o") == reference(corpus, tmp_path_factory, "binidx")


# ----------------------------------------------------------------------------- Ray, no shared folder


@pytest.mark.slow
def test_ray_two_nodes_with_private_folders_and_the_work_area_on_s3(
    corpus, tmp_path, tmp_path_factory, s3
):
    """Acceptance of issue 16: `build s3://.../in/ --out s3://.../out/train --engine ray` on a two-node
    cluster whose nodes each get a private local folder (their TMPDIR; the driver has a third)
    writes the bytes of a local build. The tasks find nothing of each other's or the driver's on
    disk: each uploads its parts and record to the work area on S3, the driver pulls them."""
    ray = pytest.importorskip("ray", reason="the Ray tests need Ray: pip install 'rwkv5[ray]'")
    from ray.cluster_utils import Cluster
    from test_dataprep_ray import _retry_ray_start

    for name in sorted(os.listdir(corpus)):
        s3.put_file(f"in/{name}", corpus / name)
    ref = reference(corpus, tmp_path_factory, "zst")
    short = tempfile.mkdtemp(prefix="rwkv5-s3ray-")  # Ray's socket paths must be short
    private = {n: os.path.join(short, n) for n in ("head", "node", "driver")}
    for d in private.values():
        os.mkdir(d)
    made = []

    def start():
        made.append(
            Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 1,
                    "object_store_memory": 80 << 20,
                    "include_dashboard": False,
                    "env_vars": {"TMPDIR": private["head"]},
                    "temp_dir": os.path.join(short, "ray"),
                },
            )
        )
        return made[-1], made[-1].add_node(
            num_cpus=1, object_store_memory=80 << 20, env_vars={"TMPDIR": private["node"]}
        )

    cluster, _node = _retry_ray_start(start, lambda: made and made[-1].shutdown())
    try:
        env = dict(subprocess_env(s3.server.endpoint), TMPDIR=private["driver"])
        cmd = [
            sys.executable,
            "-m",
            "rwkv5.dataprep",
            "build",
            s3.url("in/"),
            "--out",
            s3.url("out/o"),
            "--engine",
            "ray",
            "--ray-address",
            cluster.address,
            "--keep-work",
            *CLI_OPTS,
            "--format",
            "zst",
            "--shard-size",
            "20000",
            "--dedup",
            "exact",
            "--epochs",
            "2",
        ]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        got = {k: v for k, v in store_outputs(s3, "out/o").items() if not k.startswith("o.work/")}
        # the manifest names the inputs where they were read: their URLs (with an ETag), not paths
        m = got["o.manifest.json"]
        assert [i.pop("etag") and i["path"] for i in m["inputs"]] == [
            s3.url(f"in/{n}") for n in sorted(os.listdir(corpus))
        ]
        got["o.manifest.json"] = json.loads(json.dumps(m).replace(s3.url("in/"), str(corpus) + "/"))
        assert got == ref
        done = [k for k in s3.keys("out/o.work/") if k.endswith(".done.json")]
        assert len(done) >= 10
        # every private folder is left as it was found: empty
        assert {n: os.listdir(d) for n, d in private.items()} == {n: [] for n in private}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(short, ignore_errors=True)
