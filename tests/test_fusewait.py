"""The FUSE shell's wait for the next request (cachefs/fusewait.py): on a pipe standing in for
the device, a queued request is taken without parking, never while another task is parked on
the device, at most STREAK times in a row, and a closed device ends the loop; on a real mount,
parallel readers get right bytes and requests are taken from the queue."""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import time

import pyfuse3
import pytest
import trio

from cachefs import fusewait
from cachefs.fusewait import MISSES, STREAK, FuseWait

from .test_cache import stats


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_queued_request_is_taken_without_parking(pipe):
    r, w = pipe
    wait = FuseWait(r)

    async def main() -> None:
        os.write(w, b"x")
        for _ in range(STREAK):
            assert await wait() is True  # no checkpoint: nothing else could have run
        assert wait.taken == STREAK
        # the streak is spent: the next wait parks (a checkpoint) although a request is queued
        ran = []

        async def other() -> None:
            ran.append(1)

        async with trio.open_nursery() as n:
            n.start_soon(other)
            assert await wait() is True
            assert ran == [1]
        assert wait.taken == STREAK

    trio.run(main)


def test_nothing_queued_parks_until_a_request_comes(pipe):
    r, w = pipe
    wait = FuseWait(r)

    async def main() -> None:
        with trio.move_on_after(0.2) as scope:
            await wait()
        assert scope.cancelled_caught  # nothing queued: it waited
        threading.Timer(0.1, os.write, (w, b"x")).start()
        with trio.fail_after(5):
            assert await wait() is True
        assert wait.taken == 0

    trio.run(main)


def test_no_request_is_taken_while_a_task_is_parked(pipe):
    """A task parked on the device reads as soon as it runs; taking its request from under it
    would leave it blocked in read(2) with the whole loop."""
    r, w = pipe
    wait = FuseWait(r)
    order = []

    async def parked() -> None:
        assert await wait() is True
        order.append("parked")

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(parked)
            await trio.sleep(0.05)  # parked is in wait_readable now
            os.write(w, b"x")
            assert await wait() is True  # must not take it at once: parked goes first
            order.append("second")
        assert wait.taken == 0

    trio.run(main)
    assert order[0] == "parked"


def test_a_closed_device_ends_every_waiter(pipe):
    r, _ = pipe
    wait = FuseWait(r)
    results = []

    async def waiter() -> None:
        results.append(await wait())

    async def main() -> None:
        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(waiter)
            await trio.sleep(0.05)
            trio.lowlevel.notify_closing(r)  # what pyfuse3.terminate does
        assert await wait() is False

    trio.run(main)
    assert results == [False, False, False]


def test_busy_polling_finds_a_request_that_comes_soon(pipe):
    r, w = pipe
    wait = FuseWait(r, busy_poll_us=2_000_000)

    async def main() -> None:
        threading.Timer(0.05, os.write, (w, b"x")).start()
        assert await wait() is True  # found while polling: no park, no yield
        assert (wait.taken, wait.polled) == (1, 1)

    trio.run(main)


def test_busy_polling_stops_after_misses_and_comes_back(pipe):
    r, w = pipe
    wait = FuseWait(r, busy_poll_us=100_000)

    async def timed_miss() -> float:
        start = time.monotonic()
        with trio.move_on_after(0.01):
            await wait()
        return time.monotonic() - start

    async def main() -> None:
        for _ in range(MISSES):
            assert await timed_miss() >= 0.1  # polled the whole 100 ms, then parked
        assert await timed_miss() < 0.09  # polling has stopped: parks at once
        # a request arriving soon after a park turns polling back on
        threading.Timer(0.02, os.write, (w, b"x")).start()
        assert await wait() is True
        os.read(r, 1)
        threading.Timer(0.05, os.write, (w, b"x")).start()
        assert await wait() is True
        assert wait.polled == 1

    trio.run(main)


def test_no_busy_polling_while_a_request_waits_for_something_else(pipe):
    r, _ = pipe
    busy = [True]
    wait = FuseWait(r, busy_poll_us=200_000, waiting=lambda: busy[0])

    async def main() -> None:
        start = time.monotonic()
        with trio.move_on_after(0.01):
            await wait()
        assert time.monotonic() - start < 0.15  # a thread's answer may be what is awaited
        busy[0] = False
        start = time.monotonic()
        with trio.move_on_after(0.01):
            await wait()
        assert time.monotonic() - start >= 0.2

    trio.run(main)


def test_install_needs_exactly_one_new_device(monkeypatch):
    monkeypatch.setattr(pyfuse3, "_wait_fuse_readable", pyfuse3._wait_fuse_readable)
    before = pyfuse3._wait_fuse_readable
    assert fusewait.install(set()) is None
    assert fusewait.install({5, 6}) is None
    assert pyfuse3._wait_fuse_readable is before
    monkeypatch.delattr(pyfuse3, "_wait_fuse_readable")
    assert fusewait.install({5}) is None


@pytest.mark.mount
def test_parallel_direct_readers_of_a_mount(volumes, mounts):
    url = volumes.create("redis", "s3")
    mp = mounts.mount(url)
    data = os.urandom(8 << 20)
    path = os.path.join(mp, "f")
    with open(path, "wb") as f:
        f.write(data)
    bad = []

    def reader(seed: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        m = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
        try:
            for i in range(400):
                off = ((seed * 7919 + i * 104729) % (len(data) // 4096)) * 4096
                n = os.preadv(fd, [m], off)
                if n != 4096 or m[:] != data[off : off + 4096]:
                    bad.append(off)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    assert stats(mp)['cachefs_fuse_requests_read_at_once{how="queued"}'] > 0
