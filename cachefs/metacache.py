"""The attributes and directory entries this client has seen or made, so the FUSE shell can
answer a lookup or getattr from memory, in the event loop, without a thread or a round trip.

Each lives no longer than the kernel may keep its own copy (the attr and entry timeouts the
mount gives it), so an answer from here is never older than one the kernel could give from its
caches; what this client changes itself is updated or dropped at once (the engine reports each
committed transaction's changes: meta.Changes). Bounded: past `limit` entries it starts afresh.
Thread-safe by the GIL: every operation is a dict lookup or assignment.
"""

from __future__ import annotations

import time

from cachefs.meta import Changes
from cachefs.meta.types import TYPE_DIR, Attr

LIMIT = 200_000


class MetaCache:
    def __init__(self, attr_ttl: float, entry_ttl: float, dir_entry_ttl: float, limit: int = LIMIT) -> None:
        self.attr_ttl = attr_ttl
        self.entry_ttl = entry_ttl
        self.dir_entry_ttl = dir_entry_ttl
        self.limit = limit
        self._attrs: dict[int, tuple[float, Attr]] = {}
        self._entries: dict[tuple[int, bytes], tuple[float, int]] = {}

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

    def put_entry(self, parent: int, name: bytes, ino: int, attr: Attr | None = None) -> None:
        ttl = self.dir_entry_ttl if attr is not None and attr.type == TYPE_DIR else self.entry_ttl
        if ttl <= 0:
            return
        if len(self._entries) >= self.limit:
            self._entries.clear()
        self._entries[(parent, name)] = (time.monotonic() + ttl, ino)
        if attr is not None:
            self.put_attr(ino, attr)

    def drop_attr(self, ino: int) -> None:
        self._attrs.pop(ino, None)

    def apply(self, changes: Changes) -> None:
        """What a transaction of this client committed."""
        for ino in changes.gone:
            self._attrs.pop(ino, None)
        for key in changes.removed:
            self._entries.pop(key, None)
        for (parent, name), ino in changes.entries.items():
            self.put_entry(parent, name, ino, changes.attrs.get(ino))
        for ino, attr in changes.attrs.items():
            self.put_attr(ino, attr)
