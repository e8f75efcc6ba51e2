"""Reading another process's disk cache: one cache per node.

A node's disk cache has one keeper: the process holding its directories' owner lock (a mount,
or a Python client given a cache directory; diskcache.py). Every other process of the node that
reads the volume (a Python client without a cache of its own, DataLoader workers forked from a
client that keeps one, a second mount pointed at the same directory) is a reader of it:

- a hit is read straight from the keeper's entry file: entries are immutable, written under a
  temporary name and renamed, and verified by their checksum table here as everywhere, so a
  reader needs no lock and no message; an entry evicted while being read stays readable (it is
  unlinked, not rewritten), and one that fails its checksum is a miss, not an error;
- a miss is asked of the keeper's block service on loopback (group/service.py, requests signed
  with the volume's group secret, its address in the keeper's session): the keeper fetches the
  block once, however many ask, keeps it, and sends the entry file back.

So blocks are fetched once per node and kept once, and only the keeper writes, evicts and counts
the cache's size. What the keeper cannot see is a reader's hit: its use stamps are its own reads'
and its peers' requests, not the readers' (a block only readers use is evicted first).
"""

from __future__ import annotations

import os
import zlib

from .diskcache import HEADER, _verify, read_table
from .errors import ChecksumError
from .metrics import Metrics


class CacheView:
    """The read side of DiskCache over a keeper's directories (the same order: an entry's
    directory is picked by the same hash)."""

    def __init__(self, dirs: list[str], volume_uuid: str, metrics: Metrics | None = None) -> None:
        self.bases = [os.path.join(os.path.abspath(d), volume_uuid, "raw") for d in dirs]
        self.metrics = metrics or Metrics()
        self.used = 0  # the keeper's to count

    @classmethod
    def open(cls, dirs: list[str], volume_uuid: str, metrics: Metrics | None = None) -> CacheView | None:
        """A view of the keeper's directories, None when this process cannot see them (another
        mount namespace, another user)."""
        view = cls(dirs, volume_uuid, metrics)
        if not view.bases or not all(os.access(b, os.R_OK | os.X_OK) for b in view.bases):
            return None
        return view

    def _path(self, key: str) -> str:
        return os.path.join(self.bases[zlib.crc32(key.encode()) % len(self.bases)], key)

    def contains(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def entry_path(self, key: str) -> str | None:
        path = self._path(key)
        return path if os.path.exists(path) else None

    def get(self, key: str) -> bytes | None:
        return self.read_range(key, 0, None)

    def read_range(self, key: str, offset: int, n: int | None) -> bytes | None:
        """Bytes of a block from its entry, verified; None on a miss (a damaged entry too: the
        keeper finds it damaged when asked, and fetches the block again)."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.metrics.cache_misses.inc()
            return None
        try:
            table, length, seg, start = read_table(fd, key)
            if n is None:
                n = length - offset
            if n <= 0 or offset < 0 or offset + n > length:
                return None
            first, last = offset // seg, (offset + n - 1) // seg
            want = min(length, (last + 1) * seg) - first * seg
            data = os.pread(fd, want, start + first * seg)
            if len(data) != want:
                raise ChecksumError(f"cache entry {key}: truncated")
            _verify(data, table[HEADER.size : start], first, seg, key)
        except (OSError, ChecksumError):
            self.metrics.cache_errors.inc()
            self.metrics.cache_misses.inc()
            return None
        finally:
            os.close(fd)
        self.metrics.cache_hits.inc()
        self.metrics.cache_hit_bytes.inc(n)
        skip = offset - first * seg
        return data if skip == 0 and n == len(data) else data[skip : skip + n]

    def read_resident(self, key: str, offset: int, n: int) -> bytes | None:
        return None  # no descriptors kept: the thread path reads

    def put(self, key: str, plain: bytes) -> None:
        """The keeper keeps blocks (it fetched this one when asked), not a reader."""

    def put_later(self, key: str, plain: bytes) -> None:
        """As put."""

    def drop(self, key: str) -> None:
        """A reader removes nothing: the keeper drops a damaged entry when it next reads it."""

    def close(self) -> None: ...
