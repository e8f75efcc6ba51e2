"""Side-by-side benchmark: the same fio jobs, small-file and metadata workloads against a local
directory, a do-nothing Python FUSE file system, cachefs (write-through and write-back), JuiceFS
(the same, on the same Redis), s3fs and rclone. Every target that uses S3 gets a fresh JuiceFS S3
gateway (bench/s3server.py: the fastest S3 server installable here), and all targets run in
each of several rounds, interleaved, so the machine's drift (±20 % between runs) spreads over
all of them; the table shows medians and writes bench/RESULTS.md.

    python bench/compare.py                        # full run: 3 rounds (about 40 minutes)
    python bench/compare.py --size 64 --small-files 100 --walk-files 200 --runtime 2 --rounds 1 --no-results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.results import replace_section  # noqa: E402
from bench.s3server import Gateway  # noqa: E402
from bench.targets import S3FS, Cachefs, JuiceFS, LocalDir, MemFS, Rclone, Target, drop_caches, sh  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

JOBS = {  # job: (unit, higher is better)
    "seq write": ("MiB/s", True),
    "seq read cold": ("MiB/s", True),
    "seq read warm": ("MiB/s", True),
    "rand 4k direct, 1 job, warm": ("IOPS", True),
    "rand 4k direct, 4 jobs, warm": ("IOPS", True),
    "rand 4k buffered, warm": ("IOPS", True),
    "rand 4k direct, cold": ("IOPS", True),
    "first 4k read, cold": ("ms", False),
    "small create": ("files/s", True),
    "small read, 1 reader": ("files/s", True),
    "small read, 8 readers": ("files/s", True),
    "stat": ("files/s", True),
    "list + stat walk": ("files/s", True),
}
WB_JOBS = ("small create", "seq write")  # what the write-back targets run


def fio(name: str, path: str, rw: str, bs: str, size_mib: int, runtime: int = 0, direct: int = 0,
        jobs: int = 1) -> float:
    cmd = ["fio", f"--name={name}", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", f"--size={size_mib}M",
           f"--direct={direct}", "--ioengine=psync", "--output-format=json", f"--numjobs={jobs}",
           "--group_reporting", f"--randseed={random.randrange(1 << 30)}"]
    if rw == "write":
        cmd.append("--end_fsync=1")
    if runtime:
        cmd += [f"--runtime={runtime}", "--time_based"]
    job = json.loads(sh(*cmd, timeout=1800))["jobs"][0]
    part = job["write"] if rw == "write" else job["read"]
    return part["iops"] if bs == "4k" else part["bw_bytes"] / 2**20


def first_read_ms(path: str, size: int) -> float:
    """Latency of one 4 KiB read at a random offset of a file nothing has read yet."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        import mmap

        buf = mmap.mmap(-1, 4096)
        off = random.randrange(size // 4096) * 4096
        t0 = time.perf_counter()
        os.preadv(fd, [buf], off)
        return (time.perf_counter() - t0) * 1000
    finally:
        os.close(fd)


def timed(count: int, fn: Callable[[int], object], threads: int = 1) -> float:
    """count calls of fn(i) spread over threads: calls per second."""
    start = time.perf_counter()
    if threads == 1:
        for i in range(count):
            fn(i)
    else:
        parts = [range(k, count, threads) for k in range(threads)]
        ts = [threading.Thread(target=lambda p=p: [fn(i) for i in p]) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return count / (time.perf_counter() - start)


def small_files(t: Target, d: str, count: int, size: int = 16 << 10) -> None:
    os.makedirs(d, exist_ok=True)
    data = os.urandom(size)

    def create(i: int) -> None:
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(data)

    def read(i: int) -> None:
        with open(os.path.join(d, f"f{i}"), "rb") as f:
            f.read()

    t.record("small create", timed(count, create))
    if isinstance(t, Cachefs | JuiceFS) and "--writeback" in t.flags:
        return
    drop_caches()
    t.record("small read, 1 reader", timed(count, read))
    drop_caches()
    t.record("small read, 8 readers", timed(count, read, threads=8))
    drop_caches()
    t.record("stat", timed(count, lambda i: os.stat(os.path.join(d, f"f{i}"))))


def walk(t: Target, d: str) -> None:
    """os.scandir of a directory of many files, then a stat of each (kernel caches dropped)."""
    drop_caches()
    start = time.perf_counter()
    names = [e.name for e in os.scandir(d)]
    for n in names:
        os.stat(os.path.join(d, n))
    t.record("list + stat walk", len(names) / (time.perf_counter() - start))


def run_round(t: Target, rnd: int, a: argparse.Namespace) -> None:
    print(f"== round {rnd + 1}: {t.name}", flush=True)
    f = os.path.join(t.mountpoint, f"fio-{rnd}.dat")
    small = os.path.join(t.mountpoint, f"small-{rnd}")
    wb = isinstance(t, Cachefs | JuiceFS) and "--writeback" in t.flags
    try:
        t.record("seq write", fio("w", f, "write", "1M", a.size))
        if not wb:
            t.make_cold()
            t.record("seq read cold", fio("rc", f, "read", "1M", a.size))
            t.wait_warm()
            drop_caches()
            t.record("seq read warm", fio("rw", f, "read", "1M", a.size))
            drop_caches()
            t.record("rand 4k direct, 1 job, warm", fio("r1", f, "randread", "4k", a.size, a.runtime, direct=1))
            drop_caches()
            t.record("rand 4k direct, 4 jobs, warm", fio("r4", f, "randread", "4k", a.size, a.runtime, direct=1,
                                                         jobs=4))
            drop_caches()
            t.record("rand 4k buffered, warm", fio("rb", f, "randread", "4k", a.size, a.runtime))
            t.make_cold()
            t.record("first 4k read, cold", first_read_ms(f, a.size << 20))
            t.record("rand 4k direct, cold", fio("rc4", f, "randread", "4k", a.size, a.runtime, direct=1))
        small_files(t, small, a.small_files)
        if not wb:
            walk(t, os.path.join(t.mountpoint, "walk"))
    except Exception as e:
        print(f"   {t.name} failed: {e}", flush=True)
    finally:
        for p in (f, small):  # the S3 server keeps what each round wrote otherwise
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.unlink(p))
        if wb and isinstance(t, Cachefs):
            t.flush()
    print("   " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in t.results.items() if v), flush=True)


