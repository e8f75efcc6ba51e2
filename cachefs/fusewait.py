"""How pyfuse3's request loop waits for the next request.

pyfuse3 parks a task on trio.lowlevel.wait_readable, behind a trio.Lock, before it reads every
request: two trips through trio's scheduler and an epoll_ctl/epoll_wait per request, even when
the next request is already queued (with several readers it nearly always is). Here a request
already queued is taken at once: one poll(2) with a zero timeout, no yield. Only when nothing
is queued does a task park as pyfuse3's own wait does.

Reading the FUSE device blocks the whole event loop when nothing is queued, so a request may be
taken without parking only while no task is parked on (or woken from) the device: such a task
reads as soon as it runs, and must find the request it was woken for. A task takes at most
STREAK requests in a row without yielding, so the loop's other tasks (thread results, the
io_uring, timers) wait for at most that many requests.

When nothing is queued, the loop may first poll for the next request for a few tens of
microseconds (FuseWait's busy_poll_us, the mount's --busy-poll) rather than sleep at once.

pyfuse3 (3.x) looks _wait_fuse_readable up in its module at every call, which is what lets this
replace it; install() checks it is there and leaves pyfuse3 alone when it is not.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable

import pyfuse3
import trio

log = logging.getLogger(__name__)

STREAK = 16
MISSES = 4


class FuseWait:
    """The replacement for pyfuse3._wait_fuse_readable: True when a request can be read without
    blocking, False when the loop must end (the device closed by pyfuse3.terminate).

    busy_poll_us: before parking, keep polling this long for the next request. A parked loop is
    woken by the kernel, and on the machines we measured that wake-up cost more than the
    request (an in-memory file system answered 18k 4k reads/s from one reader parked, 43k
    polling). The polling is adaptive: after MISSES polls in a row that found nothing it stops,
    and it starts again when a request arrives within that time of the loop parking. It never
    polls while waiting() says a request waits for something else (a thread, the io_uring,
    Redis): only the loop can deliver that answer, and the next request may depend on it."""

    def __init__(self, fd: int, busy_poll_us: int = 0, waiting: Callable[[], bool] = lambda: False) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._lock = trio.Lock()
        self._parked = 0  # tasks inside wait_readable, or woken from it and not yet run
        self._streak = 0
        self._spin_ns = busy_poll_us * 1000
        self._misses = 0 if busy_poll_us else MISSES
        self._waiting = waiting
        self._closed = False
        self.taken = 0  # requests taken without parking (metrics, tests)
        self.polled = 0  # of which found by busy polling

    async def __call__(self) -> bool:
        if self._closed:
            return False
        if not self._parked and self._streak < STREAK and (self._poll.poll(0) or self._busy_poll()):
            self._streak += 1
            self.taken += 1
            return True
        self._streak = 0
        async with self._lock:
            if self._closed:
                return False
            self._parked += 1
            since = time.perf_counter_ns()
            try:
                await trio.lowlevel.wait_readable(self.fd)
            except (trio.ClosedResourceError, OSError):
                self._closed = True
                return False
            finally:
                self._parked -= 1
            if self._spin_ns and time.perf_counter_ns() - since < self._spin_ns:
                self._misses = 0  # polling would have caught this one
        return True

    def _busy_poll(self) -> bool:
        if self._misses >= MISSES or self._waiting():
            return False
        end = time.perf_counter_ns() + self._spin_ns
        poll = self._poll.poll
        while time.perf_counter_ns() < end:
            if poll(0):
                self._misses = 0
                self.polled += 1
                return True
        self._misses += 1
        return False


def device_fds() -> set[int]:
    """This process's open FUSE device descriptors: pyfuse3 does not export the one its init
    opened, so the caller takes the one that appeared across pyfuse3.init."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.add(int(name))
        except OSError:
            continue
    return found


def init(ops: pyfuse3.Operations, mountpoint: str, options: set[str], busy_poll_us: int = 0,
         waiting: Callable[[], bool] = lambda: False) -> FuseWait | None:
    """pyfuse3.init (its RuntimeError included), then FuseWait installed on the device
    descriptor that init opened; None when pyfuse3's own wait is kept (install)."""
    before = device_fds()
    pyfuse3.init(ops, mountpoint, options)
    return install(device_fds() - before, busy_poll_us, waiting)


def install(new_fds: set[int], busy_poll_us: int = 0, waiting: Callable[[], bool] = lambda: False) -> FuseWait | None:
    """Put FuseWait in pyfuse3's loop, after pyfuse3.init opened the one descriptor in new_fds;
    None (pyfuse3's own wait kept) when this pyfuse3 has no _wait_fuse_readable or the device
    is not known for sure."""
    if not callable(getattr(pyfuse3, "_wait_fuse_readable", None)):
        log.info("pyfuse3 %s has no _wait_fuse_readable: its own request wait is kept",
                 getattr(pyfuse3, "__version__", "?"))
        return None
    if len(new_fds) != 1:
        log.info("FUSE device descriptor not found: pyfuse3's own request wait is kept")
        return None
    (fd,) = new_fds
    wait = FuseWait(fd, busy_poll_us, waiting)
    pyfuse3._wait_fuse_readable = wait
    return wait
