"""Compaction: rewrite a fragmented chunk as one slice so reads stay cheap.

Readers and writers queue chunks that grew many slices; the background job takes the queue and
rewrites each. The new slice is written first; the metadata swap then succeeds only if the
chunk still starts with the records it was built from, so readers see either the old records
or the new one.
"""

from __future__ import annotations

import threading

from cachefs.meta import BaseMeta
from cachefs.meta.types import Slice

from .chunkstore import ChunkStore
from .slices import covering, resolve

COMPACT_THRESHOLD = 32  # slices in one chunk before it is compacted


class CompactionQueue:
    """Chunks (inode, index) waiting to be compacted. Thread-safe."""

    def __init__(self) -> None:
        self._items: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def add(self, ino: int, indx: int) -> None:
        with self._lock:
            self._items.add((ino, indx))

    def take(self) -> list[tuple[int, int]]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items


def compact_chunk(meta: BaseMeta, chunks: ChunkStore, ino: int, indx: int, min_slices: int = 2) -> bool:
    """Merge the chunk's slices; True when the chunk was rewritten."""
    slices = meta.read_chunk(ino, indx)
    if len(slices) < min_slices:
        return False
    if chunks.pending_slice_ids() & {s.id for s in slices}:
        return False  # some blocks are still only in a writer's staging: compact later
    segs = resolve(slices)
    if not segs:
        return meta.compact_chunk(ino, indx, slices, [])
    start, end = segs[0].pos, segs[-1].pos + segs[-1].len
    writer = chunks.writer(meta.new_slice_id(), ino, through=True)  # its commit records nothing pending
    bs = chunks.block_size
    try:
        for pos in range(start, end, bs):
            n = min(bs, end - pos)
            buf = bytearray(n)
            for g in covering(segs, pos, n):
                buf[g.pos - pos : g.pos - pos + g.len] = chunks.read(g.id, g.size, g.off, g.len)
            writer.write(bytes(buf))
        size = writer.finish()
    except Exception:
        chunks.delete_slice(writer.id, writer.length)
        meta.resolved([writer.id])
        raise
    if meta.compact_chunk(ino, indx, slices, [Slice(start, writer.id, size, 0, size)]):
        return True
    chunks.delete_slice(writer.id, size)
    meta.resolved([writer.id])
    return False
