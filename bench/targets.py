"""The file systems the benchmarks compare, each behind one interface: set up, make cold (every
cache between the data and the reader emptied), wait until warm, tear down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.s3server import JUICEFS_VERSION, KEY, SECRET, Gateway, ensure_juicefs  # noqa: E402

__all__ = ["JUICEFS_VERSION", "ensure_juicefs", "sh", "drop_caches", "set_aside", "dir_bytes", "Target", "LocalDir",
           "MemFS", "Cachefs", "JuiceFS", "S3FS", "Rclone"]


def sh(*cmd: str, check: bool = True, env: dict | None = None, timeout: float = 600) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def drop_caches(pages_only: bool = False) -> None:
    """The kernel's caches dropped: the page cache, and unless pages_only its dentries and inodes
    too. pages_only is a training node between epochs: a dataset larger than memory has had its
    pages pushed out, while the inodes and dentries of its files (~1 KB each) stay."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1" if pages_only else "3")


def set_aside(path: str) -> None:
    """Empty a directory by renaming it aside; the benchmark deletes it with its work directory
    at the end. Why not delete it now: on ext4 without a journal (this machine's root file
    system) the inode allocator skips, one by one, every inode deleted in the last 60-360 s
    (ext4's recently_deleted()), so deleting a cache of thousands of entries made every file
    created in the minutes after cost up to ~1 ms of kernel CPU, charged to whichever target
    filled its cache next, and never to one that keeps no cache."""
    if os.path.lexists(path):
        os.rename(path, f"{path}.set-aside-{time.monotonic_ns()}")


def dir_bytes(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for n in files:
            try:
                total += os.lstat(os.path.join(d, n)).st_size
            except OSError:
                pass
    return total


@dataclass
class Target:
    name: str
    mountpoint: str
    results: dict[str, list[float]] = field(default_factory=dict)
    uses_s3 = False

    def setup(self, s3: Gateway | None) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)

    def make_cold(self) -> None:
        """Empty every cache between the data and the reader."""
        drop_caches()

    def wait_warm(self) -> None:
        """Wait until what was just read is in the local cache (some fill it in the background)."""

    def teardown(self) -> None: ...

    def record(self, job: str, value: float) -> None:
        self.results.setdefault(job, []).append(value)


class LocalDir(Target):
    pass


class MemFS(Target):
    def setup(self, s3: Gateway | None) -> None:
        super().setup(s3)
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "memfs.py"), self.mountpoint],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def teardown(self) -> None:
        sh("fusermount3", "-u", self.mountpoint, check=False)
        self.proc.wait(30)


class _CacheMount(Target):
    """A client with a local block cache under work/ (cachefs, JuiceFS)."""

    uses_s3 = True

    def __init__(self, name: str, mountpoint: str, meta_url: str, work: str, flags: Sequence[str] = ()) -> None:
        super().__init__(name, mountpoint)
        self.meta_url, self.flags = meta_url, list(flags)
        self.cache = os.path.join(work, os.path.basename(mountpoint) + "-cache")

    def _mount(self) -> None: ...

    def _umount(self) -> None: ...

    def make_cold(self) -> None:
        self._umount()
        set_aside(self.cache)
        drop_caches()
        self._mount()

    def wait_warm(self, settle: float = 2.0, timeout: float = 120.0) -> None:
        """Until the cache directory stops growing (JuiceFS writes its cache entries in the
        background, after the read that fetched them returned)."""
        last, stable, deadline = -1, time.time(), time.time() + timeout
        while time.time() < deadline:
            now = dir_bytes(self.cache)
            if now != last:
                last, stable = now, time.time()
            elif time.time() - stable >= settle:
                return
            time.sleep(0.25)


