"""rwkv5/storage.py: URLs, storage options, streamed ranged reading, listing, retries and the one-line
errors, against the loopback S3 server of tests/s3server.py."""

import os
import subprocess
import sys
import threading

import pytest

from rwkv5 import storage


def test_is_url():
    assert (
        storage.is_url("s3://bucket/key")
        and storage.is_url("hf://datasets/x")
        and storage.is_url("https://h/x")
    )
    assert not storage.is_url("corpus/a.jsonl") and not storage.is_url("/abs/a.jsonl")
    assert (
        not storage.is_url("file:///abs/a.jsonl")
        and not storage.is_url("c:\\x")
        and not storage.is_url(None)
    )
    assert storage.local_path("file:///abs/a") == "/abs/a"


def test_parse_storage_options():
    got = storage.parse_storage_options(
        [
            "anon=true",
            "retries=3",
            "x=0.5",
            "endpoint_url=http://h:1/",
            "client_kwargs.region_name=eu-west-1",
            "v=none",
        ]
    )
    assert got == {
        "anon": True,
        "retries": 3,
        "x": 0.5,
        "endpoint_url": "http://h:1/",
        "client_kwargs": {"region_name": "eu-west-1"},
        "v": None,
    }
    for bad in ("novalue", "=x"):
        with pytest.raises(ValueError, match="--storage-option: expected KEY=VALUE"):
            storage.parse_storage_options([bad])


def test_unknown_protocol_and_missing_package_are_one_line():
    with pytest.raises(
        storage.StorageError, match=r"^nosuchproto://x/y: unknown protocol nosuchproto://"
    ) as e:
        storage.filesystem("nosuchproto://x/y")
    assert "\n" not in str(e.value)


def test_missing_protocol_package_names_the_extra(monkeypatch):
    import fsspec  # noqa: F401

    registry = sys.modules["fsspec.registry"]  # (fsspec.registry is also the name of a mapping)
    # a protocol whose implementation cannot be imported, as gs:// is without gcsfs
    monkeypatch.setitem(
        registry.known_implementations,
        "gs",
        {"class": "no_such_module_x.GCSFileSystem", "err": "Please install gcsfs"},
    )
    monkeypatch.delitem(registry._registry, "gs", raising=False)
    with pytest.raises(storage.StorageError, match=r"^gs://b/k: .*pip install 'rwkv5\[gcs\]'") as e:
        storage.filesystem("gs://b/k")
    assert "\n" not in str(e.value)


def test_transient_classification():
    assert storage.is_transient(ConnectionResetError())
    assert storage.is_transient(OSError("An error occurred (SlowDown) when calling GetObject"))
    assert storage.is_transient(OSError("503 Service Unavailable"))
    assert not storage.is_transient(FileNotFoundError("x"))
    assert not storage.is_transient(PermissionError("Access Denied"))
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError as inner:
            raise OSError("wrapped") from inner
    except OSError as e:
        assert storage.is_transient(e)


def test_retry_counts_and_gives_up(monkeypatch):
    monkeypatch.setenv("RWKV5_STORAGE_BACKOFF", "0")
    monkeypatch.setenv("RWKV5_STORAGE_RETRIES", "3")
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(104, "reset")
        return "ok"

    before = storage.retry_counts()["retries"]
    counter = {}
    assert storage.retry(flaky, url="s3://b/k", counter=counter) == "ok"
    assert storage.retry_counts()["retries"] - before == 2 and counter == {"retries": 2}

    def always():
        raise ConnectionResetError(104, "reset")

    with pytest.raises(
        storage.StorageError, match=r"^s3://b/k: read failed after 3 attempts: ConnectionResetError"
    ):
        storage.retry(always, url="s3://b/k")

    def missing():
        raise FileNotFoundError("NoSuchKey")

    n = storage.retry_counts()["retries"]
    with pytest.raises(FileNotFoundError, match=r"^s3://b/k: not found"):
        storage.retry(missing, url="s3://b/k")
    assert storage.retry_counts()["retries"] == n  # not retried


def test_range_reader_round_trip(s3):
    data = os.urandom(100_003)
    url = s3.put("dir/blob.bin", data)
    with storage.open_read(url, block_size=4096, read_ahead=2) as f:
        got = bytearray()
        while True:
            chunk = f.read(3000)
            if not chunk:
                break
            got += chunk
    assert bytes(got) == data
    with storage.open_read(url, start=5000, end=23456, block_size=4096) as f:
        assert f.read() == data[5000:23456]
        assert f.tell() == 23456
    with storage.open_read(url, block_size=4096) as f:  # seeks (as pyarrow does)
        f.seek(-8, os.SEEK_END)
        assert f.read(8) == data[-8:]
        f.seek(12345)
        assert f.read(10000) == data[12345:22345]
        f.seek(100)
        assert f.read(5) == data[100:105]
    assert storage.size(url) == len(data)
    fp = storage.fingerprint(url)
    assert fp["url"] == url and fp["bytes"] == len(data) and fp["etag"] and fp["mtime"]


