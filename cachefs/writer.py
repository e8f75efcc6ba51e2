"""The write path of open files: writes buffered into growing slices (whose full blocks are made
safe while the file is still being written), the commit of a file's buffered slices in one
metadata transaction, and the removal of slices that will never be committed."""

from __future__ import annotations

import logging

from cachefs.meta import BaseMeta
from cachefs.meta.types import CHUNK_SIZE, Attr, Slice

from .chunkstore import ChunkStore
from .compact import COMPACT_THRESHOLD, CompactionQueue
from .durability import Durability
from .handles import Buffered, FileState, OpenFiles

log = logging.getLogger("cachefs.writer")

MAX_BUFFERED_SLICES = 64  # commit a file's buffered slices once this many are waiting


class Writer:
    def __init__(self, meta: BaseMeta, chunks: ChunkStore, durability: Durability,
                 compactions: CompactionQueue) -> None:
        self.meta = meta
        self.chunks = chunks
        self.durability = durability
        self.compactions = compactions

    def write(self, fs: FileState, offset: int, data: bytes, append: bool = False) -> None:
        """Buffer data at offset (at the end with append); commits once many slices wait."""
        with fs.lock:
            if append:
                offset = fs.length
            mv = memoryview(data)
            pos = offset
            while mv:
                indx, cpos = divmod(pos, CHUNK_SIZE)
                n = min(len(mv), CHUNK_SIZE - cpos)
                b = fs.active.get(indx)
                if b is None or b.pos + b.writer.length != cpos:
                    b = Buffered(indx, cpos, self.chunks.writer(self.meta.new_slice_id(), fs.ino))
                    fs.buffered.append(b)
                    fs.active[indx] = b
                b.writer.write(mv[:n])
                fs.segments.pop(indx, None)
                pos += n
                mv = mv[n:]
            fs.length = max(fs.length, offset + len(data))
            if len(fs.buffered) >= MAX_BUFFERED_SLICES:
                self.commit(fs)

    def commit(self, fs: FileState) -> None:
        """Finish making a file's buffered slices safe and commit them (caller holds fs.lock).

        The slices stay in fs.buffered until the commit is done, so a concurrent getattr keeps
        reporting the length they give the file instead of the engine's older one."""
        if not fs.buffered:
            return
        buffered = fs.buffered
        sizes = []
        failure: Exception | None = None
        for b in buffered:
            try:
                sizes.append(b.writer.finish())
            except Exception as e:  # keep finishing the others
                failure = failure or e
                sizes.append(0)
        records = [(b.indx, Slice(b.pos, b.writer.id, n, 0, n)) for b, n in zip(buffered, sizes, strict=True)
                   if n]
        try:
            if failure is not None:
                raise failure
            attr: Attr = self.durability.commit(
                fs.ino, [s.id for _, s in records],
                lambda pending: self.meta.write(fs.ino, records, pending=pending))
        except Exception:
            fs.buffered, fs.active = [], {}
            self._discard(buffered, sizes)
            raise
        fs.length = attr.length
        fs.seen = (attr.mtime, attr.length)
        fs.buffered, fs.active = [], {}
        for indx, _ in records:
            fs.segments.pop(indx, None)
            fs.committed[indx] = fs.committed.get(indx, 0) + 1
            if fs.committed[indx] >= COMPACT_THRESHOLD:
                fs.committed[indx] = 0
                self.compactions.add(fs.ino, indx)

    def _discard(self, buffered: list[Buffered], sizes: list[int]) -> None:
        """Slices that will never be committed: remove what of them reached the store."""
        for b, n in zip(buffered, sizes, strict=True):
            try:
                self.chunks.delete_slice(b.writer.id, n or b.writer.length)
            except Exception as e:  # left to the cleanup of this session's slice ranges, or gc
                log.warning("could not remove uncommitted slice %d: %s", b.writer.id, e)
                continue
            self.meta.resolved([b.writer.id])

    def commit_all(self, files: OpenFiles) -> None:
        """Commit every open file's buffered slices."""
        for fs in files.states():
            with fs.lock:
                self.commit(fs)
