"""The local block cache on NVMe: one or more directories, blocks spread by hash, bounded by a
size limit and a minimum free-space ratio, 2-random eviction (eviction.py), crash-safe entries (written to a
temporary name and renamed), an index rebuilt from disk at start, and directories that fail
are dropped while the mount carries on.

An entry holds a block's plain bytes after a table of xxh64 checksums, one per 64 KiB segment,
so a small random read loads and verifies only the segments it needs, never wrong bytes.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import struct
import threading
import zlib
from collections import OrderedDict

import xxhash

from . import ownerlock
from .block import Buffer, parse_block_key
from .directio import AlignedBuffers, AtomicWriter
from .errors import ChecksumError
from .eviction import EntryTable
from .fileutil import FILE_MODE, private_dirs, tighten
from .metrics import Metrics

MAGIC = b"CFC1"
HEADER = struct.Struct("<4sII")  # magic, plain length, segment size
SEGMENT = 64 << 10
LATER_QUEUE = 64  # blocks waiting for the cache writer thread (put_later)
OPEN_FILES = 256  # entries kept open for reading
TABLES = 65_536  # entries whose checksum table is kept in memory (~530 bytes each for 4 MiB blocks)
TABLE_READ = 4096  # bytes read for a table not in memory (covers blocks up to 32 MiB)

log = logging.getLogger("cachefs.cache")
_FATAL = {errno.EROFS, errno.EIO, errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.ENODEV, errno.EPERM}


def entry_header(plain: bytes) -> bytes:
    """The header and checksum table that precede a block's bytes in its cache entry."""
    mv = memoryview(plain)
    sums = b"".join(struct.pack("<Q", xxhash.xxh64_intdigest(mv[i : i + SEGMENT]))
                    for i in range(0, len(plain), SEGMENT))
    return HEADER.pack(MAGIC, len(plain), SEGMENT) + sums


def _span(offset: int, n: int, length: int, seg: int) -> tuple[int, int] | None:
    """(first segment, bytes from its start to the last touched segment's end) of a read of
    [offset, offset+n) from an entry of `length` plain bytes; None when that is not inside it."""
    if n <= 0 or offset < 0 or offset + n > length:
        return None
    first, last = offset // seg, (offset + n - 1) // seg
    return first, min(length, (last + 1) * seg) - first * seg


def _inside(span: tuple[int, int] | None, key: str) -> tuple[int, int]:
    if span is None:
        raise ChecksumError(f"cache entry {key}: shorter than asked")
    return span