def test_glob_find_exists(s3):
    for k in (
        "c/en/1.parquet",
        "c/en/2.parquet",
        "c/fr/1.parquet",
        "c/fr/notes.txt",
        "other/x.parquet",
    ):
        s3.put(k, b"x")
    assert storage.glob(s3.url("c/*/*.parquet")) == [
        s3.url(k) for k in ("c/en/1.parquet", "c/en/2.parquet", "c/fr/1.parquet")
    ]
    assert storage.find(s3.url("c/fr")) == [s3.url("c/fr/1.parquet"), s3.url("c/fr/notes.txt")]
    assert storage.exists(s3.url("c/en/1.parquet")) and not storage.exists(s3.url("c/en/3.parquet"))
    assert storage.isdir(s3.url("c/en")) and not storage.isdir(s3.url("c/en/1.parquet"))


def test_missing_key_and_bucket_fail_at_once(s3, monkeypatch):
    monkeypatch.setenv(
        "RWKV5_STORAGE_BACKOFF", "5"
    )  # a retry would make this test slow: there is none
    n = storage.retry_counts()["retries"]
    with pytest.raises(FileNotFoundError, match=rf"^{s3.url('nokey.jsonl')}: not found") as e:
        storage.open_read(s3.url("nokey.jsonl"))
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"^s3://no-such-bucket-x/k: not found"):
        storage.cat("s3://no-such-bucket-x/k")
    assert storage.retry_counts()["retries"] == n


def test_bucket_without_permission(s3, s3server, monkeypatch):
    s3.put("a.jsonl", b'{"text": "x"}\n')
    readable = storage.parse_storage_options([])  # noqa: F841 (documents the default: none)
    from s3server import S3Bucket

    other = S3Bucket(s3server, s3.name + "-open")
    other.put("a.jsonl", b'{"text": "y"}\n')
    key, secret = s3server.restricted_user(monkeypatch, [other.name])
    opts = {"key": key, "secret": secret}
    assert storage.cat(other.url("a.jsonl"), storage_options=opts) == b'{"text": "y"}\n'
    with pytest.raises(PermissionError, match=rf"^{s3.url('a.jsonl')}: permission denied") as e:
        storage.cat(s3.url("a.jsonl"), storage_options=opts)
    assert "\n" not in str(e.value)


def test_transient_failure_retried_across_a_server_restart(s3, s3server, monkeypatch):
    monkeypatch.setenv("RWKV5_STORAGE_BACKOFF", "0.2")
    monkeypatch.setenv("RWKV5_STORAGE_RETRIES", "10")
    data = os.urandom(50_000)
    url = s3.put("r.bin", data)
    before = storage.retry_counts()["retries"]
    s3server.stop()
    timer = threading.Timer(4.0, s3server.start)  # after the first attempt failed
    timer.start()
    try:
        assert storage.cat(url) == data
    finally:
        timer.join()
    assert storage.retry_counts()["retries"] > before


def test_local_paths_never_import_fsspec(tmp_path):
    """A local build, and the storage helpers on local paths, leave fsspec unimported."""
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "hello"}\n{"text": "world"}\n')
    code = (
        "import sys\nfrom rwkv5 import storage, dataprep\n"
        "assert not storage.is_url(sys.argv[1])\n"
        "dataprep.build([sys.argv[1]], sys.argv[2], workers=1)\n"
        "from rwkv5.dataprep import tools\ntools.verify(sys.argv[2])\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fsspec', 's3fs', 'botocore', 'aiohttp')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(src), str(tmp_path / "out")], check=True, timeout=300
    )


def test_load_a_checkpoint_from_a_url(s3, tiny_model_path):
    import numpy as np

    import rwkv5

    url = s3.put_file("models/tiny.safetensors", tiny_model_path)
    remote, local = rwkv5.load(url), rwkv5.load(str(tiny_model_path))
    tokens = [1, 2, 3, 10, 20]
    assert np.array_equal(remote.forward(tokens)[0], local.forward(tokens)[0])
    with pytest.raises(FileNotFoundError, match=rf"^{s3.url('models/none.pth')}: not found"):
        rwkv5.load(s3.url("models/none.pth"))


def test_local_copy_of_a_prefix_keeps_relative_names(s3):
    s3.put("m/a.bin", b"a")
    s3.put("m/sub/b.bin", b"bb")
    with storage.local_copy(s3.url("m/")) as d:
        got = {
            os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(d)
            for f in fs
        }
    assert got == {"a.bin": b"a", os.path.join("sub", "b.bin"): b"bb"} and not os.path.exists(d)
