"""Bad input and faults: one clear line, a non-zero exit, nothing lost, nothing hangs."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import boto3
import pytest

from .conftest import is_mounted, run_cli
from .servers import S3Server, free_port

pytestmark = pytest.mark.mount


def fails(*args: str, match: str, timeout: float = 30, env: dict | None = None) -> float:
    """Run a command that must fail with one line naming the problem; returns its duration."""
    start = time.time()
    res = run_cli(*args, check=False, timeout=timeout, env=env)
    took = time.time() - start
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    return took


def test_unknown_url_scheme(tmp_path):
    fails("format", "mysql://h/db", "v", match="unknown metadata URL scheme")
    fails("status", "nonsense", match="bad metadata URL")
    fails("mount", "ftp://x", str(tmp_path), match="unknown metadata URL scheme")


def test_bad_arguments():
    res = run_cli("format", check=False)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    fails("format", "sqlite3:///tmp/x.db", "bad name!", match="bad volume name")
    fails("format", "sqlite3:///tmp/x.db", "v", "--block-size", "3X", match="bad size")
    fails("format", "sqlite3:///tmp/x.db", "v", "--block-size", "32M", match="between 64K and 16M")
    fails("format", "sqlite3:///nonexistent-dir/x.db", "v", match="does not exist")
    fails("format", "sqlite3:///tmp/x.db", "v", "--storage", "s3", match="needs --bucket")


def test_redis_unreachable_fails_fast(tmp_path):
    port = free_port()
    took = fails("format", f"redis://127.0.0.1:{port}/1", "v", "--bucket", str(tmp_path), match="cannot reach Redis")
    assert took < 10
    os.mkdir(tmp_path / "m")
    took = fails("mount", f"redis://127.0.0.1:{port}/1", str(tmp_path / "m"), "--background",
                 "--log", str(tmp_path / "log"), match="cannot reach Redis")
    assert took < 10
    # a server that accepts connections but never answers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(10)
        took = fails("status", f"redis://127.0.0.1:{s.getsockname()[1]}/1", match="cannot reach Redis")
    assert took < 15


def test_redis_that_evicts_is_refused(tmp_path):
    from .servers import RedisServer

    server = RedisServer(extra=["--maxmemory-policy", "allkeys-lru"])
    try:
        fails("format", server.url(1), "v", "--bucket", str(tmp_path), match="maxmemory-policy allkeys-lru")
    finally:
        server.stop()


def test_s3_unreachable_and_missing_bucket(tmp_path, volumes, s3_server):
    port = free_port()
    took = fails("format", f"sqlite3://{tmp_path}/a.db", "v", "--storage", "s3", "--bucket",
                 f"http://127.0.0.1:{port}/b", match="cannot reach S3")
    assert took < 10
    url = volumes.create("sqlite", "s3")
    bucket = json.loads(run_cli("status", url).stdout)["setting"]["bucket"].rsplit("/", 1)[1]
    s3 = boto3.resource("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    s3.Bucket(bucket).objects.all().delete()
    s3.Bucket(bucket).delete()
    os.mkdir(tmp_path / "m")
    fails("mount", url, str(tmp_path / "m"), "--background", "--log", str(tmp_path / "log"),
          match="does not exist")
    assert not is_mounted(str(tmp_path / "m"))


def test_s3_stalled_server_fails_fast(tmp_path, volumes):
    server = S3Server()
    try:
        server.pause()
        took = fails("format", f"sqlite3://{tmp_path}/a.db", "v", "--storage", "s3", "--bucket",
                     server.bucket_url("b"), match="cannot reach S3")
        assert took < 20
    finally:
        server.resume()
        server.stop()


def test_wrong_s3_credentials(tmp_path):
    # moto checks credentials after the first three requests: the IAM calls that make a user
    server = S3Server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1")
        iam.create_user(UserName="u")
        key = iam.create_access_key(UserName="u")["AccessKey"]
        iam.put_user_policy(UserName="u", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        bucket = server.bucket_url("creds")
        fails("format", f"sqlite3://{tmp_path}/a.db", "v", "--storage", "s3", "--bucket", bucket,
              "--access-key", "AKIAWRONGWRONGWRONG0", "--secret-key", "nope", match="refused the credentials")
        run_cli("format", f"sqlite3://{tmp_path}/b.db", "v", "--storage", "s3", "--bucket", bucket,
                "--access-key", key["AccessKeyId"], "--secret-key", key["SecretAccessKey"])
        status = run_cli("status", f"sqlite3://{tmp_path}/b.db").stdout
        assert key["SecretAccessKey"] not in status and '"removed"' in status
    finally:
        server.stop()


def test_unformatted_and_formatted_twice(tmp_path):
    url = f"sqlite3://{tmp_path}/m.db"
    os.mkdir(tmp_path / "m")
    fails("mount", url, str(tmp_path / "m"), match="not formatted")
    run_cli("format", url, "v", "--bucket", str(tmp_path / "o"))
    fails("format", url, "w", "--bucket", str(tmp_path / "o"), match="already formatted")
    run_cli("format", url, "w", "--bucket", str(tmp_path / "o"), "--force")
    assert json.loads(run_cli("status", url).stdout)["setting"]["name"] == "w"


def test_bad_mountpoints(tmp_path, volumes, mounts):
    url = volumes.create("sqlite", "file")
    fails("mount", url, str(tmp_path / "missing"), match="does not exist")
    open(tmp_path / "file", "w").close()
    fails("mount", url, str(tmp_path / "file"), match="not a directory")
    mp = mounts.mount(url)
    fails("mount", url, mp, "--background", match="already mounted")
    fails("umount", str(tmp_path), match="not mounted")


def test_killed_mount_is_cleaned_by_umount_and_volume_intact(volumes, mounts):
    url = volumes.create("sqlite", "file")
    mp = mounts.mount(url)
    data = os.urandom(3 << 20)
    with open(os.path.join(mp, "f"), "wb") as f:
        f.write(data)
    os.kill(mounts.pid(mp), signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(OSError):
        os.listdir(mp)
    fails("mount", url, mp, "--background", match="dead mount")
    run_cli("umount", mp)
    assert not is_mounted(mp)
    mounts.active.remove(mp)
    mp = mounts.mount(url, path=mp)
    with open(os.path.join(mp, "f"), "rb") as f:
        assert f.read() == data
