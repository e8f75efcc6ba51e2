"""The FUSE shell's io_uring (cachefs/uring.py) on its own, in a trio loop: concurrent reads
answer the right bytes, a read past the end comes back short, errors come back as OSError,
and a full ring says so instead of queueing."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from cachefs.uring import Ring


@pytest.fixture
def ring():
    r = Ring.open(entries=32)
    if r is None:
        pytest.skip("io_uring is not available here")
    yield r
    r.close()


def test_reads_concurrent_short_and_failing(ring, tmp_path):
    data = os.urandom(1 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    got: list[tuple[int, bytes]] = []

    async def one(off: int) -> None:
        got.append((off, bytes(await ring.read(fd, 4096, off))))

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(ring.reap)
            for rnd in range(3):
                async with trio.open_nursery() as m:
                    for i in range(ring.entries):
                        m.start_soon(one, (i * 7919 + rnd * 13) % ((1 << 20) - 4096))
            assert bytes(await ring.read(fd, 100, (1 << 20) - 10)) == data[-10:]
            assert bytes(await ring.read(fd, 10, 1 << 21)) == b""
            with pytest.raises(OSError) as e:
                await ring.read(fd + 1000, 10, 0)
            assert e.value.errno == errno.EBADF
            n.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        os.close(fd)
    assert len(got) == 3 * ring.entries
    assert all(b == data[off : off + 4096] for off, b in got)


def test_a_full_ring_refuses_instead_of_queueing(ring, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    refused = []

    async def one() -> None:
        try:
            await ring.read(fd, 10, 0)
        except OSError as e:
            refused.append(e.errno)

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(ring.reap)
            async with trio.open_nursery() as m:
                for _ in range(ring.entries + 5):
                    m.start_soon(one)
            n.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        os.close(fd)
    assert refused == [errno.EAGAIN] * 5
    assert not ring.busy()
