"""The jobs a mounted client runs beside serving requests: heartbeat, cleaning up after dead
sessions, deleting the objects of removed data, and compaction.

The heartbeat has a thread of its own: however long a deletion or compaction runs, and however
long the engine is away, the session's heartbeat keeps its schedule (a session whose heartbeat
stalls is taken for dead by the others, and what its open handles hold is reclaimed)."""

from __future__ import annotations

import logging
import threading
import time

from cachefs.meta import BaseMeta

from .chunkstore import ChunkStore
from .compact import CompactionQueue, compact_chunk

log = logging.getLogger("cachefs.background")


def remove_uncommitted(meta: BaseMeta, chunks: ChunkStore, sid: int) -> int:
    """Delete the objects of a dead session's slices that no commit names (its writers were
    killed mid-write; meta/inflight.py); returns how many."""
    removed = 0
    for start, end, used in meta.session_ranges(sid):
        for slice_id, keys in chunks.stored_slices(start, end).items():
            if slice_id not in used:
                for key in keys:
                    chunks.objects.delete(key)
                removed += len(keys)
    return removed


class Background:
    def __init__(self, meta: BaseMeta, chunks: ChunkStore, compactions: CompactionQueue | None = None, *,
                 heartbeat: float = 12.0, session_timeout: float = 60.0, trash_delay: float = 30.0) -> None:
        self.meta = meta
        self.chunks = chunks
        self.compactions = compactions
        self.heartbeat = heartbeat
        self.session_timeout = session_timeout
        self.trash_delay = trash_delay
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._chores = True

    def start(self, chores: bool = True) -> None:
        """chores=False: this process compacts what it wrote but leaves the volume's chores (dead
        sessions, deleted files, the trash) to the others. A Python client's copies (DataLoader
        workers, re-made every epoch) run so: eight workers each doing the parent's chores cost
        ~5 ms of CPU at each one's start and an engine round trip per second each after."""
        self._chores = chores
        self._threads = [threading.Thread(target=self._beat, name="heartbeat", daemon=True),
                         threading.Thread(target=self._run, name="background", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads, waiting at most timeout for a job (or a heartbeat riding through
        an outage) to finish; one that does not is left to end with the process."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def _beat(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.meta.heartbeat()
            except Exception as e:  # the engine is away: the next beat tries again
                log.warning("heartbeat failed: %s", e)
            self._stop.wait(max(0.0, self.heartbeat - (time.monotonic() - started)))

    def _run(self) -> None:
        next_clean = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if self._chores and now >= next_clean:
                    for sid in self.meta.stale_sessions(self.session_timeout):
                        removed = remove_uncommitted(self.meta, self.chunks, sid)
                        reclaimed = self.meta.clean_session(sid)
                        log.info("cleaned up dead session %d: %d uncommitted object(s) removed, %d open "
                                 "but deleted file(s) reclaimed", sid, removed, reclaimed)
                    next_clean = now + self.heartbeat
                if self.run_once(chores=self._chores):
                    continue  # more may be waiting: no pause while there is work
            except Exception as e:  # keep serving; the next round retries
                log.warning("background job failed: %s", e)
            self._stop.wait(min(1.0, self.heartbeat))

    def run_once(self, trash_delay: float | None = None, chores: bool = True) -> int:
        """One round of every deletion and compaction job, each in bounded batches (the tests
        call it directly); how many items it handled. chores=False: this process's compactions
        only."""
        delay = self.trash_delay if trash_delay is None else trash_delay
        done = 0
        if self.compactions is not None:
            for ino, indx in self.compactions.take():
                if self._stop.is_set():
                    break
                try:
                    compact_chunk(self.meta, self.chunks, ino, indx)
                except Exception as e:
                    log.warning("compaction of inode %d chunk %d failed: %s", ino, indx, e)
                done += 1
        if not chores:
            return done
        for ino, length in self.meta.deleted_files():
            self.meta.delete_file_data(ino, length)
            done += 1
        while not self._stop.is_set():
            batch = self.meta.trash_batch(500, min_age=delay)
            if not batch:
                break
            pending = self.chunks.pending_slice_ids()
            ready = [(sid, size) for sid, size in batch if sid not in pending]
            for sid, size in ready:
                self.chunks.delete_slice(sid, size)
            # a slice still being uploaded by its writer waits in the trash, or its upload would
            # leave an object behind
            self.meta.trash_done(ready)
            done += len(ready)
            if len(ready) < len(batch):
                break
        return done
