"""Fixtures: real redis-server and S3 (moto server) on free loopback ports, formatted volumes,
and real FUSE mounts that are always unmounted, even when a test fails."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from .faultproxy import FaultProxy
from .servers import RedisCluster, RedisServer, S3Server

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
CACHEFS = [sys.executable, "-m", "cachefs.cli"]
_counter = itertools.count()


def run_cli(*args: str, check: bool = True, timeout: float = 120, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([*CACHEFS, *args], capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, **(env or {})), input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"cachefs {' '.join(args)} failed ({res.returncode}): {res.stderr}{res.stdout}")
    return res


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    cluster = RedisCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    yield server
    server.stop()


class VolumeFactory:
    """Formats volumes of a chosen engine and object store inside a test's tmp dir."""

    def __init__(self, tmp_path, request) -> None:
        self.tmp = tmp_path
        self.request = request

    def meta_url(self, engine: str) -> str:
        if engine == "sqlite":
            return f"sqlite3://{self.tmp}/meta-{next(_counter)}.db"
        if engine == "cluster":  # one volume at a time: a Cluster has database 0 only
            cluster = self.request.getfixturevalue("redis_cluster")
            cluster.flush()
            return cluster.url()
        server = self.request.getfixturevalue("redis_server")
        url = server.url()
        import redis

        redis.Redis.from_url(url).flushdb()
        return url

    def create(self, engine: str = "sqlite", storage: str = "file", name: str | None = None,
               extra: tuple[str, ...] = ()) -> str:
        name = name or f"vol{next(_counter)}"
        url = self.meta_url(engine)
        if storage == "file":
            bucket = str(self.tmp / f"objects-{name}")
        else:
            s3 = self.request.getfixturevalue("s3_server")
            bucket = s3.bucket_url(f"b-{uuid.uuid4().hex[:12]}")
        run_cli("format", url, name, "--storage", storage, "--bucket", bucket, *extra)
        return url


@pytest.fixture
def volumes(tmp_path, request) -> VolumeFactory:
    return VolumeFactory(tmp_path, request)


def is_mounted(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


class Mounts:
    """Mounts volumes in background processes and tears every one of them down."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.active: list[str] = []

    def mount(self, url: str, *flags: str, path: str | None = None) -> str:
        mp = path or str(self.tmp / f"mnt{next(_counter)}")
        os.makedirs(mp, exist_ok=True)
        log = str(self.tmp / f"mount{next(_counter)}.log")
        defaults = ["--heartbeat", "0.5", "--session-timeout", "3", "--trash-delay", "0",
                    "--cache-dir", str(self.tmp / f"cache{next(_counter)}")]
        res = run_cli("mount", url, mp, "--background", "--log", log, *defaults, *flags, check=False)
        if res.returncode != 0:
            raise AssertionError(f"mount failed: {res.stderr}\n{open(log).read() if os.path.exists(log) else ''}")
        self.active.append(mp)
        return mp

    def umount(self, mp: str) -> None:
        run_cli("umount", mp)
        if mp in self.active:
            self.active.remove(mp)

    def pid(self, mp: str) -> int:
        from cachefs.daemon import read_state

        state = read_state(os.path.realpath(mp))
        assert state, f"no state for {mp}"
        return state["pid"]

    def cleanup(self) -> None:
        for mp in list(self.active):
            if is_mounted(mp):
                res = run_cli("umount", mp, check=False)
                if res.returncode != 0 or is_mounted(mp):
                    subprocess.run(["umount", "-l", mp], capture_output=True)
            self.active.remove(mp)


@pytest.fixture
def mounts(tmp_path):
    m = Mounts(tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


# ---- write-back helpers -------------------------------------------------------------------
@pytest.fixture
def own_s3():
    """An S3 server of this test's own, so stopping it disturbs no other test."""
    server = S3Server()
    try:
        yield server
    finally:
        server.resume()
        server.stop()


@pytest.fixture
def proxied_s3():
    """An S3 server of this test's own behind a fault-injecting, request-counting proxy."""
    server = S3Server()
    proxy = FaultProxy(server.endpoint)
    try:
        yield proxy
    finally:
        proxy.close()
        server.stop()


def s3_volume(volumes, server: S3Server | FaultProxy) -> str:
    """A fresh Redis-metadata volume in a fresh bucket of that server (or proxy)."""
    url = volumes.meta_url("redis")
    run_cli("format", url, f"wb{uuid.uuid4().hex[:6]}", "--storage", "s3", "--bucket",
            server.bucket_url(f"b-{uuid.uuid4().hex[:12]}"))
    return url


def pending_of(url: str) -> int:
    status = json.loads(run_cli("status", url).stdout)
    return sum(s["pending_bytes"] for s in status["sessions"]) + sum(
        s["pending_bytes"] for s in status.get("pending_of_ended_sessions", []))


def kill(mounts, mp: str) -> None:
    os.kill(mounts.pid(mp), signal.SIGKILL)
    wait_for(lambda: run_cli("umount", mp, check=False).returncode == 0 or not os.path.ismount(mp), 10)
    mounts.active.remove(mp)


