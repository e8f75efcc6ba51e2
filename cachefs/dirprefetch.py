"""Whole-directory prefetch into the metadata cache, for sweeps of a directory's files.

A stat of every file of a directory, or an open of each in turn, after the kernel's caches were
dropped (or its entries expired), reaches the mount as one lookup per file, and each missed the
metadata cache and cost a thread hop and an engine round trip: ~1600 stats/s against
JuiceFS's ~4300 in bench/compare.py. When lookups of one directory keep missing, this fetches the
directory as readdir does (its entries with their attributes, a few round trips for thousands
of files) into the metadata cache, on a thread of its own; the sweep's next lookups are then
answered from memory in the FUSE shell's event loop.

What it may serve is what readdirplus gives the kernel: entries no older than the entry
timeout, from the moment the listing was asked. A listing that overlapped a change this client
made is dropped, so an entry this client removed does not come back. Directories larger than
MAX_ENTRIES are never fetched whole (their count is one cheap engine call, and it is asked at
most once per timeout for each directory).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from cachefs.meta import BaseMeta

from .metacache import MetaCache
from .metrics import Metrics

log = logging.getLogger("cachefs.meta")

MISSES = 3  # engine lookups in one directory within the entry timeout before it is fetched whole
MAX_ENTRIES = 10_000
TRACKED = 10_000  # directories whose misses are counted at once (past it, counting starts afresh)


class DirPrefetch:
    def __init__(self, meta: BaseMeta, cache: MetaCache, metrics: Metrics, misses: int = MISSES,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.meta, self.cache, self.metrics = meta, cache, metrics
        self.misses, self.max_entries = misses, max_entries
        self._lock = threading.Lock()
        self._counts: dict[int, tuple[float, int]] = {}  # directory -> (window end, misses in it)
        self._quiet: dict[int, float] = {}  # directory -> until when it is not fetched again
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.misses > 0 and self.cache.entry_ttl > 0 and self.cache.attr_ttl > 0

    def missed(self, parent: int) -> None:
        """A lookup in `parent` was answered by the engine, not the metadata cache."""
        if not self.enabled:
            return
        now = time.monotonic()
        ttl = min(self.cache.entry_ttl, self.cache.attr_ttl)
        with self._lock:
            if self._closed or self._quiet.get(parent, 0.0) > now:
                return
            end, n = self._counts.get(parent, (0.0, 0))
            if end < now:
                end, n = now + ttl, 0
            n += 1
            if n < self.misses:
                if len(self._counts) >= TRACKED:
                    self._counts.clear()
                self._counts[parent] = (end, n)
                return
            self._counts.pop(parent, None)
            if len(self._quiet) >= TRACKED:
                self._quiet = {d: t for d, t in self._quiet.items() if t > now}
            self._quiet[parent] = now + ttl
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dir-prefetch", daemon=True)
                self._thread.start()
        self._queue.put(parent)

    def _loop(self) -> None:
        while (parent := self._queue.get()) is not None:
            try:
                self._fetch(parent)
            except Exception as e:  # noqa: BLE001 - a prefetch that fails costs only its lookups
                log.debug("prefetch of directory %d: %s", parent, e)

    def _fetch(self, parent: int) -> None:
        if self.meta.entry_count(parent) > self.max_entries:
            with self._lock:  # asked again only after ten timeouts: it will not have shrunk much
                self._quiet[parent] = time.monotonic() + 10 * min(self.cache.entry_ttl, self.cache.attr_ttl)
            return
        since = self.cache.changes
        asked = time.monotonic()
        entries = self.meta.readdir(parent)
        if self.cache.changes != since:
            return  # this client changed something meanwhile: the listing may predate it
        for name, ino, attr in entries:
            self.cache.put_entry(parent, name, ino, attr, since=asked)
        self.metrics.dir_prefetches.inc()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            started = self._thread is not None
        if started:
            self._queue.put(None)
