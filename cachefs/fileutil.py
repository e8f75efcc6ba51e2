"""Writing a file so that a crash never leaves it torn: a temporary name, then a rename; and
keeping what the node holds of a volume's data private to root (caches, staging, a file object
store hold file contents that the mount's permissions do not guard)."""

from __future__ import annotations

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
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb") as f:
            f.writelines(parts)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    replace_via_temp(path, write, make_parents)
