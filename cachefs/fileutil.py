"""Writing a file so that a crash never leaves it torn: a temporary name, then a rename."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

TMP_MARK = ".tmp."


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
            os.makedirs(os.path.dirname(path), exist_ok=True)
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
        with open(tmp, "wb") as f:
            f.writelines(parts)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    replace_via_temp(path, write, make_parents)
