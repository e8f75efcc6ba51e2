"""Cache entries and staged blocks written around the kernel's page cache (O_DIRECT).

Why: a block fetched from the object store is in the block buffer already, so a page-cache copy
of its new cache entry only doubles memory; and on the machines we measured, getting those
page-cache pages cost more CPU than the copy itself (a cold sequential read spent 0.65
CPU-seconds per GiB on it, a third of its CPU). Direct I/O writes from a few reused,
page-aligned buffers. Reads stay buffered: the kernel's readahead and a random reader's hot
pages are worth more there (direct reads measured 0.6x on both).

A file system that refuses O_DIRECT answers EINVAL at open: the caller then writes through
the page cache for that directory.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .fileutil import FILE_MODE, replace_via_temp, write_atomic

log = logging.getLogger("cachefs.directio")

ALIGN = 4096  # covers every logical block size O_DIRECT asks offsets and lengths to align to
DIRECT_MIN = 1 << 20  # files at least this large are written (and read back) with O_DIRECT


def _up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class AlignedBuffers:
    """A fixed number of page-aligned buffers (anonymous maps), handed out and taken back, so
    direct I/O never allocates: at most `count` of them exist, each as large as the largest
    entry seen (4 MiB blocks: 4 MiB and a page)."""

    def __init__(self, count: int = 4) -> None:
        self._free: list[mmap.mmap] = [mmap.mmap(-1, ALIGN) for _ in range(count)]
        self._cond = threading.Condition()

    @contextmanager
    def take(self, size: int) -> Iterator[memoryview]:
        with self._cond:
            while not self._free:
                self._cond.wait()
            buf = self._free.pop()
        try:
            if len(buf) < size:
                buf.close()
                buf = mmap.mmap(-1, _up(size))
            view = memoryview(buf)
            try:
                yield view
            finally:
                view.release()
        finally:
            with self._cond:
                self._free.append(buf)
                self._cond.notify()


def write_atomic_direct(path: str, parts: Sequence[bytes | memoryview], buf: memoryview,
                        fsync: bool = False) -> None:
    """Write the parts to path through a temporary name, with direct I/O from buf (at least the
    parts' length rounded up to a page): the last page is written whole and the file cut back
    to its length; fsync makes it durable before the rename. OSError(EINVAL) from the open
    where the file system refuses O_DIRECT."""
    n = sum(len(p) for p in parts)
    pos = 0
    for p in parts:
        buf[pos : pos + len(p)] = p
        pos += len(p)
    padded = _up(n)
    buf[n:padded] = bytes(padded - n)

    def write(tmp: str) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, FILE_MODE)
        try:
            done = 0
            while done < padded:
                done += os.pwrite(fd, buf[done:padded], done)
            os.ftruncate(fd, n)
            if fsync:
                os.fsync(fd)  # the length and the device's write cache
        finally:
            os.close(fd)

    replace_via_temp(path, write)


class AtomicWriter:
    """Whole files written through a temporary name into one directory: with O_DIRECT from
    shared aligned buffers for files of min_direct bytes or more, until the directory's file
    system refuses it (EINVAL); buffered otherwise. Small files gain nothing from skipping the
    page cache, and a direct write waits for the disk."""

    def __init__(self, where: str, buffers: AlignedBuffers, min_direct: int = DIRECT_MIN) -> None:
        self.where = where
        self.buffers = buffers
        self.min_direct = min_direct
        self.direct = True

    def write(self, path: str, parts: Sequence[bytes | memoryview], fsync: bool = False) -> None:
        n = sum(len(p) for p in parts)
        if self.direct and n >= self.min_direct:
            try:
                with self.buffers.take(n + ALIGN) as buf:
                    write_atomic_direct(path, parts, buf, fsync)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.direct = False
                log.info("%s: no direct I/O (%s), writing through the page cache", self.where, e.strerror)
        write_atomic(path, *parts, fsync=fsync)

    def read(self, path: str) -> bytes:
        """A whole file written here, read back with direct I/O when its writes were (its pages
        are not in the page cache, and getting them there costs what the write saved)."""
        if self.direct:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
            else:
                try:
                    size = os.fstat(fd).st_size
                    if size >= self.min_direct:
                        with self.buffers.take(size + ALIGN) as buf:
                            got = os.preadv(fd, [buf[: _up(size)]], 0)
                            return bytes(buf[: min(got, size)])
                finally:
                    os.close(fd)
        with open(path, "rb") as f:
            return f.read()
