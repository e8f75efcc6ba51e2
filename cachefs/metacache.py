"""The attributes and directory entries this client has seen or made, so the FUSE shell can
answer a lookup or getattr from memory, in the event loop, without a thread or a round trip.

Each lives no longer than the kernel may keep its own copy (the attr and entry timeouts the
mount gives it), so an answer from here is never older than one the kernel could give from its
caches; what this client changes itself is updated or dropped at once (the engine reports each
committed transaction's changes: meta.Changes). Bounded: past `limit` entries it starts afresh.
Thread-safe by the GIL: every operation is a dict lookup or assignment (counting a
directory's misses, applying a change and installing a listing take one lock).

A directory looked up name by name (SCAN_MISSES misses within the entry timeout: a stat of every
file of a list, a reader going through a directory in order) is fetched whole, entries and
attributes in a few round trips, so the rest of its lookups are answered here; lookups spread
over many directories (random reads across a large dataset) never reach the threshold and cost
no listing. A listing is installed only if no change of this client added or removed names in
the directory while it was read (one read before an unlink must not bring the name back), and
without the attributes of the files such a change touched. A name a listing lacks is still
asked for: a file another node made and closed after the listing must be found at once.
"""

from __future__ import annotations

import threading
import time

from cachefs.meta import Changes
from cachefs.meta.types import TYPE_DIR, Attr

LIMIT = 200_000
SCAN_MISSES = 16  # lookup misses in one directory within the entry timeout that make it fetched whole
SCAN_LIMIT = 10_000  # entries above which a directory is not fetched whole for its lookups


class MetaCache:
    def __init__(self, attr_ttl: float, entry_ttl: float, dir_entry_ttl: float, limit: int = LIMIT) -> None:
        self.attr_ttl = attr_ttl
        self.entry_ttl = entry_ttl
        self.dir_entry_ttl = dir_entry_ttl
        self.limit = limit
        self._attrs: dict[int, tuple[float, Attr]] = {}
        self._entries: dict[tuple[int, bytes], tuple[float, int]] = {}
        self._misses: dict[int, tuple[float, int]] = {}  # directory -> (window end, misses in it)
        self._lock = threading.Lock()
        self._seq = 0  # changes applied so far
        self._listings = 0  # listings being read: changes are recorded in _touched only meanwhile
        self._touched: dict[int, int] = {}  # inode or directory -> seq of the last change to it
        self._floor = 0  # seq at which _touched last started afresh (older changes unknown)

    @property
    def enabled(self) -> bool:
        return self.attr_ttl > 0

    def attr(self, ino: int) -> Attr | None:
        hit = self._attrs.get(ino)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def entry(self, parent: int, name: bytes) -> int | None:
        hit = self._entries.get((parent, name))
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put_attr(self, ino: int, attr: Attr) -> None:
        if self.attr_ttl <= 0:
            return
        if len(self._attrs) >= self.limit:
            self._attrs.clear()
        self._attrs[ino] = (time.monotonic() + self.attr_ttl, attr)

    def _entry_ttl(self, attr: Attr | None) -> float:
        return self.dir_entry_ttl if attr is not None and attr.type == TYPE_DIR else self.entry_ttl

    def put_entry(self, parent: int, name: bytes, ino: int, attr: Attr | None = None) -> None:
        ttl = self._entry_ttl(attr)
        if ttl <= 0:
            return
        if len(self._entries) >= self.limit:
            self._entries.clear()
        self._entries[(parent, name)] = (time.monotonic() + ttl, ino)
        if attr is not None:
            self.put_attr(ino, attr)

    def missed(self, parent: int) -> bool:
        """Count a lookup in parent that had to ask the engine; True (once per entry timeout)
        when parent is being looked up name by name and should be fetched whole."""
        if self.entry_ttl <= 0 or self.attr_ttl <= 0:
            return False
        now = time.monotonic()
        with self._lock:
            end, n = self._misses.get(parent, (0.0, 0))
            if end < now:
                end, n = now + self.entry_ttl, 0
            n += 1
            if len(self._misses) >= self.limit:
                self._misses.clear()
            # past the threshold the count keeps growing: one fetch per window, the first time
            self._misses[parent] = (end, n)
            return n == SCAN_MISSES

    def begin_listing(self) -> int:
        """A listing is about to be read: the seq to give end_listing, which must follow."""
        with self._lock:
            self._listings += 1
            return self._seq

    def end_listing(self, parent: int, listing: list[tuple[bytes, int, Attr]] | None, since: float,
                    seq: int) -> None:
        """A directory's entries read by a fetch that began at `since` (monotonic) and at `seq`
        (None: it failed or was too large); what a later change of ours touched is left out
        (checked and installed under the lock apply() holds: an unlink applied between the two
        must not be undone)."""
        with self._lock:
            self._listings -= 1
            if listing is not None:
                self._install(parent, listing, since, seq)
            if not self._listings:
                self._touched.clear()  # no listing left to check against them

    def _install(self, parent: int, listing: list[tuple[bytes, int, Attr]], since: float, seq: int) -> None:
        if self._floor > seq or self._touched.get(parent, 0) > seq:
            return  # names came or went meanwhile: the listing may have them wrongly
        if len(self._entries) + len(listing) >= self.limit:
            self._entries.clear()
        if len(self._attrs) + len(listing) >= self.limit:
            self._attrs.clear()
        now = time.monotonic()
        for name, ino, attr in listing:
            ttl = self._entry_ttl(attr)
            if ttl > 0 and since + ttl > now:
                self._entries[(parent, name)] = (since + ttl, ino)
            if self._touched.get(ino, 0) <= seq:  # (attributes we changed meanwhile are newer)
                self._attrs[ino] = (since + self.attr_ttl, attr)

    def _touch(self, key: int) -> None:
        if len(self._touched) >= self.limit:
            self._touched.clear()
            self._floor = self._seq
        self._touched[key] = self._seq

    def drop_attr(self, ino: int) -> None:
        self._attrs.pop(ino, None)

    def apply(self, changes: Changes) -> None:
        """What a transaction of this client committed (one seq per change, even when two
        threads commit at once; under the lock a listing is installed with)."""
        with self._lock:
            self._seq += 1
            if self._listings:
                for ino in (*changes.gone, *changes.attrs):
                    self._touch(ino)
                for parent, _ in (*changes.removed, *changes.entries):
                    self._touch(parent)
            for ino in changes.gone:
                self._attrs.pop(ino, None)
            for key in changes.removed:
                self._entries.pop(key, None)
            for (parent, name), ino in changes.entries.items():
                self.put_entry(parent, name, ino, changes.attrs.get(ino))
            for ino, attr in changes.attrs.items():
                self.put_attr(ino, attr)