class Cachefs(_CacheMount):
    def _cli(self, *args: str) -> str:
        return sh(sys.executable, "-m", "cachefs.cli", *args)

    def setup(self, s3: Gateway | None) -> None:
        super().setup(s3)
        assert s3 is not None
        self._cli("format", self.meta_url, "bench", "--storage", "s3", "--bucket", s3.bucket_url("cachefs"),
                  "--access-key", KEY, "--secret-key", SECRET)
        self._mount()

    def _mount(self) -> None:
        self._cli("mount", self.meta_url, self.mountpoint, "--background", "--cache-dir", self.cache,
                  "--log", self.cache + ".log", "--trash-delay", "0", *self.flags)

    def _umount(self) -> None:
        self._cli("umount", self.mountpoint)

    def wait_warm(self, settle: float = 2.0, timeout: float = 120.0) -> None:
        pass  # cachefs writes a fetched block's cache entry before the read that fetched it returns

    def flush(self) -> None:
        self._cli("flush", self.mountpoint)

    def teardown(self) -> None:
        self._cli("umount", self.mountpoint)


class JuiceFS(_CacheMount):
    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)
        self.exe = ensure_juicefs()

    def setup(self, s3: Gateway | None) -> None:
        super().setup(s3)
        assert s3 is not None
        s3.make_bucket("juicefs")
        sh(self.exe, "format", "--storage", "s3", "--bucket", s3.bucket_url("juicefs"), "--access-key", KEY,
           "--secret-key", SECRET, "--trash-days", "0", self.meta_url, "jfsbench")
        self._mount()

    def _mount(self) -> None:
        sh(self.exe, "mount", "-d", "--cache-dir", self.cache, "--log", self.cache + ".log", "--no-usage-report",
           *self.flags, self.meta_url, self.mountpoint)

    def _umount(self) -> None:
        sh(self.exe, "umount", self.mountpoint)

    def staged_bytes(self) -> int:
        return sum(dir_bytes(os.path.join(self.cache, d, "rawstaging")) for d in os.listdir(self.cache)
                   if os.path.isdir(os.path.join(self.cache, d)))

    def teardown(self) -> None:
        sh(self.exe, "umount", self.mountpoint, check=False)


class S3FS(Target):
    """s3fs-fuse over one bucket of the S3 server."""

    uses_s3 = True

    def __init__(self, name: str, mountpoint: str, work: str) -> None:
        super().__init__(name, mountpoint)
        self.work = work

    def setup(self, s3: Gateway | None) -> None:
        super().setup(s3)
        assert s3 is not None
        s3.make_bucket("s3fs")
        pw = os.path.join(self.work, "s3fs.passwd")
        with open(pw, "w") as f:
            f.write(f"{KEY}:{SECRET}\n")
        os.chmod(pw, 0o600)
        sh("s3fs", "s3fs", self.mountpoint, "-o", f"url={s3.endpoint},use_path_request_style,passwd_file={pw},"
           "allow_other")
        time.sleep(1)

    def teardown(self) -> None:
        sh("fusermount", "-u", self.mountpoint, check=False)


class Rclone(Target):
    """rclone mount (full VFS cache) over one bucket of the S3 server."""

    uses_s3 = True

    def __init__(self, name: str, mountpoint: str, work: str) -> None:
        super().__init__(name, mountpoint)
        self.work = work

    def setup(self, s3: Gateway | None) -> None:
        super().setup(s3)
        assert s3 is not None
        s3.make_bucket("rclone")
        remote = f":s3,provider=Other,access_key_id={KEY},secret_access_key={SECRET},endpoint='{s3.endpoint}':rclone"
        self.proc = subprocess.Popen(["rclone", "mount", remote, self.mountpoint, "--vfs-cache-mode", "full",
                                      "--cache-dir", os.path.join(self.work, "rclone-cache"), "--allow-other"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while not os.path.ismount(self.mountpoint) and time.time() < deadline:
            time.sleep(0.2)

    def teardown(self) -> None:
        sh("fusermount3", "-u", self.mountpoint, check=False)
        self.proc.wait(30)