def make_walk_dir(t: Target, count: int) -> None:
    d = os.path.join(t.mountpoint, "walk")
    os.makedirs(d, exist_ok=True)
    for i in range(count):  # empty: the walk is about metadata
        open(os.path.join(d, f"w{i:06d}"), "wb").close()


def median(t: Target, job: str) -> float | None:
    v = t.results.get(job)
    return statistics.median(v) if v else None


def render(targets: list[Target]) -> str:
    names = [t.name for t in targets]
    by = {t.name: t for t in targets}

    def pick(job: str, *names: str) -> float | None:
        for n in names:
            if n in by and median(by[n], job) is not None:
                return median(by[n], job)
        return None

    head = "| job | unit | " + " | ".join(names) + " | cachefs / JuiceFS | cachefs / Python FUSE ceiling |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    for job, (unit, higher) in JOBS.items():
        cells = []
        for n in names:
            m = median(by[n], job)
            cells.append("-" if m is None else f"{m:.1f}" if unit == "ms" else f"{m:.0f}")
        wb = job in WB_JOBS
        c, j = pick(job, "cachefs"), pick(job, "JuiceFS")
        m = pick(job, "Python FUSE ceiling")

        def ratio(x: float | None, y: float | None, higher: bool = higher) -> str:
            if not x or not y:
                return "-"
            return f"{x / y:.2f}x" if higher else f"{y / x:.2f}x"

        rj = ratio(c, j)
        if wb:
            rj += f" (write-back: {ratio(pick(job, 'cachefs write-back'), pick(job, 'JuiceFS --writeback'))})"
        lines.append(f"| {job} | {unit} | " + " | ".join(cells) + f" | {rj} | {ratio(c, m)} |")
    return "\n".join(lines)


