"""Slices to blocks and back: parallel bounded uploads, shared downloads, a memory buffer.

Thread-safe and synchronous; the vfs calls it from FUSE worker threads, the CLI directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from .block import (
    MAGIC2,
    SEGMENT,
    Buffer,
    as_pieces,
    block_folder,
    block_key,
    block_keys,
    decode_block,
    encode_parts,
    parse_block_key,
    table_size,
    verify_segments,
)
from .diskcache import DiskCache, PendingRead, entry_header
from .durability import Durability
from .errors import ChecksumError, ObjectError, ObjectNotFound, ObjectUnavailable
from .metrics import Metrics
from .objects import ObjectStore
from .staging import Staging

if TYPE_CHECKING:
    from .group.peers import Peers

log = logging.getLogger("cachefs.chunks")

SMALL_PIECE = 64 << 10  # written pieces below this are copied together, larger ones referenced
REFETCHES = 3  # a block that arrives damaged is fetched this many times more before EIO
RANGE_TABLES = 8 << 20  # bytes of CFB2 checksum tables kept for ranged reads (~16k blocks)


class BlockBuffer:
    """An LRU of plain blocks bounded in bytes: sequential small reads hit one fetched block."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= len(old)
            self._items[key] = data
            self.used += len(data)
            while self.used > self.capacity:
                _, victim = self._items.popitem(last=False)
                self.used -= len(victim)

    def drop(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= len(old)


class ChunkStore:
    """Memory buffer, then staging (write-back), then the local disk cache, then the object
    store.

    `buffer_bytes` bounds memory for blocks: half holds blocks read (and read ahead), half
    holds blocks waiting to be uploaded; a writer waits when its half is full. `durability`
    decides when a written block is safe (write-through or write-back). `pending_slice_ids`
    names the volume's slices committed with blocks not uploaded yet (by any node): a read of
    one of their missing blocks waits for it, up to `pending_timeout`."""

    def __init__(self, objects: ObjectStore, volume: str, block_size: int, durability: Durability,
                 metrics: Metrics, *, compression: str = "none", max_uploads: int = 16,
                 max_downloads: int = 16, buffer_bytes: int = 300 << 20, cache: DiskCache | None = None,
                 staging: Staging | None = None, pending_slice_ids: Callable[[], set[int]] = set,
                 pending_timeout: float = 60.0, ranged_reads: bool = False, peers: Peers | None = None,
                 pending_writer: Callable[[int], int | None] = lambda slice_id: None) -> None:
        self.objects = objects
        self.volume = volume
        self.block_size = block_size
        self.compression = compression
        self.durability = durability
        self.cache = cache
        self.staging = staging
        self.metrics = metrics
        self.pending_slice_ids = pending_slice_ids
        self.pending_timeout = pending_timeout
        # the blocks are CFB2 (block.py): a random reader of a cold block gets its few KiB from
        # ranged GETs of the checksum table (kept here, small) and the segments it needs
        self.ranged_reads = ranged_reads
        self._tables = BlockBuffer(RANGE_TABLES)
        # the cache group: a block this node does not hold comes from its owner, a pending one
        # from its writer (pending_writer: the session staging it)
        self.peers = peers
        self.pending_writer = pending_writer
        self._uploads = ThreadPoolExecutor(max_uploads, thread_name_prefix="upload")
        self._upload_slots = threading.BoundedSemaphore(max(2, buffer_bytes // 2 // block_size))
        self._downloads = ThreadPoolExecutor(max_downloads, thread_name_prefix="download")
        self.buffer = BlockBuffer(max(buffer_bytes // 2, block_size))
        self._inflight: dict[str, tuple[Future, threading.Event]] = {}  # fetch, its cache write done
        self._inflight_lock = threading.Lock()
        self._uploading = 0
        self._count_lock = threading.Lock()

    def _track_upload(self, delta_blocks: int, delta_bytes: int) -> None:
        with self._count_lock:
            self._uploading += delta_bytes
            self.metrics.uploads_queued.inc(delta_blocks)
            self.metrics.buffer_bytes.set(self._uploading + self.buffer.used)

    def _length(self, slice_size: int, index: int) -> int:
        """Bytes in block `index` of a slice (its last block may be short)."""
        return min(self.block_size, slice_size - index * self.block_size)

    def key(self, slice_id: int, index: int, length: int) -> str:
        return block_key(self.volume, slice_id, index, length)

    # ---- writing ---------------------------------------------------------------------------
    def put_block(self, slice_id: int, index: int, data: Buffer | Sequence[Buffer], ino: int = 0,
                  through: bool = False) -> Future:
        """Make one block, given whole or in pieces, safe in the background (uploaded, or staged
        in write-back mode; through: uploaded in any mode); blocks while the upload buffer is
        full. The future is done when the block is safe."""
        pieces = as_pieces(data)
        length = sum(map(len, pieces))
        self._upload_slots.acquire()
        self._track_upload(1, length)

        def run() -> None:
            try:
                self._store(slice_id, index, pieces, length, ino, through)
            finally:
                self._track_upload(-1, -length)
                self._upload_slots.release()

        try:
            return self._uploads.submit(run)
        except BaseException:
            self._track_upload(-1, -length)
            self._upload_slots.release()
            raise

    def _store(self, slice_id: int, index: int, pieces: list[Buffer], length: int, ino: int, through: bool) -> None:
        durability = self.durability.through if through else self.durability
        durability.store(slice_id, ino, index, length, encode_parts(pieces, self.compression), pieces)

    def store_now(self, slice_id: int, index: int, data: Buffer | Sequence[Buffer], ino: int = 0,
                  through: bool = False) -> None:
        """Make one block safe in the calling thread (a small file's only block: its writer
        waits for it anyway, and a hand-over to an upload thread and back costs more than the
        request)."""
        pieces = as_pieces(data)
        length = sum(map(len, pieces))
        self._track_upload(1, length)
        try:
            self._store(slice_id, index, pieces, length, ino, through)
        finally:
            self._track_upload(-1, -length)

    def writer(self, slice_id: int, ino: int = 0, through: bool = False) -> SliceWriter:
        """through=True writes through even in write-back mode (compaction: its commit is not
        recorded as pending)."""
        return SliceWriter(self, slice_id, ino, through)

    # ---- reading ---------------------------------------------------------------------------
    def get_block(self, slice_id: int, slice_size: int, index: int, keep: bool = True,
                  from_peer: bool = False) -> Buffer:
        """One block's plain bytes; concurrent callers of the same block share one fetch.
        keep=False (warmup) fills the disk cache without taking memory buffer space; from_peer:
        a group member asks (never passed on to another member)."""
        length = self._length(slice_size, index)
        key = self.key(slice_id, index, length)
        data = self.buffer.get(key)
        if data is not None:
            self.metrics.buffer_hits.inc()
            return data
        (fut, settled), owner = self._claim(key)
        if not owner:
            data = fut.result()
            if not keep:
                settled.wait()  # a warmup returns once the block is in the disk cache
            return data
        try:
            data, fetched = self._load(slice_id, index, key, length, from_peer)
            return self._settle(key, data, fut, fetched, keep)
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
            raise
        finally:
            self._release(key, settled)

    def _claim(self, key: str) -> tuple[tuple[Future, threading.Event], bool]:
        """The block's in-flight entry (its fetch, its cache write done), and whether this caller
        made it: the one that fetches; the others wait for its result."""
        with self._inflight_lock:
            entry = self._inflight.get(key)
            if entry is not None:
                return entry, False
            entry = self._inflight[key] = (Future(), threading.Event())
            return entry, True

    def _fetching(self, key: str) -> bool:
        """Whether a fetch of the block is in flight (another reader claimed it)."""
        with self._inflight_lock:
            return key in self._inflight

    def _release(self, key: str, settled: threading.Event) -> None:
        with self._inflight_lock:
            self._inflight.pop(key, None)
        settled.set()

    def _settle(self, key: str, data: Buffer, fut: Future, fetched: bool, keep: bool = True) -> Buffer:
        """A claimed block, in memory (keep) and handed to its waiters; a fetched one then
        written to the disk cache by this thread, before the claim ends (so a warmup that
        returns has filled the cache)."""
        if keep:
            self._keep(key, data)
        fut.set_result(data)
        if fetched and self.cache is not None:
            self.cache.put(key, data)
        return data

    def get_blocks(self, blocks: list[tuple[int, int, int]], width: int) -> list[Buffer | BaseException | None] | None:
        """Whole blocks (slice id, slice size, index), a batch of small files' (Client.read_many),
        those not held here fetched by this thread together, `width` in flight
        (ObjectStore.get_many): each block, or its failure, or None for one another reader is
        fetching already (the caller reads it the usual way, which waits for that). None for
        all when the backend has no batched GET, or a cache group may hold them (its owners are
        asked one by one, as get_block does)."""
        if self.peers is not None or not self.objects.batched_gets:
            return None
        out: list[Buffer | BaseException | None] = [None] * len(blocks)
        mine = []  # (position, slice id, index, key, length, its in-flight entry)
        for j, slice_id, index, key, length in self._from_memory(blocks, out):
            entry, owner = self._claim(key)
            if owner:
                mine.append((j, slice_id, index, key, length, entry))
        try:
            misses = []
            for one in mine:
                j, slice_id, index, key, length, entry = one
                try:
                    data = self._local(slice_id, index, key, length)
                except BaseException as e:
                    entry[0].set_exception(e)
                    out[j] = e
                    continue
                if data is None:
                    misses.append(one)
                else:
                    out[j] = self._settle(key, data, entry[0], False)
            raws = self.objects.get_many([one[3] for one in misses], width) if misses else []
            for (j, slice_id, _index, key, length, (fut, _)), raw in zip(misses, raws, strict=True):
                data = None
                if raw is not None:
                    try:
                        data = decode_block(raw, length, key)
                    except ChecksumError:
                        self.metrics.checksum_errors.labels("object").inc()
                if data is None:  # failed in the batch: once more alone, with the retries
                    try:
                        data = self._fetch(slice_id, key, length)
                    except BaseException as e:
                        fut.set_exception(e)
                        out[j] = e
                        continue
                out[j] = self._settle(key, data, fut, True)
        finally:
            for _j, _sid, _index, key, _length, (fut, settled) in mine:
                if not fut.done():  # interrupted: its waiters read it themselves
                    fut.set_exception(ObjectUnavailable("the batched fetch was interrupted"))
                self._release(key, settled)
        return out

    def _load(self, slice_id: int, index: int, key: str, length: int,
              from_peer: bool = False) -> tuple[Buffer, bool]:
        """(block, fetched from the object store): held here or by a group member (_local), or
        else the object store (verified)."""
        data = self._local(slice_id, index, key, length, from_peer)
        if data is not None:
            return data, False
        return self._fetch(slice_id, key, length), True

    def _local(self, slice_id: int, index: int, key: str, length: int, from_peer: bool = False) -> Buffer | None:
        """A block from staging, the disk cache (verified) or the block's owner in the cache
        group (verified; not kept on disk here: the owner keeps it); a block another node has
        not uploaded yet is asked of its writer. None: the object store has to be asked."""
        if self.staging is not None:
            raw = self.staging.get(slice_id, index, length)
            if raw is not None:
                try:
                    return decode_block(raw, length, key)
                except ChecksumError:
                    self.metrics.checksum_errors.labels("staging").inc()
                    raise
        if self.cache is not None:
            data = self._cached(key)
            if data is not None:
                return data
        if self.peers is not None:
            data = self.peers.fetch(key, length) if not from_peer else None
            if data is None:  # a block still staged on its writer is asked of it before S3,
                data = self._from_writer(slice_id, key, length)  # which may be down meanwhile
            if data is not None:
                return data
        return None

    def _fetch(self, slice_id: int, key: str, length: int) -> Buffer:
        """A block from the object store, verified. A body that fails its checksum was most
        likely damaged on the way (a flipped bit, a cut connection): it is fetched again a few
        times before the read fails with EIO."""
        for attempt in range(1, REFETCHES + 2):
            try:
                raw = self.objects.get(key)
            except ObjectNotFound:
                staged = self._from_writer(slice_id, key, length)
                if staged is not None:
                    return staged
                raw = self._wait_pending(slice_id, key)
            try:
                return decode_block(raw, length, key)
            except ChecksumError as e:
                self.metrics.checksum_errors.labels("object").inc()
                if attempt > REFETCHES:
                    raise
                log.warning("%s: fetching it again", e)
        raise AssertionError("unreachable")

    def _from_writer(self, slice_id: int, key: str, length: int) -> Buffer | None:
        """A block not uploaded yet, from the staging of the group member that wrote it."""
        if self.peers is None:
            return None
        sid = self.pending_writer(slice_id)
        m = self.peers.writer(sid) if sid is not None else None
        return self.peers.fetch(key, length, m, staged=True) if m is not None else None

    # ---- serving the group (group/service.py) ------------------------------------------------
    def keep_for_peer(self, slice_id: int, index: int, length: int) -> str | None:
        """Make sure this node holds a block a peer asks for (fetching it from the object store
        on a miss, once, however many ask); the path of its cache entry, None without a disk
        cache (then entry_bytes answers from memory)."""
        key = self.key(slice_id, index, length)
        if self.cache is not None:
            path = self.cache.entry_path(key)
            if path is not None:
                return path
        self.get_block(slice_id, index * self.block_size + length, index, keep=self.cache is None,
                       from_peer=True)
        return self.cache.entry_path(key) if self.cache is not None else None

    def entry_bytes(self, slice_id: int, index: int, length: int) -> bytes:
        plain = self.get_block(slice_id, index * self.block_size + length, index, from_peer=True)
        return entry_header(plain) + bytes(plain)

    def staged_path(self, slice_id: int, index: int, length: int) -> str | None:
        if self.staging is None or not self.staging.has(slice_id, index, length):
            return None
        return self.staging.file(slice_id, index, length)

    def is_pending(self, slice_id: int) -> bool:
        return slice_id in self.pending_slice_ids()

    def _wait_pending(self, slice_id: int, key: str) -> bytes:
        """A missing block of a slice still pending on its writer: poll until it arrives, at most
        pending_timeout, then EIO (never zeros, never a hang)."""
        if not self.is_pending(slice_id):
            raise ObjectNotFound(f"block {key} is missing from the object store")
        deadline = time.monotonic() + self.pending_timeout
        delay = 0.1
        while True:
            pending = self.is_pending(slice_id)
            try:
                return self.objects.get(key)
            except ObjectNotFound:
                if not pending:
                    raise ObjectNotFound(f"block {key} is missing from the object store") from None
            if time.monotonic() >= deadline:
                raise ObjectError(f"block {key} is still not uploaded by its writer after "
                                  f"{self.pending_timeout:g} s")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(1.0, delay * 2)

    def _cached(self, key: str, offset: int = 0, n: int | None = None) -> Buffer | None:
        """Bytes [offset, offset+n) of a block from the disk cache (n None: the whole block),
        verified; None on a miss or a damaged entry (dropped: the caller fetches it again)."""
        try:
            return self.cache.read_range(key, offset, n)
        except ChecksumError as e:
            self._cache_damaged(key, e)
            return None

    def _cache_damaged(self, key: str, e: ChecksumError) -> None:
        self.metrics.checksum_errors.labels("cache").inc()
        self.cache.drop(key)
        log.warning("%s: dropped, fetching again", e)

    def read(self, slice_id: int, slice_size: int, off: int, n: int, random: bool = False) -> Buffer:
        """Bytes [off, off+n) of a slice, fetching its blocks in parallel. A small read of a block
        that is not in memory reads just its segments from the disk cache, or (random: no
        sequential reader wants the rest soon) from the object store with ranged GETs. A read
        inside one block answers with a view of it: FUSE replies from the view, and a 1 MiB
        copy per request was a fifth of a warm sequential read's CPU."""
        bs = self.block_size
        first, last = off // bs, (off + n - 1) // bs
        start = off - first * bs
        if first == last:
            length = self._length(slice_size, first)
            key = self.key(slice_id, first, length)
            block = self.buffer.get(key)
            if block is None and self.cache is not None and self._small(n):
                data = self._cached(key, start, n)
                if data is not None:
                    return data
            if block is None and random and self.ranged_reads and self._small(n):
                data = self._read_range(slice_id, slice_size, first, length, key, start, n)
                if data is not None:
                    return data
            if block is None:
                block = self.get_block(slice_id, slice_size, first)
            else:
                self.metrics.buffer_hits.inc()
            return block if start == 0 and n == len(block) else memoryview(block)[start : start + n]
        futs = [self._downloads.submit(self.get_block, slice_id, slice_size, i) for i in range(first + 1, last + 1)]
        blocks = [self.get_block(slice_id, slice_size, first)] + [f.result() for f in futs]
        # only the asked-for part of each block is copied, once
        end = off + n - last * bs
        views = [memoryview(b) for b in blocks]
        views[-1] = views[-1][:end]
        views[0] = views[0][start:]
        return b"".join(views)

    def _from_memory(self, blocks: list[tuple[int, int, int]], out: list) -> list[tuple[int, int, int, str, int]]:
        """Blocks (slice id, slice size, index) of a batch found in the memory buffer, answered in
        their places in `out`; the others' (position, slice id, index, key, length)."""
        rest = []
        for j, (slice_id, slice_size, index) in enumerate(blocks):
            length = self._length(slice_size, index)
            key = self.key(slice_id, index, length)
            data = self.buffer.get(key)
            if data is not None:
                self.metrics.buffer_hits.inc()
                out[j] = data
            else:
                rest.append((j, slice_id, index, key, length))
        return rest

    def read_cached(self, blocks: list[tuple[int, int, int]]) -> list[Buffer | None]:
        """Whole small blocks (slice id, slice size, index), a batch of small files', from memory
        or the disk cache (cache.read_whole: every entry's read started before the first is
        waited for); None for one held in neither, or damaged (dropped and counted), for the
        caller to fetch. One pass over the batch: an advise and a read per file through the
        read path cost a DataLoader worker about as much CPU again as the system calls."""
        out: list[Buffer | None] = [None] * len(blocks)
        if self.cache is None:
            return out
        wanted, where = [], []
        for j, _slice_id, _index, key, length in self._from_memory(blocks, out):
            if self._small(length):
                wanted.append((key, length))
                where.append(j)
        for j, (key, _), data in zip(where, wanted, self.cache.read_whole(wanted) if wanted else [], strict=True):
            if isinstance(data, ChecksumError):
                self._cache_damaged(key, data)
            else:
                out[j] = data
        return out

    def preload(self, slice_id: int, slice_size: int, index: int) -> bool:
        """A small block about to be read, brought into the memory buffer from the disk cache
        (verified; never from the network): the FUSE shell's open of a small file does this on
        its worker thread, so the read after the open is answered in the event loop instead of
        crossing to a thread a second time. False when it is not cached on this disk, too large
        (a partial reader of a large one would pay for all of it), or being fetched already."""
        known = self.buffered(slice_id, slice_size, index)
        if known is not False:
            return bool(known)
        key = self.key(slice_id, index, self._length(slice_size, index))
        if self.cache is None or not self.cache.contains(key):
            return False  # not counted as a miss: the read after the open counts it
        data = self._cached(key)
        if data is None:
            return False
        self._keep(key, data)
        return True

    def buffered(self, slice_id: int, slice_size: int, index: int) -> bool | None:
        """What preload would answer, from memory alone: True (in the memory buffer), False (it
        would look in the disk cache), None (it would do nothing)."""
        length = self._length(slice_size, index)
        if self.cache is None or not self._small(length):
            return None
        key = self.key(slice_id, index, length)
        if self.buffer.get(key) is not None:
            return True
        return None if self._fetching(key) else False

    def _keep(self, key: str, data: Buffer) -> None:
        self.buffer.put(key, data)
        self.metrics.buffer_bytes.set(self._uploading + self.buffer.used)

    def _small(self, n: int) -> bool:
        """A read small enough to be served from its block's segments, not the whole block."""
        return n <= self.block_size // 8

    def advise(self, slice_id: int, slice_size: int, off: int, n: int) -> bool:
        """Tell the disk cache bytes [off, off+n) of a slice will be read next (cache.advise);
        False when some of them are neither in memory nor in the cache."""
        if self.cache is None:
            return False
        bs = self.block_size
        ok = True
        for i in range(off // bs, (off + n - 1) // bs + 1):
            length = self._length(slice_size, i)
            key = self.key(slice_id, i, length)
            if self.buffer.get(key) is not None:
                continue
            start = max(off, i * bs) - i * bs
            ok = self.cache.advise(key, start, min(off + n, i * bs + length) - i * bs - start) and ok
        return ok

    def read_resident(self, slice_id: int, slice_size: int, off: int, n: int,
                      pending: bool = False) -> Buffer | PendingRead | None:
        """read() from memory only (the memory buffer, or a disk cache entry whose pages are
        resident), for the FUSE shell's event loop; None when that is not enough. pending: a
        cache entry's pages not resident are answered with the read to make (PendingRead)."""
        bs = self.block_size
        first = off // bs
        if (off + n - 1) // bs != first:
            return None
        length = self._length(slice_size, first)
        key = self.key(slice_id, first, length)
        start = off - first * bs
        block = self.buffer.get(key)
        if block is not None:
            self.metrics.buffer_hits.inc()
            return block if start == 0 and n == len(block) else memoryview(block)[start : start + n]
        if self.cache is None:
            return None
        try:
            return self.cache.read_resident(key, start, n, pending)
        except ChecksumError:
            return None  # the thread path drops the entry and fetches again

    def _read_range(self, slice_id: int, slice_size: int, index: int, length: int, key: str, start: int,
                    n: int) -> Buffer | None:
        """Bytes [start, start+n) of a cold CFB2 block: the checksum table (kept) and the
        segments the bytes lie in, fetched with ranged GETs in parallel and verified; the whole
        block follows in the background. None where the block must come whole (staged here,
        being fetched already, pending on another node, or not CFB2)."""
        if self.staging is not None and self.staging.has(slice_id, index, length):
            return None
        if self._fetching(key):
            return None
        head = table_size(length)
        s0, s1 = start // SEGMENT, (start + n - 1) // SEGMENT
        lo, hi = head + s0 * SEGMENT, head + min(length, (s1 + 1) * SEGMENT)
        for attempt in range(1, REFETCHES + 2):
            table = self._tables.get(key)
            try:
                if table is None:
                    fut = self._downloads.submit(self.objects.get_range, key, 0, head)
                    body = self.objects.get_range(key, lo, hi)
                    table = fut.result()
                    if table[:4] != MAGIC2:
                        return None
                else:
                    body = self.objects.get_range(key, lo, hi)
                plain = verify_segments(table, body, s0, key, s1 - s0 + 1)
            except ObjectNotFound:
                return None  # not uploaded yet by its writer: get_block waits for it
            except ChecksumError as e:
                self.metrics.checksum_errors.labels("object").inc()
                self._tables.drop(key)
                if attempt > REFETCHES:
                    raise
                log.warning("%s: fetching it again", e)
                continue
            self._tables.put(key, bytes(table))
            self.metrics.range_reads.inc()
            self.prefetch(slice_id, slice_size, index)
            skip = start - s0 * SEGMENT
            return plain[skip : skip + n]
        return None

    def prefetch(self, slice_id: int, slice_size: int, index: int) -> None:
        """Start fetching a block that a sequential reader will want soon."""
        if index * self.block_size >= slice_size:
            return
        length = self._length(slice_size, index)
        key = self.key(slice_id, index, length)
        if self.buffer.get(key) is not None:
            return
        if self._fetching(key):
            return

        def run() -> None:
            try:
                self.get_block(slice_id, slice_size, index)
                self.metrics.prefetches.inc()
            except Exception:
                pass  # the real read reports it

        self._downloads.submit(run)

    # ---- warmup ----------------------------------------------------------------------------
    def _keys(self, slice_id: int, size: int) -> list[tuple[int, str, int]]:
        return block_keys(self.volume, slice_id, size, self.block_size)

    def warm(self, slice_id: int, size: int) -> int:
        """Bring a slice's blocks into the cache: this node's disk cache, or in a cache group
        each block's owner's (asked to fetch and keep it; its bytes do not travel here);
        returns bytes fetched."""
        fetched = 0
        for i, key, n in self._keys(slice_id, size):
            if self.peers is not None and self.peers.owner(key) is not None:
                if self.peers.warm(key):
                    fetched += n
                    continue
            if self.cache is not None and not self.cache.contains(key):
                self.get_block(slice_id, size, i, keep=False)
                fetched += n
        return fetched

    def cached(self, slice_id: int, size: int) -> int:
        """Bytes of a slice that the cache holds: this node's, or in a cache group each block's
        owner's."""
        keys = self._keys(slice_id, size)
        remote = self.peers.cached([k for _, k, _ in keys]) if self.peers is not None else {}
        local = self.cache.contains if self.cache is not None else (lambda key: False)
        return sum(n for _, key, n in keys if remote.get(key, False) or key not in remote and local(key))

    def evict(self, slice_id: int, size: int) -> None:
        for _, key, _ in self._keys(slice_id, size):
            self.buffer.drop(key)
            if self.cache is not None:
                self.cache.drop(key)

    # ---- deleting --------------------------------------------------------------------------
    def delete_slice(self, slice_id: int, size: int) -> None:
        self.durability.abandon([slice_id])
        for _, key, _ in self._keys(slice_id, size):
            self.buffer.drop(key)
            if self.cache is not None:
                self.cache.drop(key)
            self.objects.delete(key)

    def stored_slices(self, start: int, end: int) -> dict[int, list[str]]:
        """The object keys of every slice with an id in [start, end) the object store holds."""
        out: dict[int, list[str]] = {}
        for folder in sorted({block_folder(self.volume, i) for i in (start, end - 1)} |
                             {block_folder(self.volume, i) for i in range(start, end, 1000)}):
            for key, _ in self.objects.list(folder):
                ident = parse_block_key(key)
                if ident is not None and start <= ident[0] < end:
                    out.setdefault(ident[0], []).append(key)
        return out

    def close(self) -> None:
        """Wait for the uploads in flight (the durability behind them is the volume's to close)."""
        self._uploads.shutdown(wait=True)
        self._downloads.shutdown(wait=True, cancel_futures=True)


class SliceWriter:
    """Collects one contiguous write and uploads full blocks while it is still growing."""

    def __init__(self, cs: ChunkStore, slice_id: int, ino: int = 0, through: bool = False) -> None:
        self.cs = cs
        self.id = slice_id
        self.ino = ino
        self.through = through
        self.length = 0
        # the block being filled, as pieces: big writes are kept by reference (FUSE hands us
        # immutable bytes), small ones are coalesced into a bytearray
        self._parts: list[Buffer] = []
        self._fill = 0
        self._next_index = 0
        self._futures: list[Future] = []

    def write(self, data: Buffer) -> None:
        mv = memoryview(data)
        if not isinstance(mv.obj, bytes):
            mv = memoryview(bytes(mv))  # a mutable buffer may change under us: copy it once
        self.length += len(mv)
        bs = self.cs.block_size
        while mv:
            take = mv[: bs - self._fill]
            if len(take) >= SMALL_PIECE:
                self._parts.append(take)
            elif self._parts and isinstance(self._parts[-1], bytearray):
                self._parts[-1] += take
            else:
                self._parts.append(bytearray(take))
            self._fill += len(take)
            mv = mv[len(take) :]
            if self._fill == bs:
                self._upload(self._parts)  # handed over: never touched here again
                self._parts, self._fill = [], 0

    def _upload(self, block: list[Buffer]) -> None:
        self._futures.append(self.cs.put_block(self.id, self._next_index, block, self.ino, self.through))
        self._next_index += 1
        # surface early failures instead of queueing more work behind them
        done = [f for f in self._futures if f.done()]
        for f in done:
            f.result()

    def finish(self) -> int:
        """Upload the tail and wait for every block; raises ObjectError if any upload failed."""
        if self._fill and not self._futures and not self._next_index:  # the slice is one short block
            parts, self._parts, self._fill = self._parts, [], 0
            try:
                self.cs.store_now(self.id, 0, parts, self.ino, self.through)
            except ObjectError:
                raise
            except Exception as e:
                raise ObjectError(f"upload of slice {self.id} failed: {e}") from e
            self._next_index = 1
            return self.length
        if self._fill:
            self._upload(self._parts)
            self._parts, self._fill = [], 0
        err: BaseException | None = None
        for f in self._futures:
            try:
                f.result()
            except BaseException as e:  # keep waiting for the others
                err = err or e
        self._futures = []
        if err is not None:
            if isinstance(err, ObjectError):
                raise err
            raise ObjectError(f"upload of slice {self.id} failed: {err}")
        return self.length


__all__ = ["ChunkStore", "SliceWriter", "BlockBuffer"]
