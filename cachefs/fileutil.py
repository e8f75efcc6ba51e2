"""Writing a file so that a crash never leaves it torn: a temporary name, then a rename; and
keeping what the node holds of a volume's data private to root (caches, staging, a file object
store hold file contents that the mount's permissions do not guard)."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable

TMP_MARK = ".tmp."
FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dirs(path: str) -> None:
    """Create path and its missing parents as 0700 (os.makedirs gives its mode to the last
    level only)."""
    missing = []
    cur = os.path.abspath(path)
    while not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(d):
                raise


def tighten(path: str, mode: int = DIR_MODE) -> None:
    """Take group and other access away from an existing file or directory (caches and staging
    left by versions that made them world-readable); a 0700 directory guards all below it."""
    try:
        if os.lstat(path).st_mode & 0o077:
            os.chmod(path, mode)
    except OSError:
        pass


def replace_via_temp(path: str, write: Callable[[str], None], make_parents: bool = True) -> None:
    """Call write(tmp) to create and fill a temporary file next to path, then rename it to path;
    creates missing parent directories (when make_parents) if write's open finds none. On
    failure the temporary file is removed and the OSError propagates."""
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        try:
            write(tmp)
        except FileNotFoundError:
            if not make_parents:
                raise
            private_dirs(os.path.dirname(path))
            write(tmp)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_atomic(path: str, *parts: bytes, make_parents: bool = True, fsync: bool = False) -> None:
    """Write the parts, one after another, to path via a temporary name in the same directory
    (no joined copy); creates missing parent directories when make_parents; fsync makes the
    content durable before the rename (the directory is the caller's to sync)."""

    def write(tmp: str) -> None:
        # writev on the descriptor: a file object around it cost ~30 us per cache entry
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            write_all(fd, parts)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    replace_via_temp(path, write, make_parents)


def write_all(fd: int, parts: tuple[bytes, ...] | list[bytes]) -> None:
    """Write the parts at the descriptor's position, all of them (writev may write less)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.writev(fd, views)
        if n <= 0:
            raise OSError(errno.EIO, "writev wrote nothing")
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
