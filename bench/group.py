"""Cache group benchmark: what the group saves in object-store traffic and what a peer-served
read costs, against one S3 server (bench/s3server.py) and one redis-server, every member a
mount of its own on this machine (its block service on its own loopback address).

    python bench/group.py                  # 512 MiB dataset, 3 rounds (about 15 minutes)
    python bench/group.py --size 64 --rounds 1 --no-results     # smoke

Jobs, each from empty caches (page cache dropped, caches emptied, mounts fresh):
- cold first epoch, N = 1, 2, 3 members reading the dataset at once, without and with the
  group: seconds, and bytes (and GETs) the members fetched from the object store;
- warm sequential read: from this node's own disk cache, against from a peer's (a --no-sharing
  reader whose every block comes from the one member that holds it);
- pooled capacity: 3 members with caches of 40 % of the dataset each, two epochs: the second
  epoch's object-store bytes against the dataset's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.results import replace_section  # noqa: E402
from bench.s3server import KEY, SECRET, Gateway  # noqa: E402
from bench.targets import drop_caches  # noqa: E402
from cachefs.metrics import parse_text  # noqa: E402
from tests.servers import RedisServer, free_port  # noqa: E402

MiB = 1 << 20


def cli(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "cachefs.cli", *args], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"cachefs {' '.join(args[:2])} failed: {res.stderr.strip()}")
    return res.stdout


class Members:
    """Mounts of one volume, torn down together."""

    def __init__(self, url: str, work: str) -> None:
        self.url, self.work, self.mps = url, work, []

    def mount(self, n: int, *flags: str, group: bool = True, cache_size: int = 0) -> str:
        mp = os.path.join(self.work, f"m{len(self.mps)}-{time.monotonic_ns()}")
        cache = mp + "-cache"
        os.makedirs(mp)
        extra = ["--cache-size", str(cache_size)] if cache_size else []
        if group:
            extra += ["--cache-group", "bench", "--group-listen", f"127.0.0.{n + 1}:{free_port()}"]
        cli("mount", self.url, mp, "--background", "--cache-dir", cache, "--log", cache + ".log",
            "--heartbeat", "1", "--session-timeout", "6", *extra, *flags)
        self.mps.append(mp)
        return mp

    def wait_group(self, size: int, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(stat(mp).get("cachefs_group_members", 0) >= size for mp in self.mps):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the group did not reach {size} members")

    def close(self) -> None:
        for mp in self.mps:
            subprocess.run([sys.executable, "-m", "cachefs.cli", "umount", mp], capture_output=True)
            shutil.rmtree(mp + "-cache", ignore_errors=True)
        self.mps = []


def stat(mp: str) -> dict[str, float]:
    with open(os.path.join(mp, ".stats")) as f:
        return parse_text(f.read())


def fetched(mps: list[str]) -> tuple[float, float]:
    """(bytes, requests) the mounts got from the object store."""
    b = r = 0.0
    for mp in mps:
        s = stat(mp)
        b += sum(v for k, v in s.items() if k.startswith("cachefs_object_bytes_total") and 'op="get' in k)
        r += sum(v for k, v in s.items() if k.startswith("cachefs_object_requests_total") and 'op="get' in k)
    return b, r


def read_all(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def read_together(mps: list[str], name: str) -> float:
    """Seconds until every mount has read the file once, all at once."""
    digests: list[str] = []
    start = time.perf_counter()
    ts = [threading.Thread(target=lambda mp=mp: digests.append(read_all(os.path.join(mp, name)))) for mp in mps]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.perf_counter() - start
    assert len(set(digests)) == 1, "members read different bytes"
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="MiB of dataset (default 512)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/group.py: run as root (it mounts file systems)", file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix="cachefs-group-")
    redis, s3 = RedisServer(), Gateway()
    results: dict[str, list[float]] = {}

    def record(job: str, value: float) -> None:
        results.setdefault(job, []).append(value)

    try:
        url = redis.url(1)
        cli("format", url, "gbench", "--storage", "s3", "--bucket", s3.bucket_url("gbench"), "--access-key", KEY,
            "--secret-key", SECRET)
        writer = Members(url, work)
        mp = writer.mount(0, group=False)
        with open(os.path.join(mp, "data"), "wb") as f:
            for _ in range(a.size):
                f.write(os.urandom(MiB))
        writer.close()
        dataset = a.size * MiB
        for rnd in range(a.rounds):
            print(f"== round {rnd + 1}", flush=True)
            for n in (1, 2, 3):
                for group in (False, True):
                    m = Members(url, work)
                    try:
                        mps = [m.mount(i + 1, group=group) for i in range(n)]
                        if group:
                            m.wait_group(n)
                        drop_caches()
                        took = read_together(mps, "data")
                        got, gets = fetched(mps)
                        label = f"{n} member{'s' if n > 1 else ''}, {'group' if group else 'no group'}"
                        record(f"cold epoch: {label}: seconds", took)
                        record(f"cold epoch: {label}: object-store bytes / dataset", got / dataset)
                        record(f"cold epoch: {label}: GETs", gets)
                        print(f"   {label}: {took:.1f} s, {got / dataset:.2f}x the dataset fetched", flush=True)
                    finally:
                        m.close()
            # warm sequential read: own disk cache against a peer's
            m = Members(url, work)
            try:
                server = m.mount(1)
                read_all(os.path.join(server, "data"))  # its cache holds every block it owns: all of them
                drop_caches()
                t0 = time.perf_counter()
                read_all(os.path.join(server, "data"))
                record("warm read from the local disk cache: MiB/s", a.size / (time.perf_counter() - t0))
                reader = m.mount(2, "--no-sharing")
                m.wait_group(1)
                drop_caches()
                t0 = time.perf_counter()
                read_all(os.path.join(reader, "data"))
                record("warm read from a peer's cache: MiB/s", a.size / (time.perf_counter() - t0))
            finally:
                m.close()
            # pooled capacity
            m = Members(url, work)
            try:
                cache_mib = max(16, int(a.size * 0.4))
                mps = [m.mount(i + 1, cache_size=cache_mib) for i in range(3)]
                m.wait_group(3)
                epochs = []
                for _ in range(2):
                    drop_caches()
                    before = fetched(mps)[0]
                    for mp in mps:
                        read_all(os.path.join(mp, "data"))
                    epochs.append(fetched(mps)[0] - before)
                record("pooled capacity (3 caches of 40 %): epoch 1 object-store bytes / dataset", epochs[0] / dataset)
                record("pooled capacity (3 caches of 40 %): epoch 2 object-store bytes / dataset", epochs[1] / dataset)
                print(f"   pooled: epoch 1 {epochs[0] / dataset:.2f}x, epoch 2 {epochs[1] / dataset:.2f}x", flush=True)
            finally:
                m.close()
    finally:
        s3.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| job | median | rounds |", "|---|---|---|"]
    for job, vs in results.items():
        lines.append(f"| {job} | {statistics.median(vs):.2f} | {', '.join(f'{v:.2f}' for v in vs)} |")
    local = statistics.median(results["warm read from the local disk cache: MiB/s"])
    peer = statistics.median(results["warm read from a peer's cache: MiB/s"])
    lines.append(f"| peer-served / local warm read | {peer / local:.2f}x | |")
    table = "\n".join(lines)
    print(table)
    if not a.no_results:
        replace_section("group", f"""## Cache group (`bench/group.py`)

Measured by `python bench/group.py --size {a.size} --rounds {a.rounds}` on {time.strftime('%Y-%m-%d')}: a
{a.size} MiB file read by 1 to 3 mounts on one machine (2 cores), each its own cache dir and its block service
on its own loopback address; S3: {Gateway.name}; "object-store bytes / dataset" sums what the members fetched.

{table}
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