def _start_from_key(key: str) -> tuple[int, int] | None:
    """(plain length, offset of the data) the entry of a block key has when it was written with
    today's segment size: its length is in the key, so its table's size is known unread."""
    parsed = parse_block_key(key)
    if parsed is None:
        return None
    length = parsed[2]
    return length, HEADER.size + 8 * ((length + SEGMENT - 1) // SEGMENT)


def advise_entry(fd: int, key: str, offset: int, n: int) -> None:
    """Start reading an entry's table and bytes [offset, offset+n) into the page cache without
    waiting (POSIX_FADV_WILLNEED): the read that follows finds them there or on their way."""
    layout = _start_from_key(key)
    os.posix_fadvise(fd, 0, offset + n + (layout[1] if layout is not None else 0), os.POSIX_FADV_WILLNEED)


def read_entry(fd: int, key: str, offset: int, n: int | None, known: bytes | None = None,
               advised: bool = False) -> tuple[bytes, Buffer]:
    """(header and checksum table, verified bytes [offset, offset+n); n None: to the end) of an
    open entry; ChecksumError if damaged or shorter than asked. `known` is its table, already
    read. A read from the first segment of an entry whose table is not known reads table and
    data in one pread (the key gives the table's size): a warm small file costs one read
    from disk instead of two (measured: 70 instead of 110 us of CPU for 110 KB). `advised`:
    advise_entry has the whole entry on its way to the page cache, so a whole block is read
    in two preads instead, its bytes an object of their own that no caller copies again
    (a DataLoader worker's `bytes()` of the slice cost ~9 us per 110 KB item)."""
    guess = _start_from_key(key) if known is None and offset < SEGMENT else None
    if guess is not None:
        length, start = guess
        m = length - offset if n is None else n
        want = _inside(_span(offset, m, length, SEGMENT), key)[1]  # from segment 0: offset < SEGMENT
        if advised and offset == 0 and m == length:
            head, data = os.pread(fd, start, 0), os.pread(fd, length, start)
        else:
            raw = os.pread(fd, start + want, 0)
            head, data = raw[:start], memoryview(raw)[start:]
        if len(head) >= HEADER.size and HEADER.unpack_from(head) == (MAGIC, length, SEGMENT):
            if len(head) != start or len(data) != want:
                raise ChecksumError(f"cache entry {key}: truncated")
            _verify(data, head[HEADER.size :], 0, SEGMENT, key)
            return head, data if offset == 0 and len(data) == m else data[offset : offset + m].toreadonly()
    table = known if known is not None else os.pread(fd, TABLE_READ, 0)
    length, seg, start = _layout(table, key)
    if len(table) < start:
        table = os.pread(fd, start, 0)
    if n is None:
        n = length - offset
    first, want = _inside(_span(offset, n, length, seg), key)
    data = os.pread(fd, want, start + first * seg)
    if len(data) != want:
        raise ChecksumError(f"cache entry {key}: truncated")
    _verify(data, table[HEADER.size : start], first, seg, key)
    skip = offset - first * seg
    return table[:start], data if skip == 0 and n == len(data) else memoryview(data)[skip : skip + n].toreadonly()


def _layout(head: bytes, key: str) -> tuple[int, int, int]:
    """(plain length, segment size, offset of the data) of an entry, or ChecksumError."""
    if len(head) < HEADER.size:
        raise ChecksumError(f"cache entry {key}: truncated")
    magic, length, seg = HEADER.unpack_from(head)
    if magic != MAGIC or seg <= 0:
        raise ChecksumError(f"cache entry {key}: bad header")
    nseg = (length + seg - 1) // seg
    return length, seg, HEADER.size + 8 * nseg


def decode_entry(data: bytes, length: int, what: str) -> memoryview:
    """The plain bytes of a whole cache entry (as a peer sends it), each segment verified."""
    length_in, seg, start = _layout(data, what)
    if length_in != length or len(data) != start + length:
        raise ChecksumError(f"{what}: {len(data)} bytes, not a cache entry of {length}")
    _verify(memoryview(data)[start:], memoryview(data)[HEADER.size : start], 0, seg, what)
    return memoryview(data)[start:].toreadonly()


def _verify(data: bytes, sums: bytes, first_seg: int, seg: int, key: str) -> None:
    mv = memoryview(data)
    for i in range(0, len(data), seg):
        want = struct.unpack_from("<Q", sums, (first_seg + i // seg) * 8)[0]
        if xxhash.xxh64_intdigest(mv[i : i + seg]) != want:
            raise ChecksumError(f"cache entry {key}: checksum mismatch")


class PendingRead:
    """A cache entry read that must wait for the disk (DiskCache.read_resident with pending):
    read `size` bytes of `fd` at `pos`, then finish() them (verified: ChecksumError), or drop()
    it; either way exactly once, since it holds the entry's descriptor open until then."""

    def __init__(self, cache: DiskCache, key: str, fd: int, pos: int, size: int, check: tuple) -> None:
        self.fd, self.pos, self.size = fd, pos, size
        self._cache, self._key, self._check = cache, key, check  # check: _checked's arguments after buf
        self._open = True

    def finish(self, buf: Buffer) -> bytes:
        """The asked bytes, from the `size` bytes read at `pos`."""
        try:
            if len(buf) != self.size:
                raise ChecksumError(f"cache entry {self._key}: short read")
            return self._cache._checked(self._key, buf, *self._check)
        finally:
            self.drop()

    def drop(self) -> None:
        if self._open:
            self._open = False
            self._cache._done(self._key)


class CacheBusy(Exception):
    """Another process of this node keeps this cache directory (see cacheview.py)."""


def _own(base: str) -> int:
    """Take the directory's owner lock (ownerlock.py), read-only so that a cache file system
    can still be remounted read-only under us."""
    fd = ownerlock.take(os.path.join(os.path.dirname(base), ".owner"), os.O_RDONLY, FILE_MODE)
    if fd is None:
        raise CacheBusy(base)
    if os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, FILE_MODE)  # empty, but kept as private as the entries beside it
    return fd


class CacheDir:
    """One cache directory; its writer shares the cache's direct-I/O buffers."""

    def __init__(self, root: str, volume_uuid: str, writer: AtomicWriter) -> None:
        self.root = os.path.abspath(root)
        self.base = os.path.join(self.root, volume_uuid, "raw")
        self.alive = True
        self.writer = writer

    def path(self, key: str) -> str:
        return os.path.join(self.base, key)


class DiskCache:
    def __init__(self, dirs: list[str], volume_uuid: str, capacity: int, free_ratio: float = 0.1,
                 metrics: Metrics | None = None) -> None:
        self.capacity = capacity
        self.free_ratio = free_ratio
        self.metrics = metrics or Metrics()
        self._lock = threading.Lock()
        self._buffers = AlignedBuffers(8)  # direct I/O: at most 8 entries in flight, 8 reused buffers
        self._entries: EntryTable[tuple[CacheDir, int]] = EntryTable()  # 2-random eviction (eviction.py)
        self._later: queue.Queue | None = None
        self._fds: OrderedDict[str, list] = OrderedDict()  # key -> [fd, readers, dropped] (open entries)
        self._tables: OrderedDict[str, bytes] = OrderedDict()  # key -> header and checksum table
        self.used = 0
        self.dirs: list[CacheDir] = []
        self._owned: list[int] = []  # descriptors holding the directories' owner locks
        for d in dirs:
            cd = CacheDir(d, volume_uuid, AtomicWriter(f"cache dir {os.path.abspath(d)}", self._buffers))
            try:
                private_dirs(cd.base)
                tighten(os.path.dirname(cd.base))  # <dir>/<uuid>: this volume's entries and staging
                tighten(cd.base)
                self._owned.append(_own(cd.base))
                self._scan(cd)
            except CacheBusy:
                self.close()
                raise
            except OSError as e:
                log.error("cache dir %s unusable, skipped: %s", d, e.strerror)
                continue
            self.dirs.append(cd)
        self._publish()

    def _scan(self, cd: CacheDir) -> None:
        """Rebuild the index of one directory, oldest access first; torn temp files go away."""
        found = []
        for dirpath, _dirs, files in os.walk(cd.base):
            for name in files:
                full = os.path.join(dirpath, name)
                if ".tmp." in name:
                    try:
                        os.unlink(full)
                    except OSError:
                        pass
                    continue
                try:
                    st = os.stat(full)
                    if st.st_mode & 0o077:
                        os.chmod(full, FILE_MODE)
                except OSError:
                    continue
                found.append((st.st_atime, os.path.relpath(full, cd.base), st.st_size))
        found.sort()
        for _, key, size in found:
            if key not in self._entries:
                self._entries.add(key, (cd, size))
                self.used += size

    def _publish(self) -> None:
        self.metrics.cache_bytes.set(self.used)
        self.metrics.cache_blocks.set(len(self._entries))
        self.metrics.cache_dirs.set(sum(d.alive for d in self.dirs))

    def _live(self) -> list[CacheDir]:
        return [d for d in self.dirs if d.alive]

    def _pick(self, key: str) -> CacheDir | None:
        live = self._live()
        if not live:
            return None
        return live[zlib.crc32(key.encode()) % len(live)]

    def _fail(self, cd: CacheDir, e: OSError) -> None:
        """Drop a directory that disappeared or stopped taking writes; forget its entries."""
        if e.errno not in _FATAL or not cd.alive:
            return
        if e.errno == errno.ENOENT and os.path.isdir(cd.root) and os.path.isdir(cd.base):
            return  # one entry vanished, the directory is fine
        log.error("cache dir %s failed (%s): dropped, reading from the object store", cd.root, e.strerror)
        cd.alive = False
        with self._lock:
            for key in [k for k, (d, _) in self._entries.items() if d is cd]:
                _, size = self._entries.pop(key)
                self._close(key)
                self.used -= size
        self._publish()

    def entry_path(self, key: str) -> str | None:
        """The file of a cached block (counted as a use), for sending it as it is."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry[0].alive:
                return None
            self._entries.touch(key)
        return entry[0].path(key)

    def contains(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry[0].alive

    def _open(self, key: str) -> tuple[int, CacheDir] | None:
        """A descriptor of the entry's file (kept open for the next read: a random reader's
        open and close cost as much as its read), counted as in use until _done(key)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.touch(key)
                held = self._fds.get(key)
                if held is not None and entry[0].alive:
                    held[1] += 1
                    self._fds.move_to_end(key)
                    return held[0], entry[0]
        if entry is None or not entry[0].alive:
            self.metrics.cache_misses.inc()
            return None
        cd = entry[0]
        try:
            fd = os.open(cd.path(key), os.O_RDONLY)
        except OSError as e:
            self._broken(key, cd, e)
            return None
        with self._lock:
            held = self._fds.get(key)
            if held is not None:  # another thread opened it meanwhile: use theirs
                os.close(fd)
                held[1] += 1
                return held[0], cd
            self._fds[key] = [fd, 1, False]
            while len(self._fds) > OPEN_FILES:
                old = next((k for k, v in self._fds.items() if v[1] == 0), None)
                if old is None:
                    break
                os.close(self._fds.pop(old)[0])
        return fd, cd

    def _done(self, key: str) -> None:
        with self._lock:
            held = self._fds.get(key)
            if held is None:
                return
            held[1] -= 1
            if held[1] == 0 and held[2]:  # dropped while in use
                os.close(self._fds.pop(key)[0])

    def _close(self, key: str) -> None:
        """The entry is gone (caller holds the lock): its descriptor and table go too."""
        self._tables.pop(key, None)
        held = self._fds.get(key)
        if held is None:
            return
        if held[1] == 0:
            os.close(self._fds.pop(key)[0])
        else:
            held[2] = True

    def _broken(self, key: str, cd: CacheDir, e: OSError) -> None:
        self.metrics.cache_errors.inc()
        self._forget(key)
        self._fail(cd, e)
        self.metrics.cache_misses.inc()

    def advise(self, key: str, offset: int, n: int) -> bool:
        """Start reading bytes [offset, offset+n) of an entry into the page cache without
        waiting (POSIX_FADV_WILLNEED; its descriptor stays open for the read); False on a miss."""
        opened = self._open(key)
        if opened is None:
            return False
        try:
            advise_entry(opened[0], key, offset, n)
        finally:
            self._done(key)
        return True

    def get(self, key: str) -> Buffer | None:
        """A whole block's plain bytes, verified; None on a miss; ChecksumError if damaged."""
        return self.read_range(key, 0, None)

    def read_range(self, key: str, offset: int, n: int | None) -> Buffer | None:
        """Bytes [offset, offset+n) of a block (n None: to its end), reading and verifying only
        the segments they touch; None on a miss; ChecksumError if damaged. Reads go through the
        page cache: its readahead serves sequential readers and a random reader's hot pages stay
        in memory (direct reads measured 0.6x on both). An entry's checksum table is kept in
        memory once read, and its file open: a random 4 KiB read costs one pread."""
        opened = self._open(key)
        if opened is None:
            return None
        fd, cd = opened
        try:
            table, data = read_entry(fd, key, offset, n, self._tables.get(key))
        except OSError as e:
            self._done(key)
            self._broken(key, cd, e)
            return None
        except ChecksumError:
            self._done(key)
            raise
        self._done(key)
        with self._lock:
            if key in self._entries:
                self._tables[key] = table
                if len(self._tables) > TABLES:
                    self._tables.popitem(last=False)
        self.metrics.cache_hits.inc()
        self.metrics.cache_hit_bytes.inc(len(data))
        return data

    def read_whole(self, blocks: list[tuple[str, int]]) -> list[Buffer | ChecksumError | None]:
        """Whole blocks' bytes (key, length), every entry advised before the first is read; None
        for a miss, the ChecksumError of a damaged one in its place."""
        advised = [self.advise(key, 0, length) for key, length in blocks]
        out: list[Buffer | ChecksumError | None] = []
        for (key, _), ok in zip(blocks, advised, strict=True):
            try:
                out.append(self.read_range(key, 0, None) if ok else None)
            except ChecksumError as e:
                out.append(e)
        return out

    def read_resident(self, key: str, offset: int, n: int, pending: bool = False) -> bytes | PendingRead | None:
        """read_range from memory only: the entry's file already open, its table known and the
        pages in the page cache (preadv with RWF_NOWAIT); None for anything that might block.
        Still verified (ChecksumError). pending: pages not resident are answered with the read
        to make instead (a PendingRead, which keeps the descriptor open until it is finished or
        dropped), for a caller that can wait for it without a thread (cachefs/uring.py)."""
        with self._lock:
            held, table = self._fds.get(key), self._tables.get(key)
            if held is None or table is None or held[2] or key not in self._entries:
                return None
            held[1] += 1
        keep = False
        try:
            length, seg, start = _layout(table, key)
            span = _span(offset, n, length, seg)
            if span is None:
                return None
            first, want = span
            buf = bytearray(want)
            try:
                got = os.preadv(held[0], [buf], start + first * seg, os.RWF_NOWAIT)
            except BlockingIOError:
                if not pending:
                    return None  # not resident: the thread path will read it
                keep = True
                return PendingRead(self, key, held[0], start + first * seg, want,
                                   (table[HEADER.size : start], first, seg, offset, n))
            except OSError:
                return None  # anything else: the thread path will tell
            if got != want:
                return None
        finally:
            if not keep:
                self._done(key)
        return self._checked(key, buf, table[HEADER.size : start], first, seg, offset, n)

    def _checked(self, key: str, buf: Buffer, sums: bytes, first: int, seg: int, offset: int, n: int) -> bytes:
        """The asked bytes of segments read from an entry, once they matched their checksums."""
        _verify(buf, sums, first, seg, key)
        self.metrics.cache_hits.inc()
        self.metrics.cache_hit_bytes.inc(n)
        skip = offset - first * seg
        return bytes(memoryview(buf)[skip : skip + n])

    def put_later(self, key: str, plain: bytes) -> None:
        """Keep a block, written by a thread of the cache's own: for blocks just written, whose
        writer need not wait for their cache entry (best effort: dropped when that thread is
        behind by LATER_QUEUE entries)."""
        with self._lock:
            if self._later is None:
                self._later = queue.Queue(LATER_QUEUE)
                threading.Thread(target=self._put_loop, name="cache-writer", daemon=True).start()
        try:
            self._later.put_nowait((key, bytes(plain)))
        except queue.Full:
            pass

    def _put_loop(self) -> None:
        while True:
            key, plain = self._later.get()
            try:
                self.put(key, plain)
            except Exception as e:  # a failing disk is dropped by put itself
                log.warning("cache entry %s not written: %s", key, e)

    def put(self, key: str, plain: bytes) -> None:
        """Keep a (verified) block's plain bytes."""
        head = entry_header(plain)
        size = len(head) + len(plain)
        if size > self.capacity:
            return
        cd = self._pick(key)
        if cd is None or self.contains(key):
            return
        try:
            if not os.path.isdir(cd.root):
                raise FileNotFoundError(errno.ENOENT, "cache dir is gone", cd.root)
            cd.writer.write(cd.path(key), (head, plain))
        except OSError as e:
            self.metrics.cache_errors.inc()
            if e.errno == errno.ENOSPC:
                self._evict(need=size * 4)
            self._fail(cd, e)
            return
        with self._lock:
            self._entries.add(key, (cd, size))
            self.used += size
        self.metrics.cache_write_bytes.inc(size)
        self._evict()
        self._publish()

    def adopt(self, keys: list[str]) -> int:
        """Count entries that another process of this node wrote into our directories (a
        reader's fetches, cacheview.py), then evict as a put would; how many were new."""
        added = 0
        for key in keys:
            cd = self._pick(key)
            if cd is None:
                break
            try:
                size = os.stat(cd.path(key)).st_size
            except OSError:
                continue  # evicted already, or written where we do not look: nothing to count
            with self._lock:
                if key in self._entries:
                    continue
                self._entries.add(key, (cd, size))
                self.used += size
            added += 1
        if added:
            self._evict()
            self._publish()
        return added

    def _low_on_space(self, cd: CacheDir) -> bool:
        try:
            st = os.statvfs(cd.root)
        except OSError:
            return False
        return st.f_bavail < st.f_blocks * self.free_ratio

    def _evict(self, need: int = 0) -> None:
        """Drop blocks (the older of two random ones each time) until under the size limit and
        every live directory keeps its minimum free space."""
        while True:
            with self._lock:
                if not self._entries:
                    return
                over = self.used + need > self.capacity
                victim_dir = None
                if not over:
                    victim_dir = next((d for d in self._live() if self._low_on_space(d)), None)
                    if victim_dir is None:
                        return
                key = self._entries.victim(lambda e, v=victim_dir: v in (None, e[0]))
                if key is None:
                    return
                cd, size = self._entries.pop(key)
                self._close(key)
                self.used -= size
            need = max(0, need - size)
            try:
                os.unlink(cd.path(key))
            except OSError:
                pass
            self.metrics.cache_evictions.inc()
            self._publish()

    def _forget(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key)
            self._close(key)
            if entry is not None:
                self.used -= entry[1]

    def drop(self, key: str) -> None:
        """Remove one entry (corrupt, or evicted on request)."""
        with self._lock:
            entry = self._entries.pop(key)
            self._close(key)
            if entry is not None:
                self.used -= entry[1]
        if entry is not None:
            try:
                os.unlink(entry[0].path(key))
            except OSError:
                pass
            self._publish()

    def close(self) -> None:
        """Give the directories up (their owner locks): another process may keep them now."""
        with self._lock:
            for key in list(self._fds):
                if self._fds[key][1] == 0:
                    os.close(self._fds.pop(key)[0])
        for fd in self._owned:
            ownerlock.release(fd)
        self._owned = []
