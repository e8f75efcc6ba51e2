"""Writing a file so that a crash never leaves it torn: a temporary name, then a rename."""

from __future__ import annotations

import os
import uuid

TMP_MARK = ".tmp."


def write_atomic(path: str, *parts: bytes, make_parents: bool = True, fsync: bool = False) -> None:
    """Write the parts, one after another, to path via a temporary name in the same directory
    (no joined copy); creates missing parent directories when make_parents; fsync makes the
    content durable before the rename (the directory is the caller's to sync). On failure the
    temporary file is removed and the OSError propagates."""
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:
            if not make_parents:
                raise
            os.makedirs(os.path.dirname(path), exist_ok=True)
            f = open(tmp, "wb")
        with f:
            f.writelines(parts)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
