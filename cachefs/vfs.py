"""POSIX semantics over the metadata engine and the chunk store: handles, buffered writes,
reads through slices, and what close-to-open consistency asks of one client.

Synchronous and thread-safe: the FUSE shell calls it from worker threads, the CLI and the
Python API directly. Inode-based, like the FUSE low-level protocol.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
from dataclasses import dataclass, field

from cachefs.meta import BaseMeta
from cachefs.meta.types import (
    CHUNK_SIZE,
    ROOT_INODE,
    TYPE_DIR,
    TYPE_FILE,
    Attr,
    Slice,
    type_from_mode,
)

from . import internal
from .block import Buffer
from .chunkstore import ChunkStore, SliceWriter
from .errors import FSError, ObjectNotFound
from .slices import Segment, covering, resolve

log = logging.getLogger("cachefs.vfs")

CAPS_XATTR = b"security.capability"
MAX_PENDING_SLICES = 64  # commit a file's buffered slices once this many are waiting
COMPACT_THRESHOLD = 32  # slices in one chunk before it is compacted


@dataclass
class Ctx:
    """Who asks: the caller's ids (the FUSE request context, or root for the CLI)."""

    uid: int = 0
    gid: int = 0
    pid: int = 0


ROOT_CTX = Ctx()


@dataclass
class Pending:
    indx: int
    pos: int
    writer: SliceWriter


@dataclass
class FileState:
    """What this client knows about one open file: its buffered slices and resolved chunks."""

    ino: int
    length: int
    opens: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    pending: list[Pending] = field(default_factory=list)
    active: dict[int, Pending] = field(default_factory=dict)
    segments: dict[int, list[Segment]] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)  # slices added per chunk since open
    seen: tuple[int, int] = (0, 0)  # (mtime, length) as this client last knew them
    no_caps: bool = False  # known to have no security.capability while open here
    xattr_changes: int = 0  # xattr changes made through this client (no_caps is set only if none raced)


@dataclass
class Handle:
    fh: int
    ino: int
    flags: int
    state: FileState | None = None
    entries: list[tuple[bytes, int, Attr]] | None = None  # directory snapshot
    special: internal.InternalFile | None = None
    keep_cache: bool = False  # the kernel's pages of this file are still valid at this open
    read_end: int = 0  # where the last read of this handle ended
    window: int = 0  # readahead bytes; grows while this handle reads sequentially


