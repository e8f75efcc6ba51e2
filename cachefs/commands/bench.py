"""`cachefs bench PATH`: the quick check users run on a mount (or any directory): big-file
write and read, small-file write and read, stat; one result table."""

from __future__ import annotations

import argparse
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cachefs.errors import ConfigError
from cachefs.progress import Progress, human

BLOCK = 1 << 20


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="quick performance check of a directory", description="Write and read a "
                       "big file, write and read small files, stat them, and print a result table.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--big-file-size", type=int, default=1024, help="MiB per big file (default 1024)")
    p.add_argument("--small-file-size", type=int, default=128, help="KiB per small file (default 128)")
    p.add_argument("--small-file-count", type=int, default=100, help="small files per thread (default 100)")
    p.add_argument("--threads", "-p", type=int, default=1, help="parallel workers (default 1)")


def run(a: argparse.Namespace) -> int:
    print(table(measure(a.path, a.big_file_size, a.small_file_size, a.small_file_count, a.threads)))
    return 0


@dataclass
class Result:
    name: str
    count: int  # files or operations
    nbytes: int
    seconds: float

    def row(self) -> str:
        per = f"{human(self.nbytes / self.seconds)}/s" if self.nbytes else f"{self.count / self.seconds:.0f} files/s"
        lat = self.seconds / max(self.count, 1) * 1000
        return f"| {self.name:<17} | {per:>14} | {lat:10.3f} ms |"


def _drop_caches() -> None:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError:
        pass  # not root: reads may come from the page cache


def measure(path: str, big_mib: int, small_kib: int, small_count: int, threads: int) -> list[Result]:
    if not os.path.isdir(path):
        raise ConfigError(f"{path} is not a directory")
    if big_mib < 1 or small_kib < 1 or small_count < 1 or threads < 1:
        raise ConfigError("sizes, counts and --threads must be positive")
    work = os.path.join(path, f"__cachefs_bench_{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(work)
    except OSError as e:
        raise ConfigError(f"cannot write in {path}: {e.strerror}") from None
    payload = os.urandom(BLOCK)
    big = big_mib << 20
    small = small_kib << 10
    results = []
    pool = ThreadPoolExecutor(threads)

    def phase(name: str, total: int, count: int, fn: Callable[[int], int], items: range) -> None:
        bar = Progress(total or count, name)
        start = time.perf_counter()
        for n in pool.map(fn, items):
            bar.add(n)
        results.append(Result(name, count, total, time.perf_counter() - start))
        bar.close()

    def write_big(t: int) -> int:
        with open(os.path.join(work, f"big.{t}"), "wb", buffering=0) as f:
            for _ in range(big // BLOCK):
                f.write(payload)
            f.flush()
        return big

    def read_big(t: int) -> int:
        n = 0
        with open(os.path.join(work, f"big.{t}"), "rb", buffering=0) as f:
            while data := f.read(BLOCK):
                n += len(data)
        return n

    def write_small(i: int) -> int:
        with open(os.path.join(work, f"small.{i}"), "wb", buffering=0) as f:
            f.write(payload[:small] if small <= BLOCK else payload * (small // BLOCK))
        return small

    def read_small(i: int) -> int:
        with open(os.path.join(work, f"small.{i}"), "rb", buffering=0) as f:
            return len(f.read())

    def stat_small(i: int) -> int:
        os.stat(os.path.join(work, f"small.{i}"))
        return 1

    try:
        phase("write big file", big * threads, threads, write_big, range(threads))
        _drop_caches()
        phase("read big file", big * threads, threads, read_big, range(threads))
        n = small_count * threads
        phase("write small files", small * n, n, write_small, range(n))
        _drop_caches()
        phase("read small files", small * n, n, read_small, range(n))
        phase("stat files", 0, n, stat_small, range(n))
    finally:
        pool.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return results


def table(results: list[Result]) -> str:
    lines = ["| item              |     throughput | latency/op    |",
             "|-------------------|----------------|---------------|"]
    return "\n".join(lines + [r.row() for r in results])
