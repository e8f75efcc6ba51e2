"""What several commands share: an opened engine with its settings, and the files under paths."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cachefs.errors import ConfigError

if TYPE_CHECKING:
    from cachefs.meta import BaseMeta
    from cachefs.meta.types import Settings


@contextlib.contextmanager
def opened(meta_url: str) -> Iterator[tuple[BaseMeta, Settings]]:
    """A formatted volume's engine and settings, closed again on the way out."""
    from cachefs.meta import open_meta

    meta = open_meta(meta_url)
    try:
        yield meta, meta.load()
    finally:
        meta.close_engine()


def files_under(paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, inode, size) of every regular file under the paths."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        if os.path.isdir(path):
            for d, _dirs, names in os.walk(path):
                for n in sorted(names):
                    full = os.path.join(d, n)
                    try:
                        st = os.lstat(full)
                    except OSError:
                        continue
                    if os.path.isfile(full) and not os.path.islink(full):
                        out.append((full, st.st_ino, st.st_size))
        elif os.path.isfile(path):
            out.append((path, st.st_ino, st.st_size))
    return out
