"""A 2 GiB file through the mount: checksum, throughput and the mount process's peak RSS."""

from __future__ import annotations

import hashlib
import os
import random
import time

import pytest

pytestmark = [pytest.mark.mount, pytest.mark.slow]
SIZE = 2 << 30
BS = 1 << 20


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("engine,storage", [("sqlite", "file"), ("redis", "s3")])
def test_two_gib_file(engine, storage, volumes, mounts, capsys):
    mp = mounts.mount(volumes.create(engine, storage))
    path = os.path.join(mp, "big")
    rng = random.Random(5)
    pattern = [rng.randbytes(BS) for _ in range(16)]
    want = hashlib.sha256()
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for i in range(SIZE // BS):
            block = pattern[i % 16][:-8] + i.to_bytes(8, "little")
            want.update(block)
            f.write(block)
    write_s = time.perf_counter() - start
    assert os.path.getsize(path) == SIZE
    # read through a fresh open after the kernel's page cache is dropped
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    got = hashlib.sha256()
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(BS):
            got.update(chunk)
    read_s = time.perf_counter() - start
    assert got.hexdigest() == want.hexdigest()
    rss = peak_rss_mib(mounts.pid(mp))
    with capsys.disabled():
        print(f"\n[2 GiB {engine}+{storage}] write {SIZE / write_s / 2**20:.0f} MiB/s, "
              f"read {SIZE / read_s / 2**20:.0f} MiB/s, mount peak RSS {rss:.0f} MiB")
