"""POSIX semantics over the metadata engine and the chunk store: handles, namespace operations,
open and release, attributes and xattrs, and what close-to-open consistency asks of one client.
Reads go through the reader (reader.py), writes and commits through the writer (writer.py).

Synchronous and thread-safe: the FUSE shell calls it from worker threads, the CLI and the
Python API directly. Inode-based, like the FUSE low-level protocol.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable

from cachefs.meta import BaseMeta
from cachefs.meta.types import TYPE_DIR, TYPE_FILE, Attr, Slice, type_from_mode

from . import internal
from .block import Buffer
from .diskcache import PendingRead
from .durability import Durability
from .errors import CachefsError, FSError
from .handles import ROOT_CTX, Ctx, FileState, Handle, OpenFiles
from .metacache import SCAN_LIMIT, MetaCache
from .metrics import Metrics
from .reader import Reader
from .slices import Segment, resolve
from .writer import Writer

CAPS_XATTR = b"security.capability"


class VFS:
    def __init__(self, meta: BaseMeta, files: OpenFiles, reader: Reader, writer: Writer,
                 durability: Durability, control: internal.Control, metrics: Metrics, cache: MetaCache,
                 read_only: bool = False, open_cache: float = 0.0) -> None:
        self.meta = meta
        self.files = files
        self.reader = reader
        self.writer = writer
        self.durability = durability
        self.control = control
        self.metrics = metrics
        self.cache = cache
        self.read_only = read_only
        # --open-cache: an open within this many seconds of the last close here reuses what that
        # close knew (attributes, resolved chunks) instead of asking the engine (relaxes
        # close-to-open for read-only datasets)
        self.open_cache = open_cache
        self._seen: dict[int, tuple[int, int]] = {}  # ino -> (mtime, length) at its last close here
        self._closed: dict[int, tuple[float, Attr, dict]] = {}  # ino -> (when, attr, segments) (open cache)

    # ---- helpers ----------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise FSError(errno.EROFS)

    @staticmethod
    def _unreserved(parent: int, *names: bytes) -> None:
        """The mount's own files (.control in every directory, .stats at the root) cannot be
        created, renamed onto or away, linked to or removed: a user's file there would take
        root's requests to the mount (EPERM)."""
        for name in names:
            if internal.reserved(parent, name):
                raise FSError(errno.EPERM, f"{name.decode(errors='replace')} is reserved for the mount")

    def _handle(self, fh: int) -> Handle:
        h = self.files.handles.get(fh)
        if h is None:
            raise FSError(errno.EBADF)
        return h

    def _file_handle(self, fh: int) -> Handle | None:
        """fh's handle if it is an open regular file, not an internal one; None otherwise: the
        answers given beside the usual read path (from memory, batched, advised) serve only
        those, and leave the rest to it."""
        h = self.files.handles.get(fh)
        return h if h is not None and h.state is not None and h.special is None else None

    def _with_length(self, ino: int, attr: Attr) -> Attr:
        """The attributes with the length this client's uncommitted writes give the file."""
        fs = self.files.get(ino)
        if fs is not None and fs.buffered and fs.length > attr.length:
            attr = attr.copy()
            attr.length = fs.length
        return attr

    # ---- namespace ----------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> tuple[int, Attr]:
        if internal.reserved(parent, name):
            ino = internal.NAMES[name]
            return ino, internal.attr(ino)
        if self.cache.missed(parent) and self._fetch_listing(parent):
            hit = self.cached_lookup(parent, name)
            if hit is not None:
                return hit
        ino, attr = self.meta.lookup(parent, name)
        self.cache.put_entry(parent, name, ino, attr)
        return ino, self._with_length(ino, attr)

    def _fetch_listing(self, parent: int) -> bool:
        """The directory's entries into the metadata cache (a name-by-name scan of it: metacache.py);
        False when it is too large for that."""
        seq, since = self.cache.begin_listing(), time.monotonic()
        listing = None
        try:
            listing = self.meta.listing(parent, SCAN_LIMIT)
        finally:
            self.cache.end_listing(parent, listing, since, seq)
        if listing is None:
            return False
        self.metrics.listings.inc()
        return True

    def lookup_many(self, pairs: list[tuple[int, bytes]]) -> list[tuple[int, Attr] | CachefsError]:
        """lookup of each (parent, name), in one metadata round trip where the engine allows
        (the directories a DataLoader batch's paths go through); the error in place of one
        that fails."""
        out: list[tuple[int, Attr] | CachefsError | None] = [None] * len(pairs)
        plain = []
        for i, (parent, name) in enumerate(pairs):
            if internal.reserved(parent, name):
                ino = internal.NAMES[name]
                out[i] = (ino, internal.attr(ino))
            else:
                plain.append(i)
        for i, one in zip(plain, self.meta.lookup_many([pairs[i] for i in plain]) if plain else [], strict=True):
            if isinstance(one, CachefsError):
                out[i] = one
                continue
            ino, attr = one
            self.cache.put_entry(*pairs[i], ino, attr)
            out[i] = (ino, self._with_length(ino, attr))
        return out  # type: ignore[return-value]

    def getattr(self, ino: int) -> Attr:
        if internal.is_internal(ino):
            return internal.attr(ino)
        attr = self.meta.getattr(ino)
        self.cache.put_attr(ino, attr)
        return self._with_length(ino, attr)

    # memory only, for the FUSE shell's event loop: None when the engine must be asked
    def cached_lookup(self, parent: int, name: bytes) -> tuple[int, Attr] | None:
        if internal.reserved(parent, name):
            ino = internal.NAMES[name]
            return ino, internal.attr(ino)
        ino = self.cache.entry(parent, name)
        attr = None if ino is None else self.cache.attr(ino)
        return None if attr is None else (ino, self._with_length(ino, attr))

    def cached_getattr(self, ino: int) -> Attr | None:
        if internal.is_internal(ino):
            return internal.attr(ino)
        attr = self.cache.attr(ino)
        return None if attr is None else self._with_length(ino, attr)

    def setattr(self, ino: int, ctx: Ctx = ROOT_CTX, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, atime: int | None = None, mtime: int | None = None,
                length: int | None = None) -> Attr:
        if internal.is_internal(ino):
            return internal.attr(ino)
        self._writable()
        fs = self.files.get(ino)
        if length is not None and fs is not None:
            with fs.lock:
                self.writer.commit(fs)
                attr = self.meta.setattr(ino, mode=mode, uid=uid, gid=gid, atime=atime, mtime=mtime,
                                         length=length)
                fs.refresh(attr)
                return attr
        return self.meta.setattr(ino, mode=mode, uid=uid, gid=gid, atime=atime, mtime=mtime, length=length)

    def mknod(self, parent: int, name: bytes, mode: int, ctx: Ctx = ROOT_CTX, rdev: int = 0) -> tuple[int, Attr]:
        self._writable()
        self._unreserved(parent, name)
        typ = type_from_mode(mode)
        return self.meta.mknod(parent, name, typ, mode & 0o7777, ctx.uid, ctx.gid, rdev)

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx = ROOT_CTX) -> tuple[int, Attr]:
        self._writable()
        self._unreserved(parent, name)
        return self.meta.mknod(parent, name, TYPE_DIR, mode & 0o7777, ctx.uid, ctx.gid)

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx = ROOT_CTX) -> tuple[int, Attr]:
        self._writable()
        self._unreserved(parent, name)
        return self.meta.symlink(parent, name, target, ctx.uid, ctx.gid)

    def readlink(self, ino: int) -> bytes:
        return self.meta.readlink(ino)

    def link(self, ino: int, parent: int, name: bytes) -> Attr:
        self._writable()
        self._unreserved(parent, name)
        if internal.is_internal(ino):
            raise FSError(errno.EPERM)
        return self._with_length(ino, self.meta.link(ino, parent, name))

    def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        self._unreserved(parent, name)
        self.meta.unlink(parent, name)

    def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        self._unreserved(parent, name)
        self.meta.rmdir(parent, name)

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int = 0) -> None:
        self._writable()
        self._unreserved(p1, n1)
        self._unreserved(p2, n2)
        self.meta.rename(p1, n1, p2, n2, flags)

    # ---- directories ------------------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        attr = self.meta.getattr(ino)
        if attr.type != TYPE_DIR:
            raise FSError(errno.ENOTDIR)
        return self.files.add_handle(ino, os.O_RDONLY).fh

    def readdir(self, fh: int, offset: int) -> list[tuple[bytes, int, Attr]]:
        """Entries from offset on. The listing is taken once per open directory handle (at its
        first read), so a listing is complete and stable while entries come and go."""
        h = self._handle(fh)
        if h.entries is None or offset == 0:
            attr = self.meta.getattr(h.ino)
            parent = attr.parent or h.ino
            try:
                pattr = self.meta.getattr(parent)
            except FSError:
                parent, pattr = h.ino, attr
            entries = [(b".", h.ino, attr), (b"..", parent, pattr)]
            for n, i, a in self.meta.readdir(h.ino):
                self.cache.put_entry(h.ino, n, i, a)
                entries.append((n, i, self._with_length(i, a)))
            h.entries = entries
        return h.entries[offset:]

    def handle_ino(self, fh: int) -> int:
        return self._handle(fh).ino

    def releasedir(self, fh: int) -> None:
        self.files.handles.pop(fh, None)

    # ---- files ----------------------------------------------------------------------------
    def open_at(self, parent: int, name: bytes, flags: int, ctx: Ctx = ROOT_CTX) -> tuple[int, Attr, int]:
        """Look up and open an existing file in one metadata round trip (the Python client's
        open by path, whose name was not in its cache): (inode, attributes, handle)."""
        if internal.reserved(parent, name):
            ino, attr = self.lookup(parent, name)
            return ino, attr, self.open(ino, flags, ctx)
        return self._open_found(parent, name, self.meta.lookup_open(parent, name), flags, ctx)

    def _open_found(self, parent: int, name: bytes, found: tuple[int, Attr, list[Slice] | None], flags: int,
                    ctx: Ctx) -> tuple[int, Attr, int]:
        """Open what the engine's lookup_open answered for (parent, name)."""
        ino, attr, first = found
        self.cache.put_entry(parent, name, ino, attr)
        fh = self.open(ino, flags, ctx, fetched=(attr, first))
        return ino, self._with_length(ino, attr), fh

    def open_many(self, pairs: list[tuple[int, bytes]], flags: int,
                  ctx: Ctx = ROOT_CTX) -> list[tuple[int, Attr, int] | CachefsError]:
        """open_at of each (parent, name), all in one metadata round trip (a DataLoader batch's
        files: each is still revalidated at its open, as close-to-open wants); an answer per
        pair, the error in its place for one that fails."""
        plain = [i for i, (parent, name) in enumerate(pairs) if not internal.reserved(parent, name)]
        found = self.meta.lookup_open_many([pairs[i] for i in plain]) if plain else []
        out: list[tuple[int, Attr, int] | CachefsError | None] = [None] * len(pairs)
        for i, one in zip(plain, found, strict=True):
            if isinstance(one, CachefsError):
                out[i] = one
                continue
            try:
                out[i] = self._open_found(*pairs[i], one, flags, ctx)
            except CachefsError as e:
                out[i] = e
        for i, one in enumerate(out):
            if one is None:
                try:
                    out[i] = self.open_at(*pairs[i], flags, ctx)
                except CachefsError as e:
                    out[i] = e
        return out

    def open(self, ino: int, flags: int, ctx: Ctx = ROOT_CTX,
             fetched: tuple[Attr, list[Slice] | None] | None = None) -> int:
        """fetched: the engine's attributes and first chunk's slices, just read (open_at)."""
        if internal.is_internal(ino):
            if ino == internal.CONTROL_INODE and ctx.uid != 0:
                raise FSError(errno.EACCES)
            special = internal.InternalFile(ino, self.metrics.text, self.control)
            return self.files.add_handle(ino, flags, special=special).fh
        accmode = flags & os.O_ACCMODE
        if accmode != os.O_RDONLY or flags & os.O_TRUNC:
            self._writable()
        attr, segments = self._known(ino, flags) if fetched is None else (None, {})
        if attr is None:
            # close-to-open: the engine's attributes now, and the first chunk's slices with
            # them (one round trip), so a small file's first read asks nothing more
            attr, segments = self._fetched(ino, fetched if fetched is not None else self.meta.open_file(ino))
        fh = self._add_open(ino, flags, attr, segments, wait=True)
        assert fh is not None
        if flags & os.O_TRUNC and attr.length:
            try:
                self.setattr(ino, length=0)
            except BaseException:
                self.release(fh)  # the open failed: it must not keep the file counted as open
                raise
        return fh

    def open_in_memory(self, ino: int, flags: int,
                       fetched: tuple[Attr, list[Slice] | None] | None = None) -> int | None:
        """open() without blocking, for the FUSE shell's event loop: a read-only open of a file
        whose close-to-open answer is in hand (fetched: read by the loop itself) or known from
        --open-cache. None when only open() can do it (nothing fetched or known, a write or a
        truncation, an internal file, a file whose lock a writer of this client holds)."""
        if not self.loop_openable(ino, flags):
            return None
        if fetched is None:
            attr, segments = self._known(ino, flags)
            if attr is None:
                return None
        else:
            attr, segments = self._fetched(ino, fetched)
        return self._add_open(ino, flags, attr, segments, wait=False)

    @staticmethod
    def loop_openable(ino: int, flags: int) -> bool:
        """Whether open_in_memory may do this open (a read-only open of a file system inode)."""
        return not internal.is_internal(ino) and flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_TRUNC

    def _known(self, ino: int, flags: int) -> tuple[Attr | None, dict[int, list[Segment]]]:
        """What --open-cache lets a read-only open reuse without asking the engine."""
        known = self._closed.get(ino) if self.open_cache > 0 and flags & os.O_ACCMODE == os.O_RDONLY else None
        if known is not None and time.monotonic() - known[0] < self.open_cache:
            return known[1], known[2]
        return None, {}

    def _fetched(self, ino: int, fetched: tuple[Attr, list[Slice] | None]) -> tuple[Attr, dict[int, list[Segment]]]:
        attr, first = fetched
        self.cache.put_attr(ino, attr)
        return attr, {0: resolve(first)} if first is not None else {}

    def _add_open(self, ino: int, flags: int, attr: Attr, segments: dict[int, list[Segment]],
                  wait: bool) -> int | None:
        """The open counted and its handle made; None (nothing counted) when not wait and a
        writer of this client holds the file's lock."""
        if attr.type == TYPE_DIR:
            raise FSError(errno.EISDIR)
        if attr.type != TYPE_FILE:
            raise FSError(errno.ENXIO)
        fs = self.files.opened(ino, attr)
        if not fs.lock.acquire(blocking=wait):
            self._closed_in_memory(fs)
            return None
        try:
            if not fs.buffered:
                # what other clients committed before this open is visible now
                fs.refresh(attr)
                fs.segments.update(segments)
        finally:
            fs.lock.release()
        keep = self._seen.get(ino) == (attr.mtime, attr.length) and not flags & os.O_TRUNC
        return self.files.add_handle(ino, flags, state=fs, keep_cache=keep).fh

    def keep_cache(self, fh: int) -> bool:
        """Whether the kernel may keep its cached pages for this open (file unchanged since)."""
        h = self.files.handles.get(fh)
        return h is not None and h.keep_cache

    def create(self, parent: int, name: bytes, mode: int, flags: int,
               ctx: Ctx = ROOT_CTX) -> tuple[int, int, Attr]:
        """Create and open a file: (fh, inode, attr)."""
        self._writable()
        self._unreserved(parent, name)
        ino, attr = self.meta.mknod(parent, name, TYPE_FILE, mode & 0o7777, ctx.uid, ctx.gid)
        fs = self.files.opened(ino, attr)
        with fs.lock:
            fs.no_caps = fs.xattr_changes == 0  # a file we just made has no attributes yet
        return self.files.add_handle(ino, flags, state=fs).fh, ino, attr

    def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self._handle(fh)
        if h.special is not None:
            return h.special.write(offset, data)
        self._writable()
        fs = h.state
        if fs is None or h.flags & os.O_ACCMODE == os.O_RDONLY:
            raise FSError(errno.EBADF)
        if offset < 0:
            raise FSError(errno.EINVAL)
        if data:
            self.writer.write(fs, offset, data, append=bool(h.flags & os.O_APPEND))
        return len(data)

    def read(self, fh: int, offset: int, size: int) -> Buffer:
        """Up to size bytes at offset: bytes, or a read-only view of a cached block (no copy)."""
        h = self._handle(fh)
        if h.special is not None:
            return h.special.read(offset, size)
        if h.state is None:
            raise FSError(errno.EBADF)
        return self.reader.read(h, h.state, offset, size)

    def advise(self, fh: int, offset: int, size: int) -> bool:
        """Bytes [offset, offset+size) of an open file will be read next (Reader.advise): True
        when they are all cached here."""
        h = self._file_handle(fh)
        if h is None:
            return False
        return self.reader.advise(h.state, offset, size)

    def read_whole_many(self, fhs: list[int], width: int) -> list[Buffer | BaseException | None]:
        """Whole small files of open handles, fetched together (Reader.read_whole_many): each
        one's bytes or failure, or None for one to read() the usual way."""
        return self._whole(fhs, lambda states: self.reader.read_whole_many(states, width))

    def read_cached_many(self, fhs: list[int]) -> list[Buffer | None]:
        """Whole small files of open handles from memory or the disk cache, read together
        (Reader.read_cached): each one's bytes, or None for one to fetch or read() the usual way."""
        return self._whole(fhs, self.reader.read_cached)

    def _whole(self, fhs: list[int], read: Callable[[list[FileState]], list]) -> list:
        states, where = [], []
        for j, fh in enumerate(fhs):
            h = self._file_handle(fh)
            if h is not None:
                states.append(h.state)
                where.append(j)
        out: list = [None] * len(fhs)
        for j, got in zip(where, read(states) if states else [], strict=True):
            out[j] = got
        return out

    def preload(self, fh: int) -> bool:
        """A small file just opened for reading, brought into memory from the disk cache
        (Reader.preload): the FUSE shell does this in the open's thread hop, so the read that
        follows is answered from memory in the event loop (read_in_memory), one hop per small
        file fewer. True when its bytes are in memory now."""
        h = self._reading(fh)
        return h is not None and self.reader.preload(h.state)

    def preloaded(self, fh: int) -> bool | None:
        """Whether preload(fh) found the file's bytes in memory (True), would look for them on
        disk (False), or has nothing to do (None). Memory only: for the event loop."""
        h = self._reading(fh)
        return None if h is None else self.reader.preloaded(h.state)

    def _reading(self, fh: int) -> Handle | None:
        """fh's handle when it is a file's, open read-only (what preload works on)."""
        h = self._file_handle(fh)
        return h if h is not None and h.flags & os.O_ACCMODE == os.O_RDONLY else None

    def read_in_memory(self, fh: int, offset: int, size: int, pending: bool = False) -> Buffer | PendingRead | None:
        """read() answered from memory without blocking (FUSE shell, event loop), or None;
        pending: or the disk-cache read the caller can wait for without a thread."""
        h = self._file_handle(fh)
        if h is None:
            return None
        return self.reader.read_resident(h, h.state, offset, size, pending)

    def flush(self, fh: int) -> None:
        h = self._handle(fh)
        if h.state is not None:
            with h.state.lock:
                self.writer.commit(h.state)
            self._upload_error(h.ino)

    def nothing_to_flush(self, fh: int) -> bool:
        """Whether flush(fh) would do nothing (nothing buffered, no failed upload to report):
        memory only, so the FUSE shell answers the flush that follows every close of a file
        only read without sending it to a thread."""
        h = self.files.handles.get(fh)
        if h is None or h.special is not None:
            return False
        return h.state is None or (not h.state.buffered and self.durability.error_of(h.ino) is None)

    def _upload_error(self, ino: int) -> None:
        """A block reported safe whose upload failed later fails this file's next flush, fsync
        or close."""
        err = self.durability.error_of(ino)
        if err is not None:
            raise FSError(errno.EIO, f"upload failed: {err}")

    def fsync(self, fh: int, datasync: bool = False) -> None:
        self.flush(fh)
        self.durability.fsync(self._handle(fh).ino)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        self._writable()
        h = self._handle(fh)
        fs = h.state
        if fs is None:
            raise FSError(errno.EBADF)
        with fs.lock:
            self.writer.commit(fs)
            fs.refresh(self.meta.fallocate(fs.ino, mode, offset, length))

    def release(self, fh: int) -> None:
        h = self.files.handles.pop(fh, None)
        if h is None or h.state is None:
            return
        fs = h.state
        try:
            with fs.lock:
                self.writer.commit(fs)
            self._upload_error(fs.ino)
        finally:
            if self.files.closed(fs):
                self._last_close(fs)

    def _last_close(self, fs: FileState) -> None:
        self.meta.close(fs.ino)
        if len(self._seen) > 100_000:
            self._seen.clear()
            self._closed.clear()
        self._seen[fs.ino] = fs.seen
        if self.open_cache > 0:
            attr = self.cache.attr(fs.ino)
            if attr is not None and (attr.mtime, attr.length) == fs.seen:
                self._closed[fs.ino] = (time.monotonic(), attr, dict(fs.segments))

    def release_in_memory(self, fh: int) -> bool:
        """Release fh if that needs nothing but memory (nothing buffered, no failed upload to
        report, no unlinked inode to reclaim): the FUSE shell answers it in the event loop."""
        h = self._file_handle(fh)
        if h is None:
            return False
        fs = h.state
        if fs.buffered or self.durability.error_of(fs.ino) is not None or self.meta.keeps_alive(fs.ino):
            return False
        self.files.handles.pop(fh, None)
        self._closed_in_memory(fs)
        return True

    def _closed_in_memory(self, fs: FileState) -> None:
        """One open of fs less, counted without blocking."""
        if self.files.closed(fs):
            if self.meta.keeps_alive(fs.ino):  # unlinked meanwhile: reclaiming it takes a transaction
                threading.Thread(target=self._last_close, args=(fs,), daemon=True).start()
            else:
                self._last_close(fs)

    # ---- the rest ----------------------------------------------------------------------------
    def statfs(self) -> tuple[int, int, int, int]:
        return self.meta.statfs()

    def getxattr(self, ino: int, name: bytes) -> bytes:
        # the kernel asks for security.capability before every write to a FUSE file (to drop
        # privileges); while the file is open here, the answer "none" is remembered instead of
        # costing a metadata round trip per write request (5% of a sequential write)
        if self.known_without(ino, name):
            raise FSError(errno.ENODATA)
        fs = self.files.get(ino) if name == CAPS_XATTR else None
        changes = fs.xattr_changes if fs is not None else 0
        try:
            return self.meta.getxattr(ino, name)
        except FSError as e:
            if fs is not None and e.errno == errno.ENODATA:
                with fs.lock:
                    fs.no_caps = fs.xattr_changes == changes
            raise

    def known_without(self, ino: int, name: bytes) -> bool:
        """Whether the attribute is known to be absent without asking the engine (memory only:
        the FUSE shell answers it without a thread)."""
        if name != CAPS_XATTR:
            return False
        fs = self.files.get(ino)
        return fs is not None and fs.no_caps and fs.opens > 0

    def _xattrs_changed(self, ino: int) -> None:
        fs = self.files.get(ino)
        if fs is not None:
            with fs.lock:
                fs.xattr_changes += 1
                fs.no_caps = False

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._writable()
        if name.startswith(b"system."):
            raise FSError(errno.EOPNOTSUPP)  # POSIX ACLs are not supported
        self.meta.setxattr(ino, name, value, flags)
        self._xattrs_changed(ino)

    def listxattr(self, ino: int) -> list[bytes]:
        return self.meta.listxattr(ino)

    def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        self.meta.removexattr(ino, name)
        self._xattrs_changed(ino)

    def flush_all(self) -> None:
        """Commit every open file's buffered writes."""
        self.writer.commit_all(self.files)


__all__ = ["VFS", "Ctx", "ROOT_CTX", "FileState", "Handle"]
