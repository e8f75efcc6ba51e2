"""Which slice ids a session may still have objects of that no file references (a part of
BaseMeta).

Slice ids come from the shared counter in ranges of SLICE_BATCH. Before a session hands out an
id of a new range, it records the range under its session; each commit records, in the same
transaction, the slices of the session's ranges it commits; a range whose ids have all been
committed or discarded is released. So when a session dies (its process killed mid-write, say),
the objects of its uncommitted slices are exactly those in its recorded ranges whose ids are
not recorded as committed: whoever cleans the session up deletes them (a *half-written slice*
is a named crash state: its blocks are in the object store, no chunk names them, and the dead
session's ranges say so).
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass, field

from cachefs.errors import FSError

from .records import Tx

log = logging.getLogger("cachefs.meta")

SLICE_BATCH = 1000


@dataclass
class SliceRange:
    start: int
    end: int  # exclusive
    handed_out: bool = False  # every id of it has been given out
    unresolved: set[int] = field(default_factory=set)  # given out, neither committed nor discarded


class InFlight:
    def _init_inflight(self) -> None:
        self._ranges: dict[int, SliceRange] = {}
        self._ranges_lock = threading.Lock()
        self._tainted: set[int] = set()  # slices whose objects a cleanup of this session removed

    def new_slice_id(self) -> int:
        with self._alloc_lock:
            nxt, end = self._alloc.get("nextSlice", (0, 0))
            if nxt >= end:
                with self._ranges_lock:
                    for r in self._ranges.values():
                        r.handed_out = True
                end = self._incr("nextSlice", SLICE_BATCH) + 1
                nxt = end - SLICE_BATCH
                if self.sid:  # recorded before any id of it is used
                    self._range_add(self.sid, nxt, end)
                    with self._ranges_lock:
                        self._ranges[nxt] = SliceRange(nxt, end)
            self._alloc["nextSlice"] = (nxt + 1, end)
            with self._ranges_lock:
                r = self._ranges.get(end - SLICE_BATCH)
                if r is not None:
                    r.unresolved.add(nxt)
            return nxt

    def _range_of(self, slice_id: int) -> SliceRange | None:
        with self._ranges_lock:
            for r in self._ranges.values():
                if r.start <= slice_id < r.end:
                    return r
        return None

    def committing(self, tx: Tx, slice_ids: list[int]) -> None:
        """Inside a commit: record the session's slices as committed (same transaction)."""
        for i in slice_ids:
            if i in self._tainted:
                raise FSError(errno.EIO, "this session was taken for dead and its uncommitted uploads were removed; "
                              "write the file again")
            r = self._range_of(i)
            if r is not None:
                tx.add_used(self.sid, r.start, i)

    def resolved(self, slice_ids: list[int]) -> None:
        """These slices were committed (after the commit) or discarded (their objects removed)."""
        with self._ranges_lock:
            for i in slice_ids:
                for r in self._ranges.values():
                    if r.start <= i < r.end:
                        r.unresolved.discard(i)
                        break

    def release_ranges(self) -> int:
        """Drop the records of ranges whose every id is committed or discarded; how many."""
        with self._ranges_lock:
            done = [r for r in self._ranges.values() if r.handed_out and not r.unresolved]
        for r in done:
            self._range_drop(self.sid, r.start)
            with self._ranges_lock:
                self._ranges.pop(r.start, None)
        return len(done)

    def session_ranges(self, sid: int) -> list[tuple[int, int, set[int]]]:
        """(start, end, committed ids) of every range a session has recorded."""
        return [(start, end, self._range_used(sid, start)) for start, end in self._range_list(sid)]

    def _ranges_lost(self) -> None:
        """This session was cleaned up while alive: what it had in flight may be gone."""
        with self._ranges_lock:
            ranges = list(self._ranges.values())
            for r in ranges:
                self._tainted |= r.unresolved
        for r in ranges:
            self._range_add(self.sid, r.start, r.end)
        if self._tainted:
            log.error("%d slice(s) in flight when this session was taken for dead may have lost their "
                      "objects: their files fail with EIO at the next commit", len(self._tainted))
