"""Checkpoint benchmark: how long `torch.save` of a state dict blocks training, and how long
until the checkpoint is durable in S3, on a local directory, cachefs write-through, cachefs
write-back and JuiceFS --writeback, against one redis-server and S3 servers on loopback started
here (bench/s3server.py): a fresh one for each target and for the raw PUT throughput measured
in the same run.

    python bench/checkpoint.py                        # 1 GiB, best of 2 (a few minutes)
    python bench/checkpoint.py --size 64 --repeat 1 --no-results   # smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.results import replace_section  # noqa: E402
from bench.s3server import KEY, SECRET, Gateway  # noqa: E402
from bench.targets import JUICEFS_VERSION, Cachefs, JuiceFS, MemFS, drop_caches, ensure_juicefs  # noqa: E402
from tests.servers import RedisServer, free_port  # noqa: E402

T = TypeVar("T")

MiB = 1 << 20


@dataclass
class Result:
    name: str
    returns: list[float] = field(default_factory=list)  # seconds until torch.save returned
    durable: list[float] = field(default_factory=list)  # seconds until the data was in S3
    uploading: list[float] = field(default_factory=list)  # seconds from the first PUT to durable

    def best(self, xs: list[float]) -> float | None:
        return min(xs) if xs else None


def state_dict(size: int):  # a dict of tensors (torch is imported only here)
    import torch

    n = max(1, size // (16 * MiB))
    g = torch.Generator().manual_seed(0)
    return {f"layers.{i}.weight": torch.randn(16 * MiB // 4, generator=g) for i in range(n)}


def raw_put_throughput(s3: Gateway, size: int, threads: int = 16) -> float:
    """MiB/s of parallel 4 MiB PUTs with boto3 against the same server: the upload ceiling."""
    import boto3
    from botocore.config import Config

    bucket = f"raw-{uuid.uuid4().hex[:8]}"
    s3.make_bucket(bucket)
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", aws_access_key_id=KEY,
                          aws_secret_access_key=SECRET,
                          config=Config(max_pool_connections=threads, s3={"addressing_style": "path"}))
    body = os.urandom(4 * MiB)
    count = max(1, size // (4 * MiB))
    keys = iter(range(count))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(keys, None)
            if i is None:
                return
            client.put_object(Bucket=bucket, Key=f"o{i}", Body=body)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return count * 4 * MiB / MiB / (time.perf_counter() - t0)


def put_bytes_from(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, from Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        base, _, rest = head.partition("{")
        if base != name:
            continue
        have = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
        if all(have.get(k, "").strip('"') == v for k, v in labels.items()):
            total += float(value)
    return total


class UploadWatch:
    """Polls a target's count of bytes PUT, to time its upload phase (first PUT to durable)."""

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read
        self.first: float | None = None
        self._stop = threading.Event()
        self._base = read()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                if self.read() > self._base:
                    self.first = time.perf_counter()
                    return
            except Exception:  # a missed sample only blurs the figure
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def timed_save(r: Result, sd: dict, path: str, durable: Callable[[], None] | None,
               put_bytes: Callable[[], float] | None = None) -> None:
    import torch

    drop_caches()
    watch = UploadWatch(put_bytes) if put_bytes else None
    t0 = time.perf_counter()
    torch.save(sd, path)
    r.returns.append(time.perf_counter() - t0)
    if durable is None:
        return
    durable()
    end = time.perf_counter()
    r.durable.append(end - t0)
    if watch is not None:
        watch.stop()
        if watch.first is not None:
            r.uploading.append(end - max(t0, watch.first))


def run_cachefs(name: str, sd: dict, work: str, meta_url: str, s3: Gateway, writeback: bool,
                repeat: int, extra: list[str]) -> Result:
    target = Cachefs(name, os.path.join(work, f"mnt-{name.replace(' ', '-')}"), meta_url, work,
                     (["--writeback"] if writeback else []) + extra)
    target.setup(s3)
    mp, r = target.mountpoint, Result(name)

    def put_bytes() -> float:
        with open(os.path.join(mp, ".stats")) as f:
            return put_bytes_from(f.read(), "cachefs_object_bytes_total", op="put")

    try:
        for i in range(repeat):
            flush = (lambda: target._cli("flush", mp)) if writeback else (lambda: None)
            timed_save(r, sd, os.path.join(mp, f"ckpt{i}.pt"), flush, put_bytes)
    finally:
        target.teardown()
    return r


def run_juicefs(sd: dict, work: str, meta_url: str, s3: Gateway, repeat: int) -> Result:
    port = free_port()
    target = JuiceFS("JuiceFS --writeback", os.path.join(work, "mnt-juicefs"), meta_url, work,
                     ["--writeback", "--metrics", f"127.0.0.1:{port}"])
    target.setup(s3)

    def put_bytes() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return put_bytes_from(resp.read().decode(), "juicefs_object_request_data_bytes", method="PUT")

    def drained() -> None:
        """JuiceFS keeps write-back blocks under <cache>/<uuid>/rawstaging until uploaded."""
        while [f for d, _, fs in os.walk(target.cache) if "rawstaging" in d for f in fs]:
            time.sleep(0.05)

    r = Result(target.name)
    try:
        for i in range(repeat):
            timed_save(r, sd, os.path.join(target.mountpoint, f"ckpt{i}.pt"), drained, put_bytes)
    finally:
        target.teardown()
    return r


