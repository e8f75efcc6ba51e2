"""Randomized integrity: thousands of operations on a mounted file and on a reference file on
local disk, compared byte for byte as they go; several seeds, both engines, both backends."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

pytestmark = [pytest.mark.mount, pytest.mark.slow]
CHUNK = 64 << 20
OPS = 2500


def run_sequence(mp: str, ref_dir: str, seed: int, ops: int = OPS) -> None:
    rng = random.Random(seed)
    path, ref_path = os.path.join(mp, f"f{seed}"), os.path.join(ref_dir, f"ref{seed}")
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    rd = os.open(ref_path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)

    def offset() -> int:
        r = rng.random()
        if r < 0.1:
            return CHUNK - rng.randint(0, 300_000)  # across the chunk boundary
        if r < 0.15:
            return rng.randint(0, 12 << 20)
        return rng.randint(0, 1 << 20)

    try:
        for step in range(ops):
            r = rng.random()
            if r < 0.40:
                off = offset()
                n = rng.choice([1, rng.randint(1, 4096), rng.randint(1, 200_000), rng.randint(1, 2 << 20)])
                data = rng.randbytes(n)
                assert os.pwrite(fd, data, off) == n
                os.pwrite(rd, data, off)
            elif r < 0.47:
                size = rng.choice([0, rng.randint(0, 2 << 20), offset()])
                os.ftruncate(fd, size)
                os.ftruncate(rd, size)
            elif r < 0.50:
                os.fsync(fd)
            elif r < 0.53:
                os.close(fd)
                fd = os.open(path, os.O_RDWR)
            else:
                off = offset() if rng.random() < 0.5 else rng.randint(0, max(1, os.fstat(rd).st_size))
                n = rng.randint(1, 600_000)
                got, want = os.pread(fd, n, off), os.pread(rd, n, off)
                assert got == want, f"seed {seed} step {step}: read {n}@{off} differs"
            if step % 250 == 0:
                assert os.fstat(fd).st_size == os.fstat(rd).st_size, f"seed {seed} step {step}: size"
        os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(rd).st_size
        assert os.fstat(fd).st_size == size
        h1, h2 = hashlib.sha256(), hashlib.sha256()
        for off in range(0, size, 8 << 20):
            h1.update(os.pread(fd, 8 << 20, off))
            h2.update(os.pread(rd, 8 << 20, off))
        assert h1.hexdigest() == h2.hexdigest()
    finally:
        os.close(fd)
        os.close(rd)


@pytest.mark.parametrize("engine,storage", [("sqlite", "file"), ("sqlite", "s3"), ("redis", "file"),
                                            ("redis", "s3")])
def test_random_operations(engine, storage, volumes, mounts, tmp_path):
    seeds = [11, 12, 13]
    for i, seed in enumerate(seeds):
        extra = ("--block-size", "64K", "--compress", "lz4") if i % 2 else ()
        mp = mounts.mount(volumes.create(engine, storage, extra=extra))
        run_sequence(mp, str(tmp_path), seed)
        mounts.umount(mp)
