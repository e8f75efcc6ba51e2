"""The local block cache on NVMe: one or more directories, blocks spread by hash, bounded by a
size limit and a minimum free-space ratio, LRU eviction, crash-safe entries (written to a
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
from typing import BinaryIO

import xxhash

from .directio import AlignedBuffers, AtomicWriter
from .errors import ChecksumError
from .fileutil import FILE_MODE, private_dirs, tighten
from .metrics import Metrics

MAGIC = b"CFC1"
HEADER = struct.Struct("<4sII")  # magic, plain length, segment size
SEGMENT = 64 << 10
LATER_QUEUE = 64  # blocks waiting for the cache writer thread (put_later)

log = logging.getLogger("cachefs.cache")
_FATAL = {errno.EROFS, errno.EIO, errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.ENODEV, errno.EPERM}


def entry_header(plain: bytes) -> bytes:
    """The header and checksum table that precede a block's bytes in its cache entry."""
    mv = memoryview(plain)
    sums = b"".join(struct.pack("<Q", xxhash.xxh64_intdigest(mv[i : i + SEGMENT]))
                    for i in range(0, len(plain), SEGMENT))
    return HEADER.pack(MAGIC, len(plain), SEGMENT) + sums


def _layout(head: bytes, key: str) -> tuple[int, int, int]:
    """(plain length, segment size, offset of the data) of an entry, or ChecksumError."""
    if len(head) < HEADER.size:
        raise ChecksumError(f"cache entry {key}: truncated")
    magic, length, seg = HEADER.unpack_from(head)
    if magic != MAGIC or seg <= 0:
        raise ChecksumError(f"cache entry {key}: bad header")
    nseg = (length + seg - 1) // seg
    return length, seg, HEADER.size + 8 * nseg


def _verify(data: bytes, sums: bytes, first_seg: int, seg: int, key: str) -> None:
    mv = memoryview(data)
    for i in range(0, len(data), seg):
        want = struct.unpack_from("<Q", sums, (first_seg + i // seg) * 8)[0]
        if xxhash.xxh64_intdigest(mv[i : i + seg]) != want:
            raise ChecksumError(f"cache entry {key}: checksum mismatch")


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
        self._entries: OrderedDict[str, tuple[CacheDir, int]] = OrderedDict()  # LRU order
        self._later: queue.Queue | None = None
        self.used = 0
        self.dirs: list[CacheDir] = []
        for d in dirs:
            cd = CacheDir(d, volume_uuid, AtomicWriter(f"cache dir {os.path.abspath(d)}", self._buffers))
            try:
                private_dirs(cd.base)
                tighten(os.path.dirname(cd.base))  # <dir>/<uuid>: this volume's entries and staging
                tighten(cd.base)
                self._scan(cd)
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
                self._entries[key] = (cd, size)
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
                self.used -= size
        self._publish()

    def contains(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry[0].alive

    def _open(self, key: str) -> tuple[BinaryIO, CacheDir] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None or not entry[0].alive:
            self.metrics.cache_misses.inc()
            return None
        cd = entry[0]
        try:
            return open(cd.path(key), "rb"), cd
        except OSError as e:
            self._broken(key, cd, e)
            return None

    def _broken(self, key: str, cd: CacheDir, e: OSError) -> None:
        self.metrics.cache_errors.inc()
        self._forget(key)
        self._fail(cd, e)
        self.metrics.cache_misses.inc()

    def get(self, key: str) -> bytes | None:
        """A whole block's plain bytes, verified; None on a miss; ChecksumError if damaged."""
        return self.read_range(key, 0, None)

    def read_range(self, key: str, offset: int, n: int | None) -> bytes | None:
        """Bytes [offset, offset+n) of a block (n None: to its end), reading and verifying only
        the segments they touch; None on a miss; ChecksumError if damaged. Reads go through the
        page cache: its readahead serves sequential readers and a random reader's hot pages stay
        in memory (direct reads measured 0.6x on both)."""
        opened = self._open(key)
        if opened is None:
            return None
        f, cd = opened
        try:
            with f:
                head = f.read(HEADER.size)
                length, seg, start = _layout(head, key)
                if n is None:
                    n = length - offset
                if n <= 0 or offset < 0 or offset + n > length:
                    raise ChecksumError(f"cache entry {key}: shorter than asked")
                first, last = offset // seg, (offset + n - 1) // seg
                sums = head + f.read(start - HEADER.size)
                f.seek(start + first * seg)
                data = f.read(min(length, (last + 1) * seg) - first * seg)
        except OSError as e:
            self._broken(key, cd, e)
            return None
        if len(data) != min(length, (last + 1) * seg) - first * seg:
            raise ChecksumError(f"cache entry {key}: truncated")
        _verify(data, sums[HEADER.size :], first, seg, key)
        self.metrics.cache_hits.inc()
        self.metrics.cache_hit_bytes.inc(n)
        skip = offset - first * seg
        return data[skip : skip + n]

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
            self._entries[key] = (cd, size)
            self.used += size
        self.metrics.cache_write_bytes.inc(size)
        self._evict()
        self._publish()

    def _low_on_space(self, cd: CacheDir) -> bool:
        try:
            st = os.statvfs(cd.root)
        except OSError:
            return False
        return st.f_bavail < st.f_blocks * self.free_ratio

    def _evict(self, need: int = 0) -> None:
        """Drop least recently used blocks until under the size limit and every live directory
        keeps its minimum free space."""
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
                key = next((k for k, (d, _) in self._entries.items() if victim_dir in (None, d)), None)
                if key is None:
                    return
                cd, size = self._entries.pop(key)
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
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.used -= entry[1]

    def drop(self, key: str) -> None:
        """Remove one entry (corrupt, or evicted on request)."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.used -= entry[1]
        if entry is not None:
            try:
                os.unlink(entry[0].path(key))
            except OSError:
                pass
            self._publish()
