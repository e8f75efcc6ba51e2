"""Where the kernel may still hold each directory, so that a directory another node moved does
not leave a stale alias behind.

The kernel keeps one dentry per directory inode. When another node renames a directory, this
node's kernel still has it under its old name; the first lookup under the new name must move
that alias, which the kernel cannot do while any rename on this mount holds the rename lock,
and the caller gets ESTALE, an errno rename(2) is not supposed to return. So before an answer
names a directory at a new place, every other place the kernel may hold it at is dropped from
the kernel's cache (waiting briefly: the old parent may be locked by the very operation that
asked, and then the entry goes once that operation is done). While such an entry is still
waiting to go, lookups of the directory under its new name answer ENOENT, as if the other
node's rename had not reached this one yet: the kernel would answer ESTALE otherwise.

A directory can be claimed at more than one place at once: two lookups of it under different
names (the other node moved it to and fro between them) may be answered in either order. So a
place is forgotten only when an invalidation of it ends with no answer naming it since that
invalidation began. That is enough because the kernel holds the parent's lock from before it
asks until it has linked the answer, and an invalidation needs that lock: one that began
after an answer was given removes what that answer linked.

Files have the same trouble with their attributes: the kernel keeps a file's size and mtime
for the attr timeout and reads the file at that size. An open that finds them changed (its
close-to-open check read the engine's) drops the kernel's copy (KernelAttrs), or a stat
followed by an open on this node would read a file another node had grown at its old size.
"""

from __future__ import annotations

import errno
import itertools
import logging
import threading

import pyfuse3

log = logging.getLogger("cachefs.fuse")

LIMIT = 200_000  # places remembered; past that the table starts afresh
WAIT = 0.2  # seconds a lookup waits for the kernel to drop a stale entry

Place = tuple[int, bytes]  # (parent inode, name)


class DirectoryPlaces:
    """Thread-safe; the trio thread records, worker threads drop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, dict[Place, int]] = {}  # directory -> {place: stamp of its last answer}
        self._at: dict[Place, int] = {}  # place -> the directory last answered there
        self._inflight: dict[int, dict[Place, int]] = {}  # directory -> {place: invalidations running}
        self._stamps = itertools.count(1)

    def elsewhere(self, ino: int, parent: int, name: bytes) -> list[Place]:
        """The places other than parent/name the kernel may hold directory ino at."""
        with self._lock:
            return [p for p in self._held.get(ino, ()) if p != (parent, name)]

    def dropping(self, ino: int, parent: int, name: bytes) -> bool:
        """An invalidation of ino at a place other than parent/name has not finished."""
        with self._lock:
            return any(p != (parent, name) for p in self._inflight.get(ino, ()))

    def answered(self, ino: int, parent: int, name: bytes) -> None:
        """The kernel is told directory ino is at parent/name (a lookup, readdirplus, mkdir)."""
        place = (parent, name)
        with self._lock:
            if len(self._at) >= LIMIT:
                self._held.clear()
                self._at.clear()
            prev = self._at.get(place)
            if prev is not None and prev != ino:
                self._forget(prev, place)  # the kernel replaces the entry it had there
            self._claim(ino, place)

    def drop(self, ino: int, places: list[Place], wait: float = WAIT) -> None:
        """Make the kernel forget directory ino at each of places; give up waiting after `wait`
        seconds (an entry whose parent is locked goes once the operation holding it is done).
        Blocking: call it from a worker thread."""
        threads = []
        for place in places:
            with self._lock:
                stamp = self._held.get(ino, {}).get(place)
                running = self._inflight.setdefault(ino, {})
                running[place] = running.get(place, 0) + 1
            t = threading.Thread(target=self._invalidate, args=(ino, place, stamp), name="inval-entry",
                                 daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(wait)

    def _invalidate(self, ino: int, place: Place, stamp: int | None) -> None:
        try:
            pyfuse3.invalidate_entry(*place)
        except OSError:
            pass  # the kernel no longer has it
        except Exception as e:
            log.debug("could not drop the kernel's entry %d/%r: %s", place[0], place[1], e)
        finally:
            with self._lock:
                running = self._inflight.get(ino, {})
                running[place] -= 1
                if not running[place]:
                    del running[place]
                if not running:
                    self._inflight.pop(ino, None)
                if self._held.get(ino, {}).get(place) == stamp:
                    self._forget(ino, place)

    def removed(self, parent: int, name: bytes) -> None:
        """This mount removed the directory at parent/name (the kernel drops its own entry)."""
        with self._lock:
            ino = self._at.get((parent, name))
            if ino is not None:
                self._forget(ino, (parent, name))

    def moved(self, parent: int, name: bytes, new_parent: int, new_name: bytes, exchange: bool = False) -> None:
        """This mount renamed parent/name (the kernel moves its own entries)."""
        old, new = (parent, name), (new_parent, new_name)
        with self._lock:
            src, dst = self._at.get(old), self._at.get(new)
            if src is not None:
                self._forget(src, old)
            if dst is not None:
                self._forget(dst, new)
            if src is not None:
                self._claim(src, new)
            if exchange and dst is not None:
                self._claim(dst, old)

    def _claim(self, ino: int, place: Place) -> None:
        """Directory ino is answered at place now (a new stamp). Call with the lock held."""
        self._at[place] = ino
        self._held.setdefault(ino, {})[place] = next(self._stamps)

    def _forget(self, ino: int, place: Place) -> None:
        held = self._held.get(ino)
        if held is not None:
            held.pop(place, None)
            if not held:
                del self._held[ino]
        if self._at.get(place) == ino:
            del self._at[place]


class KernelAttrs:
    """The (mtime, size) each inode was last answered with; the trio thread records, worker
    threads check at an open (dict operations: thread-safe by the GIL)."""

    def __init__(self) -> None:
        self._told: dict[int, tuple[int, int]] = {}

    def told(self, ino: int, mtime: int, length: int) -> None:
        if len(self._told) >= LIMIT:
            self._told.clear()  # (an inode forgotten is refreshed at its next open: safe)
        self._told[ino] = (mtime, length)

    def current(self, ino: int, mtime: int, length: int) -> bool:
        """Whether the kernel was last told these attributes (opened() would do nothing)."""
        return self._told.get(ino) == (mtime, length)

    def opened(self, ino: int, mtime: int, length: int) -> None:
        """An open read these attributes: the kernel's copy goes if it may be older."""
        if self.current(ino, mtime, length):
            return
        self.told(ino, mtime, length)  # what the kernel asks for next comes from the same place
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the kernel holds no such inode
                log.warning("dropping the kernel's attributes of inode %d: %s", ino, e.strerror)
