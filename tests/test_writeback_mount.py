"""Write-back on real mounts: SIGKILL after close, a stopped S3 server, a full staging disk, a
rejected upload, and other mounts reading blocks that are still pending."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time

import pytest

from .conftest import kill, pending_of, run_cli, s3_volume, wait_for

pytestmark = pytest.mark.mount
FAST = ("--attr-cache", "0.2", "--entry-cache", "0.2", "--dir-entry-cache", "0.2")
MiB = 1 << 20


def write(path: str, data: bytes) -> float:
    """Write and close; returns the seconds close took to return."""
    t0 = time.monotonic()
    with open(path, "wb") as f:
        f.write(data)
    return time.monotonic() - t0


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def stats(mp: str) -> str:
    with open(os.path.join(mp, ".stats")) as f:
        return f.read()


def metric(mp: str, name: str) -> float:
    for line in stats(mp).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_s3_down_writes_continue_flush_and_umount_report_then_upload(volumes, mounts, own_s3, tmp_path):
    url = s3_volume(volumes, own_s3)
    cache = str(tmp_path / "cache-a")
    a = mounts.mount(url, "--writeback", "--cache-dir", cache, *FAST)
    own_s3.pause()
    files = {f"f{i}": os.urandom(6 * MiB + i) for i in range(3)}
    for name, data in files.items():
        assert write(os.path.join(a, name), data) < 20  # staged: close does not wait for S3
    assert pending_of(url) == sum(map(len, files.values()))
    res = run_cli("flush", a, "--timeout", "1", check=False)
    assert res.returncode == 1
    assert "/f0" in res.stdout and "/f2" in res.stdout and "still not in the object store" in res.stderr
    # umount gives up after its flush timeout and says what stays behind
    res = run_cli("umount", a, "--flush-timeout", "1", check=False)
    assert res.returncode == 0, res.stderr
    assert "gave up" in res.stderr and "/f1" in res.stderr
    mounts.active.remove(a)
    own_s3.resume()
    # the same cache dir: the mount uploads what is staged before it is ready
    a = mounts.mount(url, "--writeback", "--cache-dir", cache, *FAST)
    assert pending_of(url) == 0
    assert os.listdir(os.path.join(cache, os.listdir(cache)[0], "staging")) == [".lock"]
    b = mounts.mount(url, *FAST)
    for name, data in files.items():
        assert sha(os.path.join(b, name)) == hashlib.sha256(data).hexdigest()
    # with S3 up: writes, a flush that succeeds, and an umount that flushes
    more = os.urandom(3 * MiB)
    write(os.path.join(a, "g"), more)
    assert run_cli("flush", os.path.join(a, "g")).returncode == 0
    assert pending_of(url) == 0
    write(os.path.join(a, "h"), more)
    mounts.umount(a)
    assert pending_of(url) == 0
    assert sha(os.path.join(b, "h")) == hashlib.sha256(more).hexdigest()


def test_sigkill_after_close_other_mounts_wait_or_eio_fsck_then_recovery(volumes, mounts, own_s3, tmp_path):
    url = s3_volume(volumes, own_s3)
    cache = str(tmp_path / "cache-a")
    a = mounts.mount(url, "--writeback", "--cache-dir", cache, *FAST)
    data = os.urandom(9 * MiB + 77)
    own_s3.pause()
    write(os.path.join(a, "ckpt.bin"), data)
    write(os.path.join(a, "small"), b"tiny")
    kill(mounts, a)  # close returned; nothing reached S3
    own_s3.resume()
    assert pending_of(url) == len(data) + 4

    # the writer is gone with its staging: a reader waits --pending-timeout, then EIO, not zeros
    b = mounts.mount(url, "--pending-timeout", "2", *FAST)
    t0 = time.monotonic()
    with pytest.raises(OSError) as e, open(os.path.join(b, "ckpt.bin"), "rb") as f:
        f.read()
    assert e.value.errno == errno.EIO
    assert 1.5 <= time.monotonic() - t0 < 30
    res = run_cli("fsck", url, check=False)
    assert res.returncode == 1
    assert "damaged /ckpt.bin" in res.stdout and "damaged /small" in res.stdout and "ended session" in res.stdout

    # a patient reader waits while the writer's node comes back and uploads
    c = mounts.mount(url, "--pending-timeout", "120", *FAST)
    got: dict = {}

    def read() -> None:
        try:
            with open(os.path.join(c, "ckpt.bin"), "rb") as f:
                got["data"] = f.read()
        except OSError as err:
            got["error"] = err

    t = threading.Thread(target=read)
    t.start()
    time.sleep(1.0)
    assert t.is_alive()
    a = mounts.mount(url, "--writeback", "--cache-dir", cache, *FAST)  # recovery, then ready
    assert pending_of(url) == 0
    t.join(60)
    assert got.get("data") == data, got.get("error")
    assert sha(os.path.join(a, "ckpt.bin")) == hashlib.sha256(data).hexdigest()
    with open(os.path.join(b, "small"), "rb") as f:
        assert f.read() == b"tiny"
    res = run_cli("fsck", url)
    assert "0 damaged" in res.stdout


@pytest.fixture
def tmpfs(tmp_path):
    path = tmp_path / "tmpfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(path)], check=True)
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_staging_disk_falls_back_to_write_through(volumes, mounts, tmpfs):
    url = volumes.create("sqlite", "file")
    a = mounts.mount(url, "--writeback", "--cache-dir", tmpfs, *FAST)
    data = os.urandom(80 * MiB)
    write(os.path.join(a, "big"), data)  # more than the staging disk holds: nothing fails
    assert metric(a, "cachefs_staging_fallbacks_total") > 0
    assert run_cli("flush", a, "--timeout", "60").returncode == 0
    b = mounts.mount(url, *FAST)
    assert sha(os.path.join(b, "big")) == hashlib.sha256(data).hexdigest()


@pytest.fixture
def read_only_bind():
    """Turns a directory read-only (EROFS, a rejection, not an outage) and back."""
    done: list[str] = []

    def make(path: str, ro: bool) -> None:
        if ro:
            subprocess.run(["mount", "--bind", path, path], check=True)
            subprocess.run(["mount", "-o", "remount,ro,bind", path], check=True)
            done.append(path)
        else:
            subprocess.run(["umount", path], check=True)
            done.remove(path)

    yield make
    for path in done:
        subprocess.run(["umount", "-l", path], check=False)


def test_rejected_upload_is_eio_on_fsync_and_resumes(volumes, mounts, read_only_bind, tmp_path):
    url = volumes.create("sqlite", "file")
    bucket = str(next(p for p in tmp_path.iterdir() if p.name.startswith("objects-")))
    os.makedirs(bucket, exist_ok=True)
    a = mounts.mount(url, "--writeback", *FAST)
    read_only_bind(bucket, True)
    data = os.urandom(5 * MiB)
    fd = os.open(os.path.join(a, "f"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)

        def fsync_fails() -> bool:
            try:
                os.fsync(fd)
            except OSError as err:
                assert err.errno == errno.EIO
                return True
            return False

        wait_for(fsync_fails, 20, 0.2)
        assert metric(a, 'cachefs_writeback_upload_failures_total{kind="permanent"}') >= 1
        assert metric(a, 'cachefs_object_errors_total{op="put"}') >= 1
        res = run_cli("flush", a, "--timeout", "2", check=False)
        assert res.returncode == 1 and "/f" in res.stdout
        read_only_bind(bucket, False)  # fixed: the upload is retried and goes through
        assert run_cli("flush", a, "--timeout", "60").returncode == 0
        os.fsync(fd)
    finally:
        os.close(fd)
    b = mounts.mount(url, *FAST)
    assert sha(os.path.join(b, "f")) == hashlib.sha256(data).hexdigest()


def test_fsync_remote_waits_for_the_object_store(volumes, mounts, own_s3):
    url = s3_volume(volumes, own_s3)
    a = mounts.mount(url, "--writeback", "--fsync", "remote", *FAST)
    own_s3.pause()
    done = threading.Event()
    fd = os.open(os.path.join(a, "shard.distcp"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, os.urandom(5 * MiB))
        t = threading.Thread(target=lambda: (os.fsync(fd), done.set()))
        t.start()
        assert not done.wait(2.0)  # staged, but S3 is stopped: fsync keeps waiting
        own_s3.resume()
        assert done.wait(60)
        t.join()
        assert pending_of(url) == 0  # fsync returned: nothing of the file is pending
    finally:
        own_s3.resume()
        os.close(fd)


def test_plain_umount_keeps_uploading_before_the_process_exits(volumes, mounts, read_only_bind, tmp_path):
    url = volumes.create("sqlite", "file")
    bucket = str(next(p for p in tmp_path.iterdir() if p.name.startswith("objects-")))
    os.makedirs(bucket, exist_ok=True)
    a = mounts.mount(url, "--writeback", "--flush-timeout", "60", *FAST)
    pid = mounts.pid(a)
    read_only_bind(bucket, True)  # uploads are refused for now
    data = os.urandom(6 * MiB)
    write(os.path.join(a, "f"), data)
    subprocess.run(["umount", a], check=True)  # what `mount -t cachefs` users do
    mounts.active.remove(a)
    time.sleep(1.0)
    assert os.path.exists(f"/proc/{pid}")  # unmounted, still waiting to upload
    read_only_bind(bucket, False)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 40, 0.2)
    b = mounts.mount(url, *FAST)
    assert sha(os.path.join(b, "f")) == hashlib.sha256(data).hexdigest()
    assert pending_of(url) == 0
