"""Several clients on one volume: two mounts of one Redis + S3 volume on this machine."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cachefs.errors import FSError
from cachefs.meta import open_meta
from cachefs.metacache import SCAN_MISSES

from .conftest import run_cli, wait_for
from .test_cache import stats

pytestmark = pytest.mark.mount
FAST = ("--attr-cache", "0.2", "--entry-cache", "0.2", "--dir-entry-cache", "0.2")


@pytest.fixture
def two(volumes, mounts):
    url = volumes.create("redis", "s3")
    return url, mounts.mount(url, *FAST), mounts.mount(url, *FAST)


def test_write_on_one_read_on_other(two):
    _, a, b = two
    data = os.urandom(9 << 20)
    with open(os.path.join(a, "f"), "wb") as f:
        f.write(data)
    with open(os.path.join(b, "f"), "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    # an overwrite on b is seen by a new open on a
    with open(os.path.join(b, "f"), "r+b") as f:
        f.seek(100)
        f.write(b"changed")
    time.sleep(0.3)
    with open(os.path.join(a, "f"), "rb") as f:
        f.seek(100)
        assert f.read(7) == b"changed"


def test_renames_and_deletes_show_up(two):
    _, a, b = two
    os.mkdir(os.path.join(a, "d"))
    open(os.path.join(a, "d", "x"), "w").write("x")
    assert os.listdir(os.path.join(b, "d")) == ["x"]
    os.rename(os.path.join(a, "d", "x"), os.path.join(a, "d", "y"))
    time.sleep(0.3)
    assert os.listdir(os.path.join(b, "d")) == ["y"]
    assert open(os.path.join(b, "d", "y")).read() == "x"
    os.unlink(os.path.join(b, "d", "y"))
    time.sleep(0.3)
    assert not os.path.exists(os.path.join(a, "d", "y"))
    assert os.listdir(os.path.join(a, "d")) == []


def test_stat_of_every_file_is_answered_from_one_listing_and_stays_close_to_open(two):
    """A stat of each file of a directory the mount has not seen: after SCAN_MISSES lookups the
    directory comes in one listing and the rest are answered in the event loop; a change made
    on the other mount is still seen at the next open, and a removal once the timeout passed."""
    _, a, b = two
    d = os.path.join(a, "d")
    os.mkdir(d)
    for i in range(60):
        with open(os.path.join(d, f"f{i:02d}"), "wb") as f:
            f.write(b"v1")
    before = stats(b)
    sizes = [os.stat(os.path.join(b, "d", f"f{i:02d}")).st_size for i in range(60)]
    assert sizes == [2] * 60
    after = stats(b)
    assert after["cachefs_meta_listings_total"] - before.get("cachefs_meta_listings_total", 0) == 1
    answered = 'cachefs_fuse_in_memory_total{op="lookup"}'
    assert after.get(answered, 0) - before.get(answered, 0) >= 60 - SCAN_MISSES
    with open(os.path.join(d, "late"), "wb") as f:  # made on a after b's listing: found at once
        f.write(b"late")
    with open(os.path.join(b, "d", "late"), "rb") as f:
        assert f.read() == b"late"
    with open(os.path.join(d, "f05"), "wb") as f:  # changed on a
        f.write(b"version 2")
    with open(os.path.join(b, "d", "f05"), "rb") as f:  # at once: the open revalidates
        assert f.read() == b"version 2"
    os.unlink(os.path.join(d, "f06"))
    time.sleep(0.3)
    assert not os.path.exists(os.path.join(b, "d", "f06"))


def test_opens_send_their_close_to_open_read_from_the_event_loop(two):
    """On a Redis volume a read-only open's metadata read goes out from the mount's event loop
    (cachefs/loopredis.py), with no worker thread: a file the other mount rewrote (same size,
    new bytes) is read new at the next open, never from the kernel's old pages, and one it
    removed fails the open with ENOENT."""
    _, a, b = two
    pa, pb = os.path.join(a, "f"), os.path.join(b, "f")
    answered = 'cachefs_fuse_loop_redis_total{op="open",result="answered"}'
    fallback = 'cachefs_fuse_loop_redis_total{op="open",result="fallback"}'
    before = stats(b)
    for i in range(5):
        data = os.urandom(5000)
        with open(pa, "wb") as f:
            f.write(data)
        with open(pb, "rb") as f:
            assert f.read() == data, i
    after = stats(b)
    assert after[answered] - before.get(answered, 0) >= 5
    assert after.get(fallback, 0) == 0
    os.stat(pb)  # b's kernel holds the name for the entry timeout
    os.unlink(pa)
    with pytest.raises(FileNotFoundError):
        open(pb, "rb")


def test_concurrent_creates_from_both_mounts(two):
    _, a, b = two
    os.mkdir(os.path.join(a, "c"))
    time.sleep(0.3)
    errors = []

    def work(root, tag):
        try:
            for i in range(300):
                with open(os.path.join(root, "c", f"{tag}{i}"), "w") as f:
                    f.write(tag)
        except OSError as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(root, tag)) for root, tag in
               ((a, "a"), (b, "b"), (a, "c"), (b, "d"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    time.sleep(0.3)
    for root in (a, b):
        assert len(os.listdir(os.path.join(root, "c"))) == 1200


def test_killed_mount_session_is_cleaned(two, mounts):
    url, a, b = two
    status = json.loads(run_cli("status", url).stdout)
    assert len(status["sessions"]) == 2
    assert "testing" not in json.dumps(status)  # no secrets (format stored none, env has them)
    path = os.path.join(b, "held")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import os,sys,time\n"
         f"fd=os.open({path!r}, os.O_CREAT|os.O_RDWR)\n"
         "os.write(fd, b'x'*100000); os.fsync(fd)\n"
         f"os.unlink({path!r})\n"
         "print(os.fstat(fd).st_ino, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    ino = int(holder.stdout.readline())
    meta = open_meta(url)
    meta.load()
    assert meta.getattr(ino).nlink == 0
    os.kill(mounts.pid(b), signal.SIGKILL)
    holder.kill()
    holder.wait()
    run_cli("umount", b)
    mounts.active.remove(b)

    def cleaned():
        try:
            meta.getattr(ino)
            return False
        except FSError as e:
            return e.errno == errno.ENOENT

    wait_for(cleaned, timeout=20)
    wait_for(lambda: len(json.loads(run_cli("status", url).stdout)["sessions"]) == 1, timeout=20)
    wait_for(lambda: not meta.deleted_files(), timeout=20)
    # the volume is intact: remount the killed side and read what the live side wrote
    open(os.path.join(a, "after"), "w").write("ok")
    b2 = mounts.mount(url, *FAST)
    assert open(os.path.join(b2, "after")).read() == "ok"
    meta.close_engine()
