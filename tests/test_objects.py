"""Object backends: file and mem directly; S3 against a moto server on loopback (blocks go
over signed HTTP, which the in-process mock cannot intercept) and moto's in-process mock for the
bucket checks that go through boto3."""

from __future__ import annotations

import uuid

import pytest
from moto import mock_aws

from cachefs.errors import ConfigError, ObjectError, ObjectNotFound, ObjectUnavailable
from cachefs.metrics import Metrics
from cachefs.objects.base import ObjectStore, Transient
from cachefs.objects.file import FileStore
from cachefs.objects.mem import MemStore
from cachefs.objects.s3 import S3Store

from .servers import S3Server, free_port


def exercise(store: ObjectStore) -> None:
    store.put("v/chunks/0/0/1_0_3", b"abc")
    store.put("v/chunks/0/0/2_0_1", b"z")
    assert store.get("v/chunks/0/0/1_0_3") == b"abc"
    assert sorted(k for k, _ in store.list("v/")) == ["v/chunks/0/0/1_0_3", "v/chunks/0/0/2_0_1"]
    store.delete("v/chunks/0/0/1_0_3")
    store.delete("v/chunks/0/0/1_0_3")  # missing is fine
    with pytest.raises(ObjectNotFound):
        store.get("v/chunks/0/0/1_0_3")
    assert store.metrics.value("cachefs_object_requests_total", op="put") == 2


def test_file_store(tmp_path):
    store = FileStore(str(tmp_path / "objs"), Metrics())
    store.create()
    store.check()
    exercise(store)


def test_mem_store():
    exercise(MemStore(Metrics()))


def test_s3_store(s3_server):
    store = S3Store(s3_server.bucket_url(f"bkt-{uuid.uuid4().hex[:8]}"), access_key="k", secret_key="s",
                    metrics=Metrics())
    store.create()
    store.check()
    exercise(store)
    store.put("odd name/é+%20 ~x", b"1")  # quoted the way the signature expects
    assert store.get("odd name/é+%20 ~x") == b"1"


def test_s3_blocks_need_no_boto3_client(s3_server, tmp_path, monkeypatch):
    """A DataLoader worker's store reads and writes blocks without building boto3 clients (their
    making costs ~130 ms of CPU per process), with keys given or from the default chain; a
    bucket call makes them."""
    bucket = s3_server.bucket_url(f"bkt-{uuid.uuid4().hex[:8]}")
    S3Store(bucket, access_key="k", secret_key="s", metrics=Metrics()).create()
    profile = tmp_path / "credentials"
    profile.write_text("[default]\naws_access_key_id = k\naws_secret_access_key = s\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(profile))
    chained = S3Store(bucket, metrics=Metrics())
    chained.put("v/chunks/0/0/2_0_1", b"z")
    assert chained.get("v/chunks/0/0/2_0_1") == b"z"
    assert chained._boto is None
    store = S3Store(bucket, access_key="k", secret_key="s", metrics=Metrics())
    store.put("v/chunks/0/0/1_0_3", b"abc")
    assert store.get("v/chunks/0/0/1_0_3") == b"abc"
    assert store._boto is None
    store.check()
    assert store._boto is not None
    with pytest.raises(ConfigError, match="bad S3 endpoint"):
        S3Store("s3://b", endpoint="ftp://host", access_key="k", secret_key="s", metrics=Metrics())


def test_s3_errors_over_http(s3_server):
    missing = S3Store(s3_server.bucket_url("no-such-bucket"), access_key="k", secret_key="s",
                      metrics=Metrics())
    with pytest.raises(ObjectError, match="does not exist"):
        missing.put("k", b"1")
    assert missing.metrics.value("cachefs_object_errors_total", op="put") == 1
    down = S3Store(f"http://127.0.0.1:{free_port()}/bkt", access_key="k", secret_key="s", metrics=Metrics())
    down.max_attempts, down.base_delay = 2, 0.001
    with pytest.raises(ObjectUnavailable, match="after 2 attempts"):
        down.get("k")


@mock_aws
def test_s3_missing_bucket():
    store = S3Store("s3://nope", metrics=Metrics())
    with pytest.raises(ObjectError, match="does not exist"):
        store.check()
    store.create()
    store.check()


class Flaky(MemStore):
    def __init__(self, failures: int) -> None:
        super().__init__(Metrics())
        self.failures = failures
        self.base_delay = 0.001

    def _put(self, key, data):
        if self.failures:
            self.failures -= 1
            raise Transient("503")
        super()._put(key, data)


def test_transient_failures_retry_then_give_up():
    store = Flaky(3)
    store.put("k", b"1")
    assert store.get("k") == b"1"
    assert store.metrics.value("cachefs_object_errors_total", op="put") == 3
    store = Flaky(100)
    store.retry_timeout = 0.2  # an outage longer than the retry timeout fails the request
    with pytest.raises(ObjectError, match="failed after .* attempts in 0 s"):
        store.put("k", b"1")


def test_s3_signatures_checked_by_the_server(monkeypatch):
    """Against a moto server that verifies signatures: the keys given to the store (not the
    environment's) sign the block requests, and a wrong secret is refused, not retried."""
    import boto3

    server = S3Server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})  # the IAM setup below is free
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="u")
        iam.put_user_policy(UserName="u", PolicyName="all", PolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'))
        key = iam.create_access_key(UserName="u")["AccessKey"]
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        good = S3Store(server.bucket_url("signed"), access_key=key["AccessKeyId"],
                       secret_key=key["SecretAccessKey"], metrics=Metrics())
        good.create()
        good.put("v/chunks/0/0/1_0_3", b"abc")
        assert good.get("v/chunks/0/0/1_0_3") == b"abc"
        good.delete("v/chunks/0/0/1_0_3")
        bad = S3Store(server.bucket_url("signed"), access_key=key["AccessKeyId"], secret_key="wrong", metrics=Metrics())
        with pytest.raises(ObjectError, match="refused the credentials"):
            bad.put("v/chunks/0/0/2_0_1", b"z")
        assert bad.metrics.value("cachefs_object_requests_total", op="put") == 1  # not retried
    finally:
        server.stop()


def test_block_path_honours_proxy_settings(monkeypatch):
    from cachefs.objects.s3_http import proxy_for

    for var in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert proxy_for("https://s3.example.com") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    monkeypatch.setenv("NO_PROXY", "minio.internal")
    assert proxy_for("https://s3.example.com") == "http://proxy.local:3128"
    assert proxy_for("https://minio.internal:9000") is None
    assert proxy_for("http://s3.example.com") is None  # no HTTP_PROXY
