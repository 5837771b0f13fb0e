"""A real S3 API server on loopback for the object-storage tests: moto's standalone server
(``moto[server]``), run in this process on 127.0.0.1 and a free port.

Why moto and not MinIO: moto installs from PyPI with the test extra (no binary download), starts
in a fraction of a second, and keeps its objects in this process, so the server can be stopped
and started again on the same port mid-test (``S3Server.restart`` / ``stop`` + ``start``) with
the bucket contents intact, which the retry and resume tests need.

Fixtures (conftest.py imports them):

* ``s3server``: one server for the session.
* ``s3``: a fresh bucket per test, with the environment of botocore set for the test
  (AWS_ENDPOINT_URL to the server, fake credentials, a region, no proxies, no metadata service)
  and fsspec's cache of S3 filesystems cleared; an ``S3Bucket`` with ``url(key)``, ``put``,
  ``get``, ``keys`` and ``server``.

Nothing here reaches an address other than 127.0.0.1: the endpoint is always the loopback server,
the instance-metadata lookup is disabled and no shared config or credentials file is read.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket

import pytest

HOST = "127.0.0.1"
REGION = "us-east-1"
FAKE_KEY_ID, FAKE_SECRET = "testing", "testing"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
_AWS_VARS_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL_S3",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def s3_env(endpoint: str, key_id: str = FAKE_KEY_ID, secret: str = FAKE_SECRET) -> dict:
    """The environment that points botocore (boto3, s3fs) at ``endpoint`` only: set these, and
    remove _PROXY_VARS and _AWS_VARS_CLEARED."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def apply_env(monkeypatch, endpoint: str, **kw) -> None:
    for k in _PROXY_VARS + _AWS_VARS_CLEARED:
        monkeypatch.delenv(k, raising=False)
    for k, v in s3_env(endpoint, **kw).items():
        monkeypatch.setenv(k, v)
    clear_fs_cache()


def subprocess_env(endpoint: str, base: dict = None, **kw) -> dict:
    """os.environ (or ``base``) with the S3 test environment, for a child process."""
    env = dict(os.environ if base is None else base)
    for k in _PROXY_VARS + _AWS_VARS_CLEARED:
        env.pop(k, None)
    env.update(s3_env(endpoint, **kw))
    return env


def clear_fs_cache() -> None:
    """Forget fsspec's cached S3 filesystems (each holds the endpoint and credentials it was made
    with)."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


class S3Server:
    """moto's S3 server on 127.0.0.1:port. ``stop`` closes the listening socket (clients then get
    connection refused); ``start`` opens it again on the same port; the objects persist."""

    def __init__(self, port: int = None):
        moto_server = pytest.importorskip(
            "moto.server", reason="the S3 tests need moto[server] (the test extra)"
        )
        self._cls = moto_server.ThreadedMotoServer
        self.port = port or _free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self._server = None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

    def start(self) -> "S3Server":
        if self._server is None:
            self._server = self._cls(ip_address=HOST, port=self.port, verbose=False)
            self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            inner = getattr(self._server, "_server", None)  # werkzeug's server
            self._server.stop()
            if inner is not None:
                inner.server_close()  # stop() leaves the socket listening: connections would hang
            self._server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def client(self, key_id: str = FAKE_KEY_ID, secret: str = FAKE_SECRET, service: str = "s3"):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )

    def restricted_user(self, monkeypatch, readable_buckets) -> tuple:
        """(key id, secret) of an IAM user that may only list and read ``readable_buckets``, and
        access checks switched on for the rest of the test (moto checks IAM policies once its
        INITIAL_NO_AUTH_ACTION_COUNT is used up: every request then needs a known key)."""
        import json
        import moto.settings

        iam = self.client(service="iam")
        name = f"reader{next(_bucket_ids)}"
        iam.create_user(UserName=name)
        arns = [a for b in readable_buckets for a in (f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*")]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"],
                    "Resource": arns,
                }
            ],
        }
        iam.put_user_policy(UserName=name, PolicyName="read", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        return key["AccessKeyId"], key["SecretAccessKey"]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class S3Bucket:
    """One bucket of the test server."""

    def __init__(self, server: S3Server, name: str):
        self.server, self.name = server, name
        self.client = server.client()
        self.client.create_bucket(Bucket=name)

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)
        return self.url(key)

    def put_file(self, key: str, path) -> str:
        with open(path, "rb") as f:
            return self.put(key, f.read())

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def keys(self, prefix: str = "") -> list:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", ()))


_bucket_ids = itertools.count()


@pytest.fixture(scope="session")
def s3server():
    pytest.importorskip("s3fs", reason="the S3 tests need s3fs (the test extra)")
    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3server, monkeypatch):
    """A fresh bucket on the session's server, with the S3 environment set for this test."""
    if not s3server.running:  # a test that stopped it without starting it again
        s3server.start()
    apply_env(monkeypatch, s3server.endpoint)
    bucket = S3Bucket(s3server, f"test-{os.getpid()}-{next(_bucket_ids)}")
    yield bucket
    clear_fs_cache()
