"""Object backends: file and mem directly, S3 against moto's in-process mock."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from cachefs.errors import ObjectError, ObjectNotFound
from cachefs.objects.base import ObjectStore, Transient
from cachefs.objects.file import FileStore
from cachefs.objects.mem import MemStore
from cachefs.objects.s3 import S3Store


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
    store = FileStore(str(tmp_path / "objs"))
    store.create()
    store.check()
    exercise(store)


def test_mem_store():
    exercise(MemStore())


@mock_aws
def test_s3_store():
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bkt")
    store = S3Store("s3://bkt")
    store.check()
    exercise(store)


@mock_aws
def test_s3_missing_bucket():
    store = S3Store("s3://nope")
    with pytest.raises(ObjectError, match="does not exist"):
        store.check()
    store.create()
    store.check()


class Flaky(MemStore):
    def __init__(self, failures: int) -> None:
        super().__init__()
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
    with pytest.raises(ObjectError, match="after 6 attempts"):
        store.put("k", b"1")
