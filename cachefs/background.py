"""The jobs a mounted client runs beside serving requests: heartbeat, cleaning up after dead
sessions, deleting the objects of removed data, and compaction."""

from __future__ import annotations

import logging
import threading
import time

from cachefs.meta import BaseMeta

from .chunkstore import ChunkStore
from .compact import CompactionQueue, compact_chunk

log = logging.getLogger("cachefs.background")


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
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="background", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            now = time.time()
            try:
                if now >= next_beat:
                    self.meta.heartbeat()
                    self.meta.clean_stale_sessions(self.session_timeout)
                    next_beat = now + self.heartbeat
                self.run_once()
            except Exception as e:  # keep serving; the next round retries
                log.warning("background job failed: %s", e)
            self._stop.wait(min(1.0, self.heartbeat))

    def run_once(self, trash_delay: float | None = None) -> None:
        """One round of every deletion and compaction job (the tests call it directly)."""
        delay = self.trash_delay if trash_delay is None else trash_delay
        if self.compactions is not None:
            for ino, indx in self.compactions.take():
                if self._stop.is_set():
                    break
                try:
                    compact_chunk(self.meta, self.chunks, ino, indx)
                except Exception as e:
                    log.warning("compaction of inode %d chunk %d failed: %s", ino, indx, e)
        for ino, length in self.meta.deleted_files():
            self.meta.delete_file_data(ino, length)
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
            if len(ready) < len(batch):
                break
