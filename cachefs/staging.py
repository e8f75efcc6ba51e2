"""The write-back staging directory: encoded blocks made durable on local disk before upload.

A staged block is a file `{slice}_{index}_{length}` holding exactly what the object store will
hold (encoded, with its checksum), so recovery uploads it as is and a torn file is caught by
its checksum. Files are written to a temporary name (full blocks with O_DIRECT), fsynced and
renamed; `sync()` fsyncs the directory so a commit never records a slice whose names a crash
could lose.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

from . import ownerlock
from .block import Buffer
from .directio import AlignedBuffers, AtomicWriter
from .errors import ConfigError
from .fileutil import FILE_MODE, TMP_MARK, private_dirs, tighten
from .metrics import Metrics

log = logging.getLogger("cachefs.staging")


class StagingBusy(ConfigError):
    """Another live mount process owns the staging directory."""


def staging_dir(cache_dir: str, volume_uuid: str) -> str:
    return os.path.join(cache_dir, volume_uuid, "staging")


class Staging:
    """Thread-safe; `limit` bounds its bytes, and it keeps `free_ratio` of its disk free."""

    def __init__(self, path: str, limit: int, free_ratio: float, metrics: Metrics) -> None:
        self.path = path
        self.limit = limit
        self.free_ratio = free_ratio
        self.metrics = metrics
        private_dirs(path)
        tighten(os.path.dirname(path))  # <cache dir>/<uuid>
        tighten(path)
        # one mount process owns a staging directory: another one recovering it would upload or
        # delete blocks whose commit is still in flight (the lock dies with its process)
        fd = ownerlock.take(os.path.join(path, ".lock"), os.O_RDWR, 0o600)
        if fd is None:
            raise StagingBusy(f"staging directory {path} is in use by another mount process of this volume "
                              "(still running or still uploading): use another --cache-dir")
        self._lock_fd = fd
        self._lock = threading.Lock()
        # O_DIRECT for full blocks: a checkpoint's blocks are written once and uploaded, and
        # page-cache pages for them cost more CPU than the writes themselves (directio.py)
        self._writer = AtomicWriter(f"staging {path}", AlignedBuffers(8))
        self._sizes: dict[tuple[int, int, int], int] = {}
        self.used = 0
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if TMP_MARK in name:
                os.unlink(full)  # a block whose staging never finished: its slice was never committed
                continue
            ident = parse_name(name)
            if ident is None:
                continue
            tighten(full, FILE_MODE)
            self._add(ident, os.path.getsize(full))

    def _add(self, ident: tuple[int, int, int], size: int) -> None:
        self._sizes[ident] = size
        self.used += size
        self._publish()

    def _publish(self) -> None:
        self.metrics.staging_blocks.set(len(self._sizes))
        self.metrics.staging_bytes.set(self.used)

    def file(self, slice_id: int, index: int, length: int) -> str:
        return os.path.join(self.path, f"{slice_id}_{index}_{length}")

    def _room(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        free = st.f_bavail * st.f_frsize
        return free - n > self.free_ratio * st.f_blocks * st.f_frsize

    def put(self, slice_id: int, index: int, length: int, encoded: tuple[Buffer, ...]) -> bool:
        """Stage a stored block (its parts) durably; False when there is no room (the caller
        writes it through)."""
        n = sum(map(len, encoded))
        with self._lock:
            if not self._room(n):
                return False
            self.used += n  # reserved while it is written
        ident = (slice_id, index, length)
        try:
            self._writer.write(self.file(*ident), encoded, fsync=True)
        except OSError as e:
            with self._lock:
                self.used -= n
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("staging %s failed, writing through: %s", self.path, e)
            return False
        with self._lock:
            self.used -= n
            self._add(ident, n)
        return True

    def sync(self) -> None:
        """Make the names of staged files durable (one directory fsync for many blocks)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def has(self, slice_id: int, index: int, length: int) -> bool:
        return (slice_id, index, length) in self._sizes

    def get(self, slice_id: int, index: int, length: int) -> bytes | None:
        if (slice_id, index, length) not in self._sizes:
            return None
        try:
            return self._writer.read(self.file(slice_id, index, length))
        except FileNotFoundError:
            return None

    def remove(self, slice_id: int, index: int, length: int) -> None:
        ident = (slice_id, index, length)
        try:
            os.unlink(self.file(*ident))
        except FileNotFoundError:
            pass
        with self._lock:
            size = self._sizes.pop(ident, None)
            if size is not None:
                self.used -= size
                self._publish()

    def close(self) -> None:
        """Release the directory to the next mount process."""
        if self._lock_fd >= 0:
            ownerlock.release(self._lock_fd)
            self._lock_fd = -1

    def blocks(self) -> list[tuple[int, int, int]]:
        """Every staged block (slice id, index, length)."""
        with self._lock:
            return sorted(self._sizes)


def parse_name(name: str) -> tuple[int, int, int] | None:
    parts = name.split("_")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])
