"""Redis topologies for real: a Sentinel failover under a writer and a reader, a volume on a
Redis Cluster mounted end to end, and Redis over TLS."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from .conftest import run_cli, wait_for
from .servers import RedisServer, SentinelGroup, free_port
from .test_faults import FAST, Writer, check_files, fsck_clean

pytestmark = pytest.mark.mount


def test_sentinel_failover_loses_nothing_and_shows_no_error(mounts, tmp_path):
    group = SentinelGroup()
    try:
        url = group.url(1)
        run_cli("format", url, "v", "--storage", "file", "--bucket", str(tmp_path / "objects"))
        a = mounts.mount(url, *FAST)
        b = mounts.mount(url, *FAST)
        w = Writer(a, 48, pause=0.15)
        reads: list[str] = []
        stop = threading.Event()

        def reader() -> None:  # another node reading every file once its close returned
            while not stop.is_set():
                for path, data in list(w.done.items()):
                    try:
                        with open(path.replace(a, b, 1), "rb") as f:
                            if f.read() != data:
                                reads.append(f"{path}: wrong bytes")
                    except OSError as e:
                        reads.append(f"{path}: {e}")
                time.sleep(0.2)

        t = threading.Thread(target=reader, daemon=True)
        w.start()
        t.start()
        wait_for(lambda: len(w.done) >= 8, 30)
        old = group.master_address()
        group.kill_master()
        wait_for(lambda: group.master_address() != old, 60, interval=0.2)  # the replica took over
        w.join(180)
        stop.set()
        t.join(30)
        assert not w.is_alive()
        assert w.errors == []
        assert len(w.done) == 48
        assert reads == []
        check_files(w.done, a, a)
        check_files(w.done, a, b)
        mounts.umount(a)
        c = mounts.mount(url, *FAST)
        check_files(w.done, a, c)
        fsck_clean(url)
    finally:
        mounts.cleanup()
        group.stop()


def test_volume_on_redis_cluster_end_to_end(volumes, mounts, tmp_path):
    url = volumes.meta_url("cluster")
    run_cli("format", url, "clustered", "--storage", "file", "--bucket", str(tmp_path / "objects"))
    a = mounts.mount(url, *FAST)
    b = mounts.mount(url, *FAST)
    w = Writer(a, 12)
    w.run()
    assert w.errors == []
    os.makedirs(os.path.join(a, "d", "e"))
    os.rename(os.path.join(a, "d"), os.path.join(a, "moved"))
    check_files(w.done, a, b)
    time.sleep(1.2)
    assert sorted(os.listdir(b)) == sorted(os.listdir(a))
    assert os.path.isdir(os.path.join(b, "moved", "e"))
    fsck_clean(url)
    import json

    status = json.loads(run_cli("status", url).stdout)
    assert len(status["sessions"]) == 2 and status["setting"]["name"] == "clustered"


def _tls_files(tmp_path) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = str(tmp_path / "tls")
    os.makedirs(d)
    ca, key, crt = (os.path.join(d, n) for n in ("ca.pem", "server.key", "server.pem"))

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cachefs-test-ca",
        "-keyout", os.path.join(d, "ca.key"), "-out", ca)
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key,
        "-out", os.path.join(d, "server.csr"))
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", os.path.join(d, "server.csr"), "-CA", ca, "-CAkey", os.path.join(d, "ca.key"),
        "-CAcreateserial", "-days", "2", "-extfile", os.path.join(d, "ext.cnf"), "-out", crt)
    return ca, key, crt


def test_redis_over_tls(mounts, tmp_path):
    ca, key, crt = _tls_files(tmp_path)
    port = free_port()
    server = RedisServer(port=port, extra=["--port", "0", "--tls-port", str(port), "--tls-cert-file", crt,
                                "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"])
    try:
        url = f"rediss://127.0.0.1:{port}/2?ssl_ca_certs={ca}"
        run_cli("format", url, "secure", "--storage", "file", "--bucket", str(tmp_path / "objects"))
        a = mounts.mount(url, *FAST)
        with open(os.path.join(a, "f"), "wb") as f:
            f.write(b"over tls")
        with open(os.path.join(a, "f"), "rb") as f:
            assert f.read() == b"over tls"
        # a client that does not trust the server's CA is refused with one line
        res = run_cli("status", f"rediss://127.0.0.1:{port}/2", check=False)
        assert res.returncode == 1 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    finally:
        mounts.cleanup()
        server.stop()