class VFS:
    def __init__(self, meta: BaseMeta, store: ChunkStore, read_only: bool = False,
                 fsync_remote: bool = False) -> None:
        self.meta = meta
        self.store = store
        self.read_only = read_only
        self.fsync_remote = fsync_remote  # write-back: fsync waits for the upload
        self.flushed_for_exit = False  # `cachefs umount` flushed: the exiting process need not
        self._files: dict[int, FileState] = {}
        self._files_lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._next_fh = itertools.count(1)
        self.compact_queue: set[tuple[int, int]] = set()
        self._compact_lock = threading.Lock()
        self.control = internal.Control(meta, store, self.flush_remote)
        self.max_readahead = max(store.block_size, store.buffer.capacity // 4)
        self._seen: dict[int, tuple[int, int]] = {}  # ino -> (mtime, length) at its last close here
        meta.is_open = self.is_open

    # ---- helpers ----------------------------------------------------------------------------
    def is_open(self, ino: int) -> bool:
        with self._files_lock:
            fs = self._files.get(ino)
            return fs is not None and fs.opens > 0

    def _writable(self) -> None:
        if self.read_only:
            raise FSError(errno.EROFS)

    def _handle(self, fh: int) -> Handle:
        h = self._handles.get(fh)
        if h is None:
            raise FSError(errno.EBADF)
        return h

    def _with_length(self, ino: int, attr: Attr) -> Attr:
        """The attributes with the length this client's unflushed writes give the file."""
        fs = self._files.get(ino)
        if fs is not None and fs.pending and fs.length > attr.length:
            attr = attr.copy()
            attr.length = fs.length
        return attr

    # ---- namespace ----------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> tuple[int, Attr]:
        if name in internal.NAMES and (parent == ROOT_INODE or name == internal.CONTROL_NAME):
            ino = internal.NAMES[name]
            return ino, internal.attr(ino)
        ino, attr = self.meta.lookup(parent, name)
        return ino, self._with_length(ino, attr)

    def getattr(self, ino: int) -> Attr:
        if internal.is_internal(ino):
            return internal.attr(ino)
        return self._with_length(ino, self.meta.getattr(ino))

    def setattr(self, ino: int, ctx: Ctx = ROOT_CTX, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, atime: int | None = None, mtime: int | None = None,
                length: int | None = None) -> Attr:
        if internal.is_internal(ino):
            return internal.attr(ino)
        self._writable()
        fs = self._files.get(ino)
        if length is not None and fs is not None:
            with fs.lock:
                self._flush_state(fs)
                attr = self.meta.setattr(ino, mode=mode, uid=uid, gid=gid, atime=atime, mtime=mtime,
                                         length=length)
                fs.length = attr.length
                fs.segments.clear()
                fs.seen = (attr.mtime, attr.length)
                return attr
        return self.meta.setattr(ino, mode=mode, uid=uid, gid=gid, atime=atime, mtime=mtime, length=length)

    def mknod(self, parent: int, name: bytes, mode: int, ctx: Ctx = ROOT_CTX, rdev: int = 0) -> tuple[int, Attr]:
        self._writable()
        typ = type_from_mode(mode)
        return self.meta.mknod(parent, name, typ, mode & 0o7777, ctx.uid, ctx.gid, rdev)

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx = ROOT_CTX) -> tuple[int, Attr]:
        self._writable()
        return self.meta.mknod(parent, name, TYPE_DIR, mode & 0o7777, ctx.uid, ctx.gid)

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx = ROOT_CTX) -> tuple[int, Attr]:
        self._writable()
        return self.meta.symlink(parent, name, target, ctx.uid, ctx.gid)

    def readlink(self, ino: int) -> bytes:
        return self.meta.readlink(ino)

    def link(self, ino: int, parent: int, name: bytes) -> Attr:
        self._writable()
        return self._with_length(ino, self.meta.link(ino, parent, name))

    def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        self.meta.unlink(parent, name)

    def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        self.meta.rmdir(parent, name)

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int = 0) -> None:
        self._writable()
        self.meta.rename(p1, n1, p2, n2, flags)

    # ---- directories ------------------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        attr = self.meta.getattr(ino)
        if attr.type != TYPE_DIR:
            raise FSError(errno.ENOTDIR)
        fh = next(self._next_fh)
        self._handles[fh] = Handle(fh, ino, os.O_RDONLY)
        return fh

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
            entries += [(n, i, self._with_length(i, a)) for n, i, a in self.meta.readdir(h.ino)]
            h.entries = entries
        return h.entries[offset:]

    def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # ---- files ----------------------------------------------------------------------------
    def _state(self, ino: int, attr: Attr) -> FileState:
        with self._files_lock:
            fs = self._files.get(ino)
            if fs is None:
                fs = self._files[ino] = FileState(ino, attr.length, seen=(attr.mtime, attr.length))
            fs.opens += 1
        return fs

    def open(self, ino: int, flags: int, ctx: Ctx = ROOT_CTX) -> int:
        if internal.is_internal(ino):
            if ino == internal.CONTROL_INODE and ctx.uid != 0:
                raise FSError(errno.EACCES)
            fh = next(self._next_fh)
            self._handles[fh] = Handle(fh, ino, flags, special=internal.InternalFile(
                ino, self.store.metrics.text, self.control))
            return fh
        accmode = flags & os.O_ACCMODE
        if accmode != os.O_RDONLY or flags & os.O_TRUNC:
            self._writable()
        attr = self.meta.getattr(ino)
        if attr.type == TYPE_DIR:
            raise FSError(errno.EISDIR)
        if attr.type != TYPE_FILE:
            raise FSError(errno.ENXIO)
        fs = self._state(ino, attr)
        with fs.lock:
            if not fs.pending:
                # close-to-open: what other clients committed before this open is visible now
                fs.length = attr.length
                fs.segments.clear()
                fs.seen = (attr.mtime, attr.length)
        fh = next(self._next_fh)
        keep = self._seen.get(ino) == (attr.mtime, attr.length) and not flags & os.O_TRUNC
        self._handles[fh] = Handle(fh, ino, flags, fs, keep_cache=keep)
        if flags & os.O_TRUNC and attr.length:
            try:
                self.setattr(ino, length=0)
            except BaseException:
                self.release(fh)  # the open failed: it must not keep the file counted as open
                raise
        return fh

    def keep_cache(self, fh: int) -> bool:
        """Whether the kernel may keep its cached pages for this open (file unchanged since)."""
        h = self._handles.get(fh)
        return h is not None and h.keep_cache

    def create(self, parent: int, name: bytes, mode: int, flags: int,
               ctx: Ctx = ROOT_CTX) -> tuple[int, int, Attr]:
        """Create and open a file: (fh, inode, attr)."""
        self._writable()
        ino, attr = self.meta.mknod(parent, name, TYPE_FILE, mode & 0o7777, ctx.uid, ctx.gid)
        fs = self._state(ino, attr)
        with fs.lock:
            fs.no_caps = fs.xattr_changes == 0  # a file we just made has no attributes yet
        fh = next(self._next_fh)
        self._handles[fh] = Handle(fh, ino, flags, fs)
        return fh, ino, attr

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
        if not data:
            return 0
        with fs.lock:
            if h.flags & os.O_APPEND:
                offset = fs.length
            mv = memoryview(data)
            pos = offset
            while mv:
                indx, cpos = divmod(pos, CHUNK_SIZE)
                n = min(len(mv), CHUNK_SIZE - cpos)
                p = fs.active.get(indx)
                if p is None or p.pos + p.writer.length != cpos:
                    p = Pending(indx, cpos, self.store.writer(self.meta.new_slice_id(), fs.ino))
                    fs.pending.append(p)
                    fs.active[indx] = p
                p.writer.write(mv[:n])
                fs.segments.pop(indx, None)
                pos += n
                mv = mv[n:]
            fs.length = max(fs.length, offset + len(data))
            if len(fs.pending) >= MAX_PENDING_SLICES:
                self._flush_state(fs)
        return len(data)

    def _flush_state(self, fs: FileState) -> None:
        """Finish the uploads of a file's buffered slices and commit them (caller holds fs.lock).

        The slices stay in fs.pending until the commit is done, so a concurrent getattr keeps
        reporting the length they give the file instead of the engine's older one."""
        if not fs.pending:
            return
        pending = fs.pending
        sizes = []
        failure: Exception | None = None
        for p in pending:
            try:
                sizes.append(p.writer.finish())
            except Exception as e:  # noqa: PERF203 - keep finishing the others
                failure = failure or e
                sizes.append(0)
        records = [(p.indx, Slice(p.pos, p.writer.id, n, 0, n)) for p, n in zip(pending, sizes, strict=True)
                   if n]
        wb = self.store.writeback
        try:
            if failure is not None:
                raise failure
            staged: list[int] = []
            if wb is not None:
                staged = wb.outstanding(s.id for _, s in records)
                if staged:
                    wb.sync()  # the staged names must survive a crash before the commit says so
            attr = self.meta.write(fs.ino, records, pending=staged)
        except Exception:
            fs.pending, fs.active = [], {}
            self._discard(pending, sizes)
            raise
        if wb is not None:
            wb.committed(s.id for _, s in records)
        fs.length = attr.length
        fs.seen = (attr.mtime, attr.length)
        fs.pending, fs.active = [], {}
        for indx, _ in records:
            fs.segments.pop(indx, None)
            fs.committed[indx] = fs.committed.get(indx, 0) + 1
            if fs.committed[indx] >= COMPACT_THRESHOLD:
                fs.committed[indx] = 0
                with self._compact_lock:
                    self.compact_queue.add((fs.ino, indx))

    def _discard(self, pending: list[Pending], sizes: list[int]) -> None:
        """Slices that will never be committed: remove what of them reached the store."""
        for p, n in zip(pending, sizes, strict=True):
            try:
                self.store.delete_slice(p.writer.id, n or p.writer.length)
            except Exception as e:
                log.warning("could not remove uncommitted slice %d: %s", p.writer.id, e)

    def _segments(self, fs: FileState, indx: int, refresh: bool = False) -> list[Segment]:
        segs = None if refresh else fs.segments.get(indx)
        if segs is None:
            slices = self.meta.read_chunk(fs.ino, indx)
            segs = resolve(slices)
            fs.segments[indx] = segs
            if len(slices) >= COMPACT_THRESHOLD:
                with self._compact_lock:
                    self.compact_queue.add((fs.ino, indx))
        return segs

    def read(self, fh: int, offset: int, size: int) -> Buffer:
        """Up to size bytes at offset: bytes, or a read-only view of a cached block (no copy)."""
        h = self._handle(fh)
        if h.special is not None:
            return h.special.read(offset, size)
        fs = h.state
        if fs is None:
            raise FSError(errno.EBADF)
        if offset < 0:
            raise FSError(errno.EINVAL)
        with fs.lock:
            if fs.pending:
                self._flush_state(fs)
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
                self._segments(fs, indx)
                pos += m
            self._readahead(h, fs, offset, end)
        # the fetches run without the file's lock, so the kernel's parallel reads overlap
        for attempt in (0, 1):
            try:
                return self._fetch(fs, pieces, n, refresh=attempt > 0)
            except ObjectNotFound:
                # a compaction may have retired the slices we resolved: resolve the chunks again
                if attempt:
                    raise FSError(errno.EIO, "block missing from the object store") from None
        raise AssertionError("unreachable")

    def _fetch(self, fs: FileState, pieces: list[tuple[int, int, int, int]], n: int, refresh: bool) -> Buffer:
        parts = []
        for indx, cpos, m, at in pieces:
            if refresh:
                with fs.lock:
                    segs = self._segments(fs, indx, refresh=True)
            else:
                segs = fs.segments.get(indx)
                if segs is None:
                    with fs.lock:
                        segs = self._segments(fs, indx)
            parts.append((cpos, m, at, covering(segs, cpos, m)))
        if len(parts) == 1 and len(parts[0][3]) == 1:
            cpos, m, _at, (g,) = parts[0]
            if g.pos == cpos and g.len == m:  # one slice covers the whole answer
                return self.store.read(g.id, g.size, g.off, g.len)
        out = bytearray(n)
        for cpos, _m, at, segs in parts:
            for g in segs:
                start = at + g.pos - cpos
                out[start : start + g.len] = self.store.read(g.id, g.size, g.off, g.len)
        return out

    def _readahead(self, h: Handle, fs: FileState, offset: int, end: int) -> None:
        """Fetch ahead of a sequential reader, with a window that doubles while the reader stays
        sequential (up to a quarter of the read buffer); a random reader gets none."""
        bs = self.store.block_size
        if offset == h.read_end:
            h.window = min(max(bs, h.window * 2), self.max_readahead)
        else:
            h.window = 0
        h.read_end = end
        if not h.window or end >= fs.length:
            return
        pos, stop = end, min(fs.length, end + h.window)
        while pos < stop:
            indx, cpos = divmod(pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - cpos, stop - pos)
            segs = fs.segments.get(indx)
            if segs is None:
                segs = self._segments(fs, indx)
            for g in covering(segs, cpos, n):
                for i in range(g.off // bs, (g.off + g.len - 1) // bs + 1):
                    self.store.prefetch(g.id, g.size, i)
            pos += n

    def flush(self, fh: int) -> None:
        h = self._handle(fh)
        if h.state is not None:
            with h.state.lock:
                self._flush_state(h.state)
            self._upload_error(h.ino)

    def nothing_to_flush(self, fh: int) -> bool:
        """Whether flush(fh) would do nothing: memory only, so the FUSE shell answers the flush
        that follows every close of a file only read without sending it to a thread."""
        h = self._handles.get(fh)
        if h is None or h.special is not None:
            return False
        return h.state is None or (not h.state.pending and self.store.writeback is None)

    def _upload_error(self, ino: int) -> None:
        """A rejected write-back upload of this file fails its next flush, fsync or close."""
        wb = self.store.writeback
        err = wb.error_of(ino) if wb is not None else None
        if err is not None:
            raise FSError(errno.EIO, f"upload failed: {err}")

    def fsync(self, fh: int, datasync: bool = False) -> None:
        self.flush(fh)
        wb = self.store.writeback
        if wb is not None and self.fsync_remote:
            wb.wait(self._handle(fh).ino)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        self._writable()
        h = self._handle(fh)
        fs = h.state
        if fs is None:
            raise FSError(errno.EBADF)
        with fs.lock:
            self._flush_state(fs)
            attr = self.meta.fallocate(fs.ino, mode, offset, length)
            fs.length = attr.length
            fs.segments.clear()
            fs.seen = (attr.mtime, attr.length)

    def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None or h.state is None:
            return
        fs = h.state
        try:
            with fs.lock:
                self._flush_state(fs)
            self._upload_error(fs.ino)
        finally:
            with self._files_lock:
                fs.opens -= 1
                last = fs.opens == 0
                if last:
                    self._files.pop(fs.ino, None)
            if last:
                self.meta.close(fs.ino)
                if len(self._seen) > 100_000:
                    self._seen.clear()
                self._seen[fs.ino] = fs.seen

    # ---- the rest ----------------------------------------------------------------------------
    def statfs(self) -> tuple[int, int, int, int]:
        return self.meta.statfs()

    def getxattr(self, ino: int, name: bytes) -> bytes:
        # the kernel asks for security.capability before every write to a FUSE file (to drop
        # privileges); while the file is open here, the answer "none" is remembered instead of
        # costing a metadata round trip per write request (5% of a sequential write)
        if self.known_without(ino, name):
            raise FSError(errno.ENODATA)
        fs = self._files.get(ino) if name == CAPS_XATTR else None
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
        fs = self._files.get(ino)
        return fs is not None and fs.no_caps and fs.opens > 0

    def _xattrs_changed(self, ino: int) -> None:
        fs = self._files.get(ino)
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
        with self._files_lock:
            states = list(self._files.values())
        for fs in states:
            with fs.lock:
                self._flush_state(fs)

    def flush_remote(self, timeout: float | None = None, final: bool = False) -> list[tuple[int, int]]:
        """Commit every open file's writes and wait until all data written before this call is
        in the object store; returns what is still pending at the deadline as (inode, bytes).
        final: the caller unmounts next and has reported what is left."""
        self.flushed_for_exit = self.flushed_for_exit or final
        self.flush_all()
        wb = self.store.writeback
        return [] if wb is None else wb.wait(None, timeout)

    def take_compactions(self) -> list[tuple[int, int]]:
        with self._compact_lock:
            items = list(self.compact_queue)
            self.compact_queue.clear()
        return items