def ensure_tools(wanted: list[str]) -> None:
    """fio, and s3fs / rclone when asked for: Debian packages."""
    need = [p for p, exe in (("fio", "fio"), ("s3fs", "s3fs"), ("rclone", "rclone"))
            if shutil.which(exe) is None and (p == "fio" or p in wanted)]
    if need:
        print(f"installing {' '.join(need)} (apt)", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", *need], env=env, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="MiB for the fio files (default 1024)")
    ap.add_argument("--runtime", type=int, default=15, help="seconds of each random-read job (default 15)")
    ap.add_argument("--small-files", type=int, default=2000, help="small files (default 2000)")
    ap.add_argument("--walk-files", type=int, default=10000, help="files in the walked directory (default 10000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, targets interleaved in each (default 3)")
    ap.add_argument("--targets", default="local,memfs,cachefs,cachefs-wb,juicefs,juicefs-wb,s3fs,rclone")
    ap.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/compare.py: run as root (it mounts file systems and drops caches)", file=sys.stderr)
        return 1
    wanted = a.targets.split(",")
    ensure_tools(wanted)
    work = tempfile.mkdtemp(prefix="cachefs-bench-")
    redis = RedisServer()
    mp = lambda n: os.path.join(work, "mnt-" + n)  # noqa: E731
    makers: dict[str, Callable[[], Target]] = {
        "local": lambda: LocalDir("local dir", mp("local")),
        "memfs": lambda: MemFS("Python FUSE ceiling", mp("memfs")),
        "cachefs": lambda: Cachefs("cachefs", mp("cachefs"), redis.url(1), work),
        "cachefs-wb": lambda: Cachefs("cachefs write-back", mp("cachefs-wb"), redis.url(2), work,
                                      flags=("--writeback",)),
        "juicefs": lambda: JuiceFS("JuiceFS", mp("juicefs"), redis.url(3), work),
        "juicefs-wb": lambda: JuiceFS("JuiceFS --writeback", mp("juicefs-wb"), redis.url(4), work,
                                      flags=("--writeback",)),
        "s3fs": lambda: S3FS("s3fs", mp("s3fs"), work),
        "rclone": lambda: Rclone("rclone mount", mp("rclone"), work),
    }
    targets: list[Target] = []
    servers: list[Gateway] = []
    try:
        for key in wanted:
            if key not in makers or key in ("s3fs", "rclone") and shutil.which(key) is None:
                print(f"skipping {key}: not available", flush=True)
                continue
            t = makers[key]()
            s3 = Gateway() if t.uses_s3 else None  # a fresh S3 server for each target
            if s3 is not None:
                servers.append(s3)
            try:
                t.setup(s3)
                if "-wb" not in key:
                    make_walk_dir(t, a.walk_files)
            except Exception as e:
                print(f"   {t.name} setup failed: {e}", flush=True)
                continue
            targets.append(t)
        for rnd in range(a.rounds):
            for t in targets:
                run_round(t, rnd, a)
    finally:
        for t in targets:
            try:
                t.teardown()
            except Exception as e:
                print(f"   {t.name} teardown failed: {e}", flush=True)
        for s3 in servers:
            s3.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    table = render(targets)
    print(table)
    if not a.no_results:
        write_results(table, a)
    return 0


def write_results(table: str, a: argparse.Namespace) -> None:
    def version(*cmd: str) -> str:
        try:
            return sh(*cmd, check=False).strip().splitlines()[0]
        except (OSError, IndexError):
            return "not installed"

    import cachefs

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 30
    text = f"""## Side by side: fio, small files and metadata (`bench/compare.py`)

Measured by `python bench/compare.py --size {a.size} --runtime {a.runtime} --small-files {a.small_files}
--walk-files {a.walk_files} --rounds {a.rounds}` on {time.strftime('%Y-%m-%d')}: every target in each of {a.rounds}
rounds, interleaved; the table shows medians.

- machine: {os.cpu_count()} cores, {mem} GiB, {platform.platform()}, Python {platform.python_version()}
- cachefs {cachefs.__version__}; {version('juicefs', 'version')}; {version('fio', '--version')};
  {version('redis-server', '--version')}; s3fs {version('s3fs', '--version')}; {version('rclone', 'version')}
- S3: {Gateway.name}, a fresh one for every target; metadata: one redis-server, a database per target.
- jobs: fio psync. Sequential write {a.size} MiB bs=1M (end_fsync); sequential read bs=1M cold (local cache
  emptied, remounted, page cache dropped) and warm (local cache full: the background cache writes of a client
  are waited for; page cache dropped). Random reads bs=4k for {a.runtime} s: direct (1 job; 4 jobs on one file),
  buffered (page cache dropped first, then used as a user's would be), and cold (caches emptied and remounted,
  direct); "first 4k read, cold" is the latency of the first read of a cold mount. {a.small_files} files of
  16 KiB created, then read by 1 and by 8 threads, then stat'ed (page cache dropped before each). The walk is
  os.scandir of a directory of {a.walk_files} files and a stat of each (kernel caches dropped first). The
  write-back targets run the sequential write and the small-file creates only ("cachefs write-back" against
  "JuiceFS --writeback").
- Each client keeps its default cache settings.

{table}
"""
    replace_section("compare", text)


if __name__ == "__main__":
    sys.exit(main())
