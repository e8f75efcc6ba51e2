"""The FUSE shell's thread pool: answers, exceptions and its bound on concurrent calls."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from cachefs.threadhop import ThreadHop


def test_value_and_exception_reach_the_task() -> None:
    hop = ThreadHop(2)

    async def main() -> None:
        name = await hop.run(lambda: threading.current_thread().name)
        assert name.startswith("fuse_")

        def fail() -> None:
            raise OSError("boom")

        with pytest.raises(OSError, match="boom"):
            await hop.run(fail)
        assert await hop.run(lambda: 41 + 1) == 42

    try:
        trio.run(main)
    finally:
        hop.close()


def test_pool_bounds_concurrent_calls() -> None:
    hop = ThreadHop(3)
    lock = threading.Lock()
    running = peak = 0

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    async def main() -> None:
        async with trio.open_nursery() as n:
            for _ in range(12):
                n.start_soon(hop.run, work)

    start = time.monotonic()
    try:
        trio.run(main)
    finally:
        hop.close()
    assert peak == 3  # all three threads were used, never a fourth
    assert time.monotonic() - start >= 4 * 0.02  # 12 calls of 20 ms on 3 threads
