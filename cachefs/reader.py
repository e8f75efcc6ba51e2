"""The read path of open files: a chunk's slices resolved once per open (newest wins), the
blocks that cover a read fetched in parallel, and readahead for sequential readers."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

from cachefs.meta import BaseMeta
from cachefs.meta.types import CHUNK_SIZE

from .block import Buffer
from .chunkstore import ChunkStore
from .compact import COMPACT_THRESHOLD, CompactionQueue
from .diskcache import PendingRead
from .errors import FSError, ObjectNotFound
from .handles import FileState, Handle
from .slices import Segment, covering, resolve


class Reader:
    """`commit(fs)` commits a file's buffered writes (the writer's): a read sees them."""

    def __init__(self, meta: BaseMeta, chunks: ChunkStore, compactions: CompactionQueue,
                 commit: Callable[[FileState], None]) -> None:
        self.meta = meta
        self.chunks = chunks
        self.compactions = compactions
        self.commit = commit
        self.max_readahead = max(chunks.block_size, chunks.buffer.capacity // 4)

    def segments(self, fs: FileState, indx: int, refresh: bool = False) -> list[Segment]:
        """The resolved slices of one chunk (caller holds fs.lock); a fragmented chunk is
        queued for compaction."""
        segs = None if refresh else fs.segments.get(indx)
        if segs is None:
            slices = self.meta.read_chunk(fs.ino, indx)
            segs = resolve(slices)
            fs.segments[indx] = segs
            if len(slices) >= COMPACT_THRESHOLD:
                self.compactions.add(fs.ino, indx)
        return segs

    def read(self, h: Handle, fs: FileState, offset: int, size: int) -> Buffer:
        """Up to size bytes at offset: bytes, or a read-only view of a cached block (no copy)."""
        if offset < 0:
            raise FSError(errno.EINVAL)
        with fs.lock:
            if fs.buffered:
                self.commit(fs)
            length = fs.length
            if offset >= length or size <= 0:
                return b""
            n = min(size, length - offset)
            pieces = []  # (chunk index, offset in chunk, length, offset in the answer)
            pos, end = offset, offset + n
            while pos < end:
                indx, cpos = divmod(pos, CHUNK_SIZE)
                m = min(CHUNK_SIZE - cpos, end - pos)
                pieces.append((indx, cpos, m, pos - offset))
                self.segments(fs, indx)
                pos += m
            self._readahead(h, fs, offset, end)
        # the fetches run without the file's lock, so the kernel's parallel reads overlap
        for attempt in (0, 1):
            try:
                return self._fetch(fs, pieces, n, refresh=attempt > 0, random=h.window == 0)
            except ObjectNotFound:
                # a compaction may have retired the slices we resolved: resolve the chunks again
                if attempt:
                    raise FSError(errno.EIO, "block missing from the object store") from None
        raise AssertionError("unreachable")

    def read_resident(self, h: Handle, fs: FileState, offset: int, size: int,
                      pending: bool = False) -> Buffer | PendingRead | None:
        """read() without blocking (the FUSE shell's event loop): the chunk's slices already
        resolved, one slice covering the answer, its bytes in memory or in resident cache pages;
        None when any of that does not hold (the caller reads on a thread). pending: bytes in
        the disk cache but not in the page cache are answered with the read to make."""
        if offset < 0 or size <= 0 or not fs.lock.acquire(blocking=False):
            return None
        try:
            if fs.buffered or offset >= fs.length:
                return None
            n = min(size, fs.length - offset)
            indx, cpos = divmod(offset, CHUNK_SIZE)
            segs = fs.segments.get(indx)
            if segs is None or cpos + n > CHUNK_SIZE:
                return None
            parts = covering(segs, cpos, n)
            if len(parts) != 1 or parts[0].pos != cpos or parts[0].len != n:
                return None
            g = parts[0]
            data = self.chunks.read_resident(g.id, g.size, g.off, g.len, pending)
            if data is None:
                return None
            end = offset + n
            sequential = offset == h.read_end
            h.window = min(max(self.chunks.block_size, h.window * 2), self.max_readahead) if sequential else 0
            h.read_end = end
            if h.window and end < fs.length:
                self._prefetch_known(fs, end, min(fs.length, end + h.window))
            return data
        finally:
            fs.lock.release()

    def read_whole_many(self, files: list[FileState], width: int) -> list[Buffer | BaseException | None]:
        """Whole small files (a DataLoader batch's), those lying in one block of one slice
        fetched together by this thread (ChunkStore.get_blocks); each one's bytes or failure,
        or None for one to read the usual way (larger, fragmented, with buffered writes, or its
        block being fetched by another reader already)."""
        return self._whole(files, lambda wanted: self.chunks.get_blocks(wanted, width))

    def read_cached(self, files: list[FileState]) -> list[Buffer | None]:
        """Whole small files lying in one block of one slice, from memory or the disk cache
        (ChunkStore.read_cached); None for one to fetch or read the usual way."""
        return self._whole(files, self.chunks.read_cached)

    def _whole(self, files: list[FileState], get: Callable[[list[tuple[int, int, int]]], list | None]) -> list:
        """Each file's bytes from `get` of the blocks of those lying in one block of one slice
        (None from it, or for the others: read the usual way)."""
        out: list = [None] * len(files)
        wanted, where = [], []
        for j, fs in enumerate(files):
            one = self._one_block(fs)
            if one is not None:
                slice_id, slice_size, index, start, n = one
                wanted.append((slice_id, slice_size, index))
                where.append((j, start, n))
        got = get(wanted) if wanted else None
        if got is None:
            return out
        for (j, start, n), block in zip(where, got, strict=True):
            if block is None or isinstance(block, ObjectNotFound):  # compacted away since: read()
                continue  # resolves the chunk again
            if isinstance(block, BaseException):
                out[j] = block
            else:
                out[j] = block if start == 0 and n == len(block) else memoryview(block)[start : start + n]
        return out

    def preload(self, fs: FileState) -> bool:
        """A small file whose bytes lie in one cached block, brought into memory
        (ChunkStore.preload) by the thread that opened it."""
        one = self._one_block(fs)
        return one is not None and self.chunks.preload(one[0], one[1], one[2])

    def preloaded(self, fs: FileState) -> bool | None:
        """preload's answer from memory alone (ChunkStore.buffered)."""
        one = self._one_block(fs)
        return None if one is None else self.chunks.buffered(one[0], one[1], one[2])

    def _one_block(self, fs: FileState) -> tuple[int, int, int, int, int] | None:
        """(slice id, slice size, block index, start in the block, length) of a file whose bytes
        all lie in one block of one slice, as its open resolved them."""
        if not fs.lock.acquire(blocking=False):
            return None
        try:
            segs = fs.segments.get(0)
            if fs.buffered or segs is None or not 0 < fs.length <= CHUNK_SIZE:
                return None
            parts = covering(segs, 0, fs.length)
            if len(parts) != 1 or not parts[0].id or parts[0].pos != 0 or parts[0].len != fs.length:
                return None
            g, bs = parts[0], self.chunks.block_size
            index = g.off // bs
            if (g.off + g.len - 1) // bs != index:
                return None
            return g.id, g.size, index, g.off - index * bs, g.len
        finally:
            fs.lock.release()

    def advise(self, fs: FileState, offset: int, size: int) -> bool:
        """Bytes [offset, offset+size) will be read next: their cache entries are read ahead
        (ChunkStore.advise), when the chunks' slices are known already; False when not all of
        them are in memory or in the cache (the read then fetches)."""
        if not fs.lock.acquire(blocking=False):
            return False
        try:
            if fs.buffered:
                return False
            ok = True
            for g in self._covering(fs, offset, min(offset + size, fs.length)):
                if g is None:
                    return False
                if g.id:
                    ok = self.chunks.advise(g.id, g.size, g.off, g.len) and ok
            return ok
        finally:
            fs.lock.release()

    def _covering(self, fs: FileState, pos: int, stop: int, resolve: bool = False) -> Iterator[Segment | None]:
        """The segments that cover [pos, stop), chunk after chunk. A chunk whose slices are not
        resolved yet ends it with None, unless `resolve` (the caller holds fs.lock) asks the
        engine for them."""
        while pos < stop:
            indx, cpos = divmod(pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - cpos, stop - pos)
            segs = fs.segments.get(indx)
            if segs is None:
                if not resolve:
                    yield None
                    return
                segs = self.segments(fs, indx)
            yield from covering(segs, cpos, n)
            pos += n

    def _prefetch(self, g: Segment) -> None:
        bs = self.chunks.block_size
        for i in range(g.off // bs, (g.off + g.len - 1) // bs + 1):
            self.chunks.prefetch(g.id, g.size, i)

    def _prefetch_known(self, fs: FileState, pos: int, stop: int) -> None:
        """Readahead over chunks whose slices are known (nothing is asked of the engine)."""
        for g in self._covering(fs, pos, stop):
            if g is None:
                return
            self._prefetch(g)

    def _fetch(self, fs: FileState, pieces: list[tuple[int, int, int, int]], n: int, refresh: bool,
               random: bool = False) -> Buffer:
        parts = []
        for indx, cpos, m, at in pieces:
            if refresh:
                with fs.lock:
                    segs = self.segments(fs, indx, refresh=True)
            else:
                segs = fs.segments.get(indx)
                if segs is None:
                    with fs.lock:
                        segs = self.segments(fs, indx)
            parts.append((cpos, m, at, covering(segs, cpos, m)))
        if len(parts) == 1 and len(parts[0][3]) == 1:
            cpos, m, _at, (g,) = parts[0]
            if g.pos == cpos and g.len == m:  # one slice covers the whole answer
                return self.chunks.read(g.id, g.size, g.off, g.len, random)
        out = bytearray(n)
        for cpos, _m, at, segs in parts:
            for g in segs:
                start = at + g.pos - cpos
                out[start : start + g.len] = self.chunks.read(g.id, g.size, g.off, g.len, random)
        return out

    def _readahead(self, h: Handle, fs: FileState, offset: int, end: int) -> None:
        """Fetch ahead of a sequential reader, with a window that doubles while the reader stays
        sequential (up to a quarter of the read buffer); a random reader gets none."""
        bs = self.chunks.block_size
        if offset == h.read_end:
            h.window = min(max(bs, h.window * 2), self.max_readahead)
        else:
            h.window = 0
        h.read_end = end
        if not h.window or end >= fs.length:
            return
        for g in self._covering(fs, end, min(fs.length, end + h.window), resolve=True):
            self._prefetch(g)
