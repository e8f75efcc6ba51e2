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

pyfuse3 (3.x) looks _wait_fuse_readable up in its module at every call, which is what lets this
replace it; install() checks it is there and leaves pyfuse3 alone when it is not.
"""

from __future__ import annotations

import logging
import os
import select

import pyfuse3
import trio

log = logging.getLogger(__name__)

STREAK = 16


class FuseWait:
    """The replacement for pyfuse3._wait_fuse_readable: True when a request can be read without
    blocking, False when the loop must end (the device closed by pyfuse3.terminate)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._lock = trio.Lock()
        self._parked = 0  # tasks inside wait_readable, or woken from it and not yet run
        self._streak = 0
        self._closed = False
        self.taken = 0  # requests taken without parking (tests, metrics)

    async def __call__(self) -> bool:
        if self._closed:
            return False
        if not self._parked and self._streak < STREAK and self._poll.poll(0):
            self._streak += 1
            self.taken += 1
            return True
        self._streak = 0
        async with self._lock:
            if self._closed:
                return False
            self._parked += 1
            try:
                await trio.lowlevel.wait_readable(self.fd)
            except (trio.ClosedResourceError, OSError):
                self._closed = True
                return False
            finally:
                self._parked -= 1
        return True


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


def install(new_fds: set[int]) -> FuseWait | None:
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
    wait = FuseWait(fd)
    pyfuse3._wait_fuse_readable = wait
    return wait
