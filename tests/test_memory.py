"""Bounded memory: one reader streams a 4 GiB file while another writes one; the mount's RSS
stays under --buffer-size + 200 MiB."""

from __future__ import annotations

import os
import threading

import pytest

from .test_bigfile import peak_rss_mib

pytestmark = [pytest.mark.mount, pytest.mark.slow]
SIZE = 4 << 30
MB = 1 << 20


def write_file(path: str, seed: int) -> None:
    pattern = os.urandom(MB)
    with open(path, "wb", buffering=0) as f:
        for i in range(SIZE // MB):
            f.write(pattern[:-8] + (i * 7919 + seed).to_bytes(8, "little"))


def test_rss_bounded_while_streaming(volumes, mounts, capsys):
    buffer_mib = 300
    mp = mounts.mount(volumes.create("sqlite", "file"), "--buffer-size", str(buffer_mib), "--cache-size", "512")
    write_file(os.path.join(mp, "a"), 1)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    errors = []

    def reader() -> None:
        try:
            n = 0
            with open(os.path.join(mp, "a"), "rb", buffering=0) as f:
                while chunk := f.read(MB):
                    assert chunk[-8:] == (n * 7919 + 1).to_bytes(8, "little")
                    n += 1
            assert n == SIZE // MB
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def writer() -> None:
        try:
            write_file(os.path.join(mp, "b"), 2)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    peak = peak_rss_mib(mounts.pid(mp))
    with capsys.disabled():
        print(f"\n[memory] peak RSS {peak:.0f} MiB with --buffer-size {buffer_mib} (bound {buffer_mib + 200})")
    assert peak < buffer_mib + 200
