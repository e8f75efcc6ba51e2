"""Reading another process's disk cache: one cache per node.

A node's disk cache has one keeper: the process holding its directories' owner lock (a mount,
or a Python client given a cache directory; diskcache.py). Every other process of the node that
reads the volume (a Python client without a cache of its own, DataLoader workers forked from a
client that keeps one, a second mount pointed at the same directory) is a reader of it:

- a hit is read straight from the keeper's entry file: entries are immutable, written under a
  temporary name and renamed, and verified by their checksum table here as everywhere, so a
  reader needs no lock and no message; an entry evicted while being read stays readable (it is
  unlinked, not rewritten), and one that fails its checksum is a miss, not an error;
- a miss, when the keeper is in no cache group and this process may write its directories (a
  DataLoader worker of the client that keeps them, a client of the mount's user), is fetched
  from the object store by the reader itself, which writes the entry as the keeper would (a
  temporary name, then a rename) and tells the keeper's block service (group/service.py,
  POST /adopt, signed with the volume's group secret, its address in the keeper's session)
  which entries it added, in batches, so the keeper counts and evicts them. A miss through
  the keeper cost its HTTP service and a second hop for every block, and the keeper's one
  process served them all: a DataLoader's cold epoch read slower with workers than without;
- any other miss is asked of the keeper's block service on loopback: the keeper fetches the
  block once, however many ask (and through its cache group), keeps it, and sends the entry
  file back.

So each block is kept once per node, and only the keeper evicts and counts the cache's size.
Two readers missing one block at once may both fetch it (the second rename replaces the first
entry with the same bytes). Crash state, "an entry not yet adopted": a reader killed between
its write and its notice leaves an entry the keeper does not count; the keeper's scan at its
next start counts it (diskcache.py), and until then it is read like any other. What the
keeper cannot see is a reader's hit: its use stamps are its own reads' and its peers'
requests, not the readers' (a block only readers use is evicted first).
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import threading
import zlib

import urllib3

from .block import Buffer
from .diskcache import advise_entry, entry_header, read_entry
from .errors import ChecksumError
from .fileutil import write_atomic
from .group.auth import signed_request
from .metrics import Metrics

log = logging.getLogger("cachefs.cache")

ADVISED = 256  # descriptors advise() keeps for the reads that follow


NOTICE_DELAY = 0.2  # seconds a notice waits for others to go with it (sent at once for a full batch)
NOTICE_BATCH = 256


class Notices:
    """The keys of the entries this process added to the keeper's directories, sent to the
    keeper by a thread of our own, in batches: one notice per block cost the keeper a request
    each, half of what fetching through it did (a process's thread and pool are its own: made
    again after fork)."""

    def __init__(self, address: str, secret: bytes) -> None:
        self.address, self.secret = address, secret
        self._cond = threading.Condition()
        self._keys: list[str] = []
        self._busy = self._flushing = self._closed = False
        self._pid = 0
        self._http: urllib3.PoolManager | None = None
        self._at_exit: multiprocessing.util.Finalize | None = None

    def add(self, key: str) -> None:
        with self._cond:
            if self._closed:
                return  # (the keeper counts it at its next start)
            if self._pid != os.getpid():
                self._pid, self._keys, self._busy, self._flushing = os.getpid(), [], False, False
                self._http = urllib3.PoolManager(maxsize=1, retries=urllib3.Retry(total=1, redirect=False),
                                                 timeout=urllib3.Timeout(connect=0.5, read=3.0))
                threading.Thread(target=self._loop, name="cache-notices", daemon=True).start()
                # a DataLoader worker leaves through multiprocessing, which runs no atexit
                self._at_exit = multiprocessing.util.Finalize(self, self.flush, exitpriority=10)
            self._keys.append(key)
            if len(self._keys) == 1 or len(self._keys) >= NOTICE_BATCH:
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._keys:
                    if self._closed:
                        return
                    self._cond.wait()
                self._cond.wait_for(lambda: len(self._keys) >= NOTICE_BATCH or self._flushing, NOTICE_DELAY)
                keys, self._keys, self._busy = self._keys, [], True
            self._send(keys)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _send(self, keys: list[str]) -> None:
        try:
            signed_request(self._http, self.secret, self.address, "POST", "/adopt", "\n".join(keys).encode())
        except Exception as e:  # noqa: BLE001 - counted at the keeper's next start instead
            log.warning("cache keeper %s not told of %d entries: %s", self.address, len(keys), e)

    def flush(self, timeout: float = 5.0) -> None:
        """Send every notice now and wait until it is sent (close, exit)."""
        with self._cond:
            if self._pid != os.getpid():
                return
            self._flushing = True
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: not self._keys and not self._busy, timeout)
            finally:
                self._flushing = False

    def close(self) -> None:
        """Send what is left, then stop the thread (a process that makes clients one after
        another keeps no thread per client)."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            at_exit, self._at_exit = self._at_exit, None
        if at_exit is not None and self._pid == os.getpid():
            at_exit.cancel()


