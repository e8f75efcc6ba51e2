"""Where the kernel believes each directory is, so that a directory another node moved does
not leave a stale alias behind.

The kernel keeps one dentry per directory inode. When another node renames a directory, this
node's kernel still has it under its old name; the first lookup under the new name must move
that alias, which the kernel cannot do while it holds the rename lock of an operation on this
mount (a rename, say), and the caller gets ESTALE, an errno rename(2) is not supposed to
return. So before a lookup answer names a directory at a new place, its old entry is dropped
from the kernel's cache (waiting briefly: the old parent may be locked by the very operation
that asked, and then the entry goes once that operation is done). While such an entry is
still waiting to go, lookups of the directory under its new name answer ENOENT, as if the
other node's rename had not reached this one yet: the kernel would answer ESTALE otherwise.
"""

from __future__ import annotations

import logging
import threading

import pyfuse3

log = logging.getLogger("cachefs.fuse")

LIMIT = 200_000  # directories remembered; past that the table starts afresh
WAIT = 0.2  # seconds a lookup waits for the kernel to drop a stale entry


class DirectoryPlaces:
    """Thread-safe; the trio thread records, worker threads drop."""

    def __init__(self) -> None:
        self._where: dict[int, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        self._dropping: set[int] = set()  # directories whose stale entry the kernel still holds

    def dropping(self, ino: int) -> bool:
        return ino in self._dropping

    def drop(self, ino: int, parent: int, name: bytes, wait: float = WAIT) -> None:
        """Make the kernel forget the directory's stale entry parent/name; give up waiting
        after `wait` seconds (it is dropped once the operation holding its parent is done).
        Blocking: call it from a worker thread."""

        def run() -> None:
            try:
                pyfuse3.invalidate_entry(parent, name)
            except OSError:
                pass  # the kernel no longer has it
            except Exception as e:
                log.debug("could not drop the kernel's entry %d/%r: %s", parent, name, e)
            finally:
                self._dropping.discard(ino)

        self._dropping.add(ino)
        t = threading.Thread(target=run, name="inval-entry", daemon=True)
        t.start()
        t.join(wait)

    def seen(self, ino: int, parent: int, name: bytes) -> tuple[int, bytes] | None:
        """The kernel is told directory ino is parent/name: its stale old place, if any."""
        with self._lock:
            old = self._where.get(ino)
            if len(self._where) >= LIMIT:
                self._where.clear()
            self._where[ino] = (parent, name)
        return old if old is not None and old != (parent, name) else None

    def gone(self, ino: int) -> None:
        with self._lock:
            self._where.pop(ino, None)

    def moved(self, parent: int, name: bytes, new_parent: int, new_name: bytes) -> None:
        """This mount renamed parent/name (the kernel moves its own dentry)."""
        with self._lock:
            for ino, place in self._where.items():
                if place == (parent, name):
                    self._where[ino] = (new_parent, new_name)
                    return