def render(results: list[Result], size: int, raw_put: float) -> str:
    local = next((r for r in results if r.name == "local dir"), None)
    jfs = next((r for r in results if r.name.startswith("JuiceFS")), None)
    rows = ["| target | torch.save returns (s) | vs local dir | vs JuiceFS --writeback | durable in S3 (s) "
            "| size / durable, MiB/s | upload phase, MiB/s | upload phase / raw PUT |",
            "|---|---|---|---|---|---|---|---|"]

    def fmt(x: float | None, spec: str, unit: str = "") -> str:
        return "-" if x is None else f"{x:{spec}}{unit}"

    for r in results:
        ret, dur, upt = r.best(r.returns), r.best(r.durable), r.best(r.uploading)
        vs_local = ret / local.best(local.returns) if local else None
        vs_jfs = ret / jfs.best(jfs.returns) if jfs else None
        overall = size / MiB / dur if dur else None
        phase = size / MiB / upt if upt else None
        rows.append(f"| {r.name} | {ret:.2f} | {fmt(vs_local, '.2f', 'x')} | {fmt(vs_jfs, '.2f', 'x')} "
                    f"| {fmt(dur, '.2f')} | {fmt(overall, '.0f')} | {fmt(phase, '.0f')} "
                    f"| {fmt(phase and phase / raw_put, '.2f', 'x')} |")
    rows.append(f"| raw PUT, 16 threads x 4 MiB (boto3) | - | - | - | - | - | {raw_put:.0f} | 1.00x |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="MiB of state dict (default 1024)")
    ap.add_argument("--repeat", type=int, default=2, help="saves per target, the best counts (default 2)")
    ap.add_argument("--targets", default="local,memfs,cachefs,cachefs-wb,juicefs")
    ap.add_argument("--cachefs-flags", default="", help="extra `cachefs mount` flags for both cachefs targets")
    ap.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/checkpoint.py: run as root (it mounts file systems and drops caches)", file=sys.stderr)
        return 1
    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench/checkpoint.py: needs PyTorch (pip install torch==2.13.0)", file=sys.stderr)
        return 1
    size = a.size * MiB
    wanted = a.targets.split(",")
    work = tempfile.mkdtemp(prefix="cachefs-ckpt-")
    redis = RedisServer()
    results: list[Result] = []

    def on_fresh_s3(fn: Callable[[Gateway], T]) -> T:
        s3 = Gateway()
        try:
            return fn(s3)
        finally:
            s3.stop()

    try:
        sd = state_dict(size)
        size = sum(t.numel() * t.element_size() for t in sd.values())
        raw_put = on_fresh_s3(lambda s3: statistics.median(raw_put_throughput(s3, size) for _ in range(2)))
        if "local" in wanted:
            local = os.path.join(work, "local")
            os.makedirs(local)
            r = Result("local dir")
            for i in range(a.repeat):
                timed_save(r, sd, os.path.join(local, f"ckpt{i}.pt"), None)
            results.append(r)
        if "memfs" in wanted:
            memfs = MemFS("Python FUSE ceiling", os.path.join(work, "mnt-memfs"))
            memfs.setup(None)
            r = Result(memfs.name)
            try:
                for i in range(a.repeat):
                    timed_save(r, sd, os.path.join(memfs.mountpoint, f"ckpt{i}.pt"), None)
                    os.unlink(os.path.join(memfs.mountpoint, f"ckpt{i}.pt"))  # it holds files in memory
            finally:
                memfs.teardown()
            results.append(r)
        if "cachefs" in wanted:
            results.append(on_fresh_s3(lambda s3: run_cachefs(
                "cachefs write-through", sd, work, redis.url(1), s3, False, a.repeat,
                a.cachefs_flags.split())))
        if "cachefs-wb" in wanted:
            results.append(on_fresh_s3(lambda s3: run_cachefs(
                "cachefs write-back", sd, work, redis.url(2), s3, True, a.repeat,
                a.cachefs_flags.split())))
        if "juicefs" in wanted and ensure_juicefs():
            results.append(on_fresh_s3(lambda s3: run_juicefs(sd, work, redis.url(3), s3, a.repeat)))
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    table = render(results, size, raw_put)
    print(table)
    if not a.no_results:
        write_results(table, a, size)
    return 0


def write_results(table: str, a: argparse.Namespace, size: int) -> None:
    import torch

    import cachefs

    juicefs = subprocess.run(["juicefs", "version"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("juicefs") else f"JuiceFS {JUICEFS_VERSION} not installed"
    text = f"""## Checkpoints: torch.save onto the mount (`bench/checkpoint.py`)

Measured by `python bench/checkpoint.py --size {a.size} --repeat {a.repeat}` on {time.strftime('%Y-%m-%d')},
all targets in one run: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()},
torch {torch.__version__}, cachefs {cachefs.__version__}, {juicefs}; one redis-server and a fresh S3 server
({Gateway.name}) for each target on loopback; "Python FUSE ceiling" is `bench/memfs.py`, a pyfuse3 file
system that keeps writes in memory and does nothing else. A state dict of {size / MiB:.0f} MiB (float32 tensors
of 16 MiB) saved with `torch.save`, page cache dropped first; best of {a.repeat}. "returns" is how long training
is blocked;
"durable" is until `cachefs flush` returns (cachefs write-back), until JuiceFS's rawstaging directory is
empty (JuiceFS), or the return itself (write-through). "size / durable" counts from the start of the
save; the "upload phase" runs from the first PUT (seen in the target's own metrics) to durable, and is
compared with parallel 4 MiB PUTs from boto3 to a fresh server of the same kind in the same run. cachefs write-back lets
uploads wait while the writer is staging (`--upload-defer`, default 30 s), so its upload phase starts
about when torch.save returns; JuiceFS uploads while it writes.

{table}
"""
    replace_section("checkpoint", text)


if __name__ == "__main__":
    sys.exit(main())