class CacheView:
    """The read side of DiskCache over a keeper's directories (the same order: an entry's
    directory is picked by the same hash)."""

    def __init__(self, dirs: list[str], volume_uuid: str, metrics: Metrics | None = None) -> None:
        self.bases = [os.path.join(os.path.abspath(d), volume_uuid, "raw") for d in dirs]
        self.metrics = metrics or Metrics()
        self.used = 0  # the keeper's to count
        self.notices: Notices | None = None  # set when this process writes what it fetches
        self._advised: dict[str, int] = {}  # key -> descriptor opened by advise(), for the read
        self._advised_lock = threading.Lock()

    @property
    def writable(self) -> bool:
        """May this process add entries to the keeper's directories?"""
        return bool(self.bases) and all(os.access(b, os.W_OK | os.X_OK) for b in self.bases)

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

    def get(self, key: str) -> Buffer | None:
        return self.read_range(key, 0, None)

    def advise(self, key: str, offset: int, n: int) -> bool:
        """Start reading bytes [offset, offset+n) of a block's entry into the page cache, without
        waiting (POSIX_FADV_WILLNEED); False when it is not cached. Its descriptor is kept for
        the read that follows, so a batch of small files is read from disk in parallel by one
        thread: the kernel has every read in flight before the first is waited for."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        advise_entry(fd, key, offset, n)
        with self._advised_lock:
            old = self._advised.pop(key, None)
            stale = [old] if old is not None else []
            self._advised[key] = fd
            while len(self._advised) > ADVISED:  # the oldest advice, never read
                stale.append(self._advised.pop(next(iter(self._advised))))
        for f in stale:
            os.close(f)
        return True

    def read_range(self, key: str, offset: int, n: int | None) -> Buffer | None:
        """Bytes of a block from its entry, verified; None on a miss (a damaged entry too: the
        keeper finds it damaged when asked, and fetches the block again)."""
        with self._advised_lock:
            fd = self._advised.pop(key, None) if self._advised else None
        advised = fd is not None
        if fd is None:
            try:
                fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.metrics.cache_misses.inc()
                return None
        try:
            data = read_entry(fd, key, offset, n, advised=advised)[1]
        except (OSError, ChecksumError):
            self.metrics.cache_errors.inc()
            self.metrics.cache_misses.inc()
            return None
        finally:
            os.close(fd)
        self.metrics.cache_hits.inc()
        self.metrics.cache_hit_bytes.inc(len(data))
        return data

    def read_whole(self, blocks: list[tuple[str, int]]) -> list[Buffer | None]:
        """Whole blocks' bytes (key, length) from their entries, verified, every read started
        before the first is waited for; None for a miss or a damaged entry. One loop for a
        batch: advise() and read_range() per block cost a DataLoader worker a lock, a dictionary
        and three counter updates each."""
        fds: list[int | None] = []
        out: list[Buffer | None] = []
        hits = nbytes = errors = 0
        try:
            for key, length in blocks:
                try:
                    fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    fds.append(None)
                    continue
                fds.append(fd)
                advise_entry(fd, key, 0, length)
            for (key, _), fd in zip(blocks, fds, strict=True):
                data = None
                if fd is not None:
                    try:
                        data = read_entry(fd, key, 0, None, advised=True)[1]
                        hits, nbytes = hits + 1, nbytes + len(data)
                    except (OSError, ChecksumError):
                        errors += 1
                out.append(data)
        finally:
            for fd in fds:
                if fd is not None:
                    os.close(fd)
            self.metrics.cache_hits.inc(hits)
            self.metrics.cache_hit_bytes.inc(nbytes)
            self.metrics.cache_errors.inc(errors)
            self.metrics.cache_misses.inc(len(blocks) - hits)
        return out

    def read_resident(self, key: str, offset: int, n: int, pending: bool = False) -> bytes | None:
        return None  # no descriptors kept: the thread path reads

    def put(self, key: str, plain: bytes) -> None:
        """Keep a block this process fetched (only with notices: otherwise the keeper fetched
        it when asked, and keeps it)."""
        if self.notices is None or os.path.exists(self._path(key)):
            return
        head = entry_header(plain)
        try:
            write_atomic(self._path(key), head, plain)
        except OSError as e:
            self.metrics.cache_errors.inc()
            log.debug("cache entry %s not written: %s", key, e)
            return
        self.metrics.cache_write_bytes.inc(len(head) + len(plain))
        self.notices.add(key)

    def put_later(self, key: str, plain: bytes) -> None:
        """A block this process wrote: not kept by a reader (the keeper finds it in the object
        store when it is read)."""

    def drop(self, key: str) -> None:
        """A reader removes nothing: the keeper drops a damaged entry when it next reads it."""

    def close(self) -> None:
        with self._advised_lock:
            fds, self._advised = list(self._advised.values()), {}
        for fd in fds:
            os.close(fd)
        if self.notices is not None:
            self.notices.close()
