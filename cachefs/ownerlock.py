"""Owner locks of a node's directories (a disk cache's, a write-back staging's): an flock on a
descriptor of this process, released when it is closed or the process dies.

Why a module of its own: flock belongs to the open file description, which fork shares. A
DataLoader worker forked from the keeper of a cache inherited its descriptors, so a worker
that outlived its parent (or a parent that closed its client while its workers ran) kept the
directory locked, and the next keeper of the node was told the cache was busy. A child closes
its inherited copies at once (closing them does not unlock: the parent's descriptor still
holds the lock) and forgets them, so an object it inherited cannot close a reused descriptor
number later.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading

_held: set[int] = set()
_guard = threading.Lock()


def take(path: str, flags: int, mode: int) -> int | None:
    """A descriptor of path holding its exclusive lock, or None when another process holds it."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    with _guard:
        _held.add(fd)
    return fd


def release(fd: int) -> None:
    """Give the lock up; nothing in a forked child (its copy was closed at the fork)."""
    with _guard:
        if fd not in _held:
            return
        _held.discard(fd)
    os.close(fd)


def _forked() -> None:
    global _guard
    _guard = threading.Lock()  # (another thread may have held it at the fork)
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_forked)
