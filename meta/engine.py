"""POSIX metadata semantics shared by every engine.

An engine supplies transactions (`_txn`, `_read`) over a small set of record operations (`Tx`);
everything a file system means by create, unlink, rename, truncate, write commit, links and
sessions is written once here, so both engines behave the same and one test suite covers both.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable
from typing import Protocol, TypeVar

from cachefs.errors import ConfigError, FSError

from .types import (
    CHUNK_SIZE,
    ROOT_INODE,
    TYPE_DIR,
    TYPE_FILE,
    TYPE_SYMLINK,
    Attr,
    PendingSlice,
    SessionInfo,
    Settings,
    Slice,
    now_ns,
)

T = TypeVar("T")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
MAX_NAME = 255
MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 65536
TOTAL_SPACE = 1 << 50  # reported capacity: object stores have no fixed size
TOTAL_INODES = 10 << 30


def _align4k(n: int) -> int:
    return (n + 4095) & ~4095


def _check_name(name: bytes) -> None:
    if len(name) > MAX_NAME:
        raise FSError(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise FSError(errno.EINVAL)


class Tx(Protocol):
    """Record operations inside one atomic transaction of an engine."""

    def get_attr(self, ino: int) -> Attr | None: ...
    def set_attr(self, ino: int, attr: Attr) -> None: ...
    def del_inode(self, ino: int) -> None: ...  # attr, symlink target and xattrs
    def get_entry(self, parent: int, name: bytes) -> tuple[int, int] | None: ...
    def set_entry(self, parent: int, name: bytes, ino: int, typ: int) -> None: ...
    def del_entry(self, parent: int, name: bytes) -> None: ...
    def has_entries(self, ino: int) -> bool: ...
    def get_slices(self, ino: int, indx: int) -> list[Slice]: ...
    def append_slices(self, ino: int, indx: int, slices: list[Slice]) -> None: ...
    def set_slices(self, ino: int, indx: int, slices: list[Slice]) -> None: ...
    def get_symlink(self, ino: int) -> bytes | None: ...
    def set_symlink(self, ino: int, target: bytes) -> None: ...
    def get_xattr(self, ino: int, name: bytes) -> bytes | None: ...
    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None: ...
    def del_xattr(self, ino: int, name: bytes) -> None: ...
    def add_usage(self, space: int, inodes: int) -> None: ...
    def add_delfile(self, ino: int, length: int) -> None: ...
    def add_trash(self, slices: Iterable[tuple[int, int]]) -> None: ...
    def get_refs(self, ids: list[int]) -> dict[int, int]: ...  # extra references (absent: none)
    def set_ref(self, sid: int, extra: int) -> None: ...
    def add_sustained(self, sid: int, ino: int) -> None: ...
    def del_sustained(self, sid: int, ino: int) -> None: ...
    def add_pending(self, slice_id: int, sid: int, ino: int, size: int) -> None: ...


class BaseMeta(ABC):
    """The metadata interface every layer above uses; engines subclass it."""

    name = "base"

    def __init__(self, is_open: Callable[[int], bool] | None = None) -> None:
        self.sid = 0
        # whether this client still has the inode open (its open files): unlink keeps such an
        # inode alive for the open handles instead of deleting it
        self.is_open: Callable[[int], bool] = is_open or (lambda ino: False)
        self._alloc_lock = threading.Lock()
        self._alloc: dict[str, tuple[int, int]] = {}
        self.settings: Settings | None = None
        self._sustaining: set[int] = set()  # inodes this client keeps alive for its open handles

    # ---- engine hooks -------------------------------------------------------------------
    @abstractmethod
    def _txn(self, fn: Callable[[Tx], T]) -> T:
        """Run fn atomically, retrying it on conflict with a concurrent client."""

    @abstractmethod
    def _read(self, fn: Callable[[Tx], T]) -> T:
        """Run a read-only fn against a consistent-enough view (no conflict tracking)."""

    @abstractmethod
    def _incr(self, counter: str, n: int) -> int:
        """Atomically add n to a counter and return its new value."""

    @abstractmethod
    def _get_counter(self, counter: str) -> int: ...

    @abstractmethod
    def _load_settings(self) -> Settings | None: ...

    @abstractmethod
    def _store_settings(self, settings: Settings) -> None: ...

    @abstractmethod
    def _reset(self) -> None:
        """Remove every record of the volume (format --force)."""

    @abstractmethod
    def _list_entries(self, ino: int) -> list[tuple[bytes, int, int]]: ...

    @abstractmethod
    def _get_attrs(self, inos: list[int]) -> list[Attr | None]: ...

    @abstractmethod
    def _session_put(self, sid: int, heartbeat: float, info: dict) -> None: ...

    @abstractmethod
    def _session_list(self) -> list[SessionInfo]: ...

    @abstractmethod
    def _session_del(self, sid: int) -> None: ...

    @abstractmethod
    def _sustained(self, sid: int) -> list[int]: ...

    @abstractmethod
    def _delfiles(self, limit: int) -> list[tuple[int, int]]: ...

    @abstractmethod
    def _delfile_done(self, ino: int, length: int) -> None: ...

    @abstractmethod
    def _trash(self, limit: int, before: float) -> list[tuple[int, int]]: ...

    @abstractmethod
    def _trash_done(self, slices: list[tuple[int, int]]) -> None: ...

    @abstractmethod
    def _pending_list(self) -> list[PendingSlice]: ...

    @abstractmethod
    def _pending_done(self, ids: list[int]) -> None: ...

    @abstractmethod
    def close_engine(self) -> None: ...

    # ---- volume ---------------------------------------------------------------------------
    def format(self, settings: Settings, force: bool = False) -> None:
        old = self._load_settings()
        if old is not None and not force:
            raise ConfigError(f"volume {old.name!r} is already formatted here (use --force to replace it)")
        if old is not None:
            self._reset()
        self._store_settings(settings)
        now = now_ns()
        root = Attr(TYPE_DIR, 0o777, 0, 0, now, now, now, nlink=2, length=4096, parent=ROOT_INODE)

        def fn(tx: Tx) -> None:
            tx.set_attr(ROOT_INODE, root)

        self._txn(fn)
        if self._get_counter("nextInode") < ROOT_INODE + 1:
            self._incr("nextInode", ROOT_INODE + 1 - self._get_counter("nextInode"))
        self.settings = settings

    def is_formatted(self) -> Settings | None:
        """The volume's settings when one is formatted here, else None."""
        return self._load_settings()

    def load(self) -> Settings:
        settings = self._load_settings()
        if settings is None:
            raise ConfigError("volume is not formatted (run `cachefs format` first)")
        self.settings = settings
        return settings

    def update_settings(self, settings: Settings) -> None:
        self._store_settings(settings)
        self.settings = settings

    # ---- id allocation -------------------------------------------------------------------------
    def _next_id(self, counter: str, batch: int) -> int:
        """Ids come from a shared counter in batches so most allocations cost no round trip."""
        with self._alloc_lock:
            nxt, end = self._alloc.get(counter, (0, 0))
            if nxt >= end:
                end = self._incr(counter, batch) + 1
                nxt = end - batch
            self._alloc[counter] = (nxt + 1, end)
            return nxt

    def new_inode(self) -> int:
        return self._next_id("nextInode", 100)

    def new_slice_id(self) -> int:
        return self._next_id("nextSlice", 1000)

    # ---- lookups -----------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> tuple[int, Attr]:
        if len(name) > MAX_NAME:
            raise FSError(errno.ENAMETOOLONG)

        def fn(tx: Tx) -> tuple[int, Attr]:
            if name == b".":
                attr = tx.get_attr(parent)
                if attr is None:
                    raise FSError(errno.ENOENT)
                return parent, attr
            if name == b"..":
                pattr = tx.get_attr(parent)
                if pattr is None:
                    raise FSError(errno.ENOENT)
                up = pattr.parent or ROOT_INODE
                attr = tx.get_attr(up)
                if attr is None:
                    raise FSError(errno.ENOENT)
                return up, attr
            entry = tx.get_entry(parent, name)
            if entry is None:
                raise FSError(errno.ENOENT)
            attr = tx.get_attr(entry[0])
            if attr is None:
                raise FSError(errno.ENOENT)
            return entry[0], attr

        return self._read(fn)

    def getattr(self, ino: int) -> Attr:
        attr = self._read(lambda tx: tx.get_attr(ino))
        if attr is None:
            raise FSError(errno.ENOENT)
        return attr

    def readlink(self, ino: int) -> bytes:
        target = self._read(lambda tx: tx.get_symlink(ino))
        if target is None:
            raise FSError(errno.EINVAL)
        return target

    def readdir(self, ino: int) -> list[tuple[bytes, int, Attr]]:
        """A snapshot of a directory: (name, inode, attr) for every entry that still exists."""
        attr = self.getattr(ino)
        if attr.type != TYPE_DIR:
            raise FSError(errno.ENOTDIR)
        entries = self._list_entries(ino)
        out = []
        batch = 500
        for i in range(0, len(entries), batch):
            part = entries[i : i + batch]
            attrs = self._get_attrs([e[1] for e in part])
            for (name, child, _typ), a in zip(part, attrs, strict=True):
                if a is not None:
                    out.append((name, child, a))
        return out

    def path_of(self, ino: int) -> str | None:
        """One path of an inode from the root (for reports: fsck, flush), or None when it has no
        name any more. Walks parent pointers, listing each parent once."""
        parts: list[bytes] = []
        cur = ino
        for _ in range(4096):
            if cur == ROOT_INODE:
                return "/" + b"/".join(reversed(parts)).decode(errors="replace")
            try:
                attr = self.getattr(cur)
            except FSError:
                return None
            if not attr.parent or attr.nlink == 0:
                return None
            name = next((n for n, i, _ in self._list_entries(attr.parent) if i == cur), None)
            if name is None:
                return None
            parts.append(name)
            cur = attr.parent
        return None

    def read_chunk(self, ino: int, indx: int) -> list[Slice]:
        return self._read(lambda tx: tx.get_slices(ino, indx))

    def file_slices(self, ino: int, length: int) -> list[tuple[int, int]]:
        """Distinct (slice id, size) of a file of `length` bytes: what its blocks are made of."""
        chunks = (length + CHUNK_SIZE - 1) // CHUNK_SIZE
        return _distinct(s for indx in range(chunks) for s in self.read_chunk(ino, indx))

    # ---- namespace changes ---------------------------------------------------------------------
    def mknod(
        self, parent: int, name: bytes, typ: int, mode: int, uid: int, gid: int,
        rdev: int = 0, target: bytes | None = None,
    ) -> tuple[int, Attr]:
        _check_name(name)
        ino = self.new_inode()

        def fn(tx: Tx) -> tuple[int, Attr]:
            pattr = _free_name(tx, parent, name)
            now = now_ns()
            m, g = mode & 0o7777, gid
            if pattr.mode & 0o2000:  # setgid directory: children inherit its group
                g = pattr.gid
                if typ == TYPE_DIR:
                    m |= 0o2000
            attr = Attr(typ, m, uid, g, now, now, now, nlink=1, rdev=rdev, parent=parent)
            if typ == TYPE_DIR:
                attr.nlink = 2
                attr.length = 4096
                pattr.nlink += 1
            elif typ == TYPE_SYMLINK:
                assert target is not None
                attr.length = len(target)
                tx.set_symlink(ino, target)
            _add_inode(tx, parent, pattr, name, ino, attr, now)
            return ino, attr

        return self._txn(fn)

    def link(self, ino: int, parent: int, name: bytes) -> Attr:
        _check_name(name)

        def fn(tx: Tx) -> Attr:
            attr = tx.get_attr(ino)
            if attr is None or attr.nlink == 0:
                raise FSError(errno.ENOENT)
            if attr.type == TYPE_DIR:
                raise FSError(errno.EPERM)
            pattr = _free_name(tx, parent, name)
            now = now_ns()
            attr.nlink += 1
            attr.ctime = now
            tx.set_attr(ino, attr)
            tx.set_entry(parent, name, ino, attr.type)
            pattr.mtime = pattr.ctime = now
            tx.set_attr(parent, pattr)
            return attr

        return self._txn(fn)

    def _drop_link(self, tx: Tx, ino: int, attr: Attr, now: int) -> None:
        """One name of ino is gone: keep it, keep it for its open handles, or delete it."""
        attr.nlink -= 1
        attr.ctime = now
        if attr.nlink > 0:
            tx.set_attr(ino, attr)
            return
        if attr.type == TYPE_FILE and self.is_open(ino):
            tx.set_attr(ino, attr)
            tx.add_sustained(self.sid, ino)
            self._sustaining.add(ino)
            return
        self._delete_inode(tx, ino, attr)

    def _delete_inode(self, tx: Tx, ino: int, attr: Attr) -> None:
        tx.del_inode(ino)
        tx.add_usage(-_align4k(attr.length), -1)
        if attr.type == TYPE_FILE and attr.length > 0:
            tx.add_delfile(ino, attr.length)

    def unlink(self, parent: int, name: bytes) -> None:
        def fn(tx: Tx) -> None:
            entry = tx.get_entry(parent, name)
            if entry is None:
                raise FSError(errno.ENOENT)
            ino, typ = entry
            if typ == TYPE_DIR:
                raise FSError(errno.EISDIR)
            pattr = tx.get_attr(parent)
            attr = tx.get_attr(ino)
            now = now_ns()
            tx.del_entry(parent, name)
            if pattr is not None:
                pattr.mtime = pattr.ctime = now
                tx.set_attr(parent, pattr)
            if attr is not None:
                self._drop_link(tx, ino, attr, now)

        self._txn(fn)

    def rmdir(self, parent: int, name: bytes) -> None:
        if name == b".":
            raise FSError(errno.EINVAL)
        if name == b"..":
            raise FSError(errno.ENOTEMPTY)

        def fn(tx: Tx) -> None:
            entry = tx.get_entry(parent, name)
            if entry is None:
                raise FSError(errno.ENOENT)
            ino, typ = entry
            if typ != TYPE_DIR:
                raise FSError(errno.ENOTDIR)
            if tx.has_entries(ino):
                raise FSError(errno.ENOTEMPTY)
            pattr = tx.get_attr(parent)
            attr = tx.get_attr(ino)
            now = now_ns()
            tx.del_entry(parent, name)
            if pattr is not None:
                pattr.nlink -= 1
                pattr.mtime = pattr.ctime = now
                tx.set_attr(parent, pattr)
            if attr is not None:
                self._delete_inode(tx, ino, attr)

        self._txn(fn)

    def _is_ancestor(self, tx: Tx, ino: int, of: int) -> bool:
        """Whether directory ino is `of` or one of its ancestors (moving ino under `of` loops)."""
        cur = of
        seen = 0
        while True:
            if cur == ino:
                return True
            if cur == ROOT_INODE:
                return False
            attr = tx.get_attr(cur)
            if attr is None or attr.parent in (0, cur):
                return False
            cur = attr.parent
            seen += 1
            if seen > 100000:
                raise FSError(errno.ELOOP)

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int = 0) -> None:
        _check_name(n2)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FSError(errno.EINVAL)

        def fn(tx: Tx) -> None:
            e1 = tx.get_entry(p1, n1)
            if e1 is None:
                raise FSError(errno.ENOENT)
            pa1 = tx.get_attr(p1)
            pa2 = pa1 if p1 == p2 else tx.get_attr(p2)
            if pa1 is None or pa2 is None or pa2.nlink == 0:
                raise FSError(errno.ENOENT)
            if pa2.type != TYPE_DIR:
                raise FSError(errno.ENOTDIR)
            a1 = tx.get_attr(e1[0])
            if a1 is None:
                raise FSError(errno.ENOENT)
            e2 = tx.get_entry(p2, n2)
            now = now_ns()
            move = self._exchange if flags & RENAME_EXCHANGE else self._replace
            if not move(tx, (p1, n1, pa1, e1, a1), (p2, n2, pa2, e2), flags, now):
                return  # the same inode under both names: nothing changes
            pa1.mtime = pa1.ctime = now
            tx.set_attr(p1, pa1)
            if p1 != p2:
                pa2.mtime = pa2.ctime = now
                tx.set_attr(p2, pa2)

        self._txn(fn)

    def _exchange(self, tx: Tx, src: tuple, dst: tuple, flags: int, now: int) -> bool:
        """RENAME_EXCHANGE: the two names swap inodes (both must exist). False: nothing to do."""
        p1, n1, pa1, (ino1, t1), a1 = src
        p2, n2, pa2, e2 = dst
        if e2 is None:
            raise FSError(errno.ENOENT)
        ino2, t2 = e2
        if ino1 == ino2:
            return False
        a2 = tx.get_attr(ino2)
        if a2 is None:
            raise FSError(errno.ENOENT)
        if p1 != p2:
            if t1 == TYPE_DIR and self._is_ancestor(tx, ino1, p2):
                raise FSError(errno.EINVAL)
            if t2 == TYPE_DIR and self._is_ancestor(tx, ino2, p1):
                raise FSError(errno.EINVAL)
        tx.set_entry(p1, n1, ino2, t2)
        tx.set_entry(p2, n2, ino1, t1)
        if p1 != p2:
            a1.parent, a2.parent = p2, p1
            if t1 == TYPE_DIR:
                pa1.nlink -= 1
                pa2.nlink += 1
            if t2 == TYPE_DIR:
                pa2.nlink -= 1
                pa1.nlink += 1
        a1.ctime = a2.ctime = now
        tx.set_attr(ino1, a1)
        tx.set_attr(ino2, a2)
        return True

    def _replace(self, tx: Tx, src: tuple, dst: tuple, flags: int, now: int) -> bool:
        """A plain rename: the source name moves, replacing what the destination name held
        (unless RENAME_NOREPLACE). False: nothing to do."""
        p1, n1, pa1, (ino1, t1), a1 = src
        p2, n2, pa2, e2 = dst
        a2 = None
        if e2 is not None:
            if flags & RENAME_NOREPLACE:
                raise FSError(errno.EEXIST)
            ino2, t2 = e2
            if ino2 == ino1:
                return False
            if t1 == TYPE_DIR:
                if t2 != TYPE_DIR:
                    raise FSError(errno.ENOTDIR)
                if tx.has_entries(ino2):
                    raise FSError(errno.ENOTEMPTY)
            elif t2 == TYPE_DIR:
                raise FSError(errno.EISDIR)
            a2 = tx.get_attr(ino2)
        if t1 == TYPE_DIR and p1 != p2 and self._is_ancestor(tx, ino1, p2):
            raise FSError(errno.EINVAL)
        tx.del_entry(p1, n1)
        tx.set_entry(p2, n2, ino1, t1)
        a1.ctime = now
        if p1 != p2:
            a1.parent = p2
            if t1 == TYPE_DIR:
                pa1.nlink -= 1
                pa2.nlink += 1
        tx.set_attr(ino1, a1)
        if e2 is not None and a2 is not None:
            if a2.type == TYPE_DIR:
                pa2.nlink -= 1
                self._delete_inode(tx, e2[0], a2)
            else:
                self._drop_link(tx, e2[0], a2, now)
        return True

    # ---- attributes ------------------------------------------------------------------------
    def setattr(
        self, ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
        atime: int | None = None, mtime: int | None = None, length: int | None = None,
    ) -> Attr:
        def fn(tx: Tx) -> Attr:
            attr = tx.get_attr(ino)
            if attr is None:
                raise FSError(errno.ENOENT)
            now = now_ns()
            if length is not None:
                self._truncate(tx, ino, attr, length, now)
            if mode is not None:
                attr.mode = mode & 0o7777
            if uid is not None and uid != 0xFFFFFFFF:
                attr.uid = uid
            if gid is not None and gid != 0xFFFFFFFF:
                attr.gid = gid
            if atime is not None:
                attr.atime = atime
            if mtime is not None:
                attr.mtime = mtime
            attr.ctime = now
            tx.set_attr(ino, attr)
            return attr

        return self._txn(fn)

    def _truncate(self, tx: Tx, ino: int, attr: Attr, length: int, now: int) -> None:
        if attr.type != TYPE_FILE:
            raise FSError(errno.EISDIR if attr.type == TYPE_DIR else errno.EINVAL)
        if length < 0:
            raise FSError(errno.EINVAL)
        old = attr.length
        if length < old:
            indx, pos = divmod(length, CHUNK_SIZE)
            first_gone = indx
            if pos:
                end = min(CHUNK_SIZE, old - indx * CHUNK_SIZE)
                tx.append_slices(ino, indx, [Slice(pos, 0, 0, 0, end - pos)])
                first_gone = indx + 1
            last = (old - 1) // CHUNK_SIZE
            for i in range(first_gone, last + 1):
                slices = tx.get_slices(ino, i)
                if slices:
                    tx.set_slices(ino, i, [])
                    _deref(tx, _distinct(slices))
        tx.add_usage(_align4k(length) - _align4k(old), 0)
        attr.length = length
        attr.mtime = attr.ctime = now

    def fallocate(self, ino: int, mode: int, offset: int, size: int) -> Attr:
        if offset < 0 or size <= 0:
            raise FSError(errno.EINVAL)
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise FSError(errno.EOPNOTSUPP)
        if mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
            raise FSError(errno.EINVAL)

        def fn(tx: Tx) -> Attr:
            attr = tx.get_attr(ino)
            if attr is None:
                raise FSError(errno.ENOENT)
            if attr.type != TYPE_FILE:
                raise FSError(errno.EISDIR if attr.type == TYPE_DIR else errno.ENODEV)
            now = now_ns()
            end = offset + size
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                zend = min(end, attr.length) if mode & FALLOC_FL_KEEP_SIZE else end
                pos = offset
                while pos < zend:
                    indx, cpos = divmod(pos, CHUNK_SIZE)
                    n = min(CHUNK_SIZE - cpos, zend - pos)
                    tx.append_slices(ino, indx, [Slice(cpos, 0, 0, 0, n)])
                    pos += n
            if end > attr.length and not mode & FALLOC_FL_KEEP_SIZE:
                tx.add_usage(_align4k(end) - _align4k(attr.length), 0)
                attr.length = end
            attr.mtime = attr.ctime = now
            tx.set_attr(ino, attr)
            return attr

        return self._txn(fn)

    def write(self, ino: int, slices: list[tuple[int, Slice]], mtime: int | None = None,
              pending: Collection[int] = ()) -> Attr:
        """Commit written slices (chunk index, record) of one file in one transaction.

        `pending` (write-back) names slices whose blocks are not in the object store yet: the same
        transaction records them as held by this session: no reader or fsck can see the commit
        without knowing that."""

        def fn(tx: Tx) -> Attr:
            attr = tx.get_attr(ino)
            if attr is None:
                raise FSError(errno.ENOENT)
            if attr.type != TYPE_FILE:
                raise FSError(errno.EPERM)
            newlen = attr.length
            by_chunk: dict[int, list[Slice]] = {}
            for indx, s in slices:
                by_chunk.setdefault(indx, []).append(s)
                newlen = max(newlen, indx * CHUNK_SIZE + s.pos + s.len)
            for indx, group in by_chunk.items():
                tx.append_slices(ino, indx, group)
            for _, s in slices:
                if s.id in pending:
                    tx.add_pending(s.id, self.sid, ino, s.size)
            tx.add_usage(_align4k(newlen) - _align4k(attr.length), 0)
            attr.length = newlen
            attr.mtime = attr.ctime = mtime or now_ns()
            tx.set_attr(ino, attr)
            return attr

        return self._txn(fn)

    def compact_chunk(self, ino: int, indx: int, old: list[Slice], new: list[Slice]) -> bool:
        """Replace the leading records `old` of a chunk by `new`; False when the chunk changed
        underneath in a way that makes the replacement wrong (the caller drops `new`)."""

        def fn(tx: Tx) -> bool:
            cur = tx.get_slices(ino, indx)
            if cur[: len(old)] != old:
                return False
            rest = cur[len(old) :]
            tx.set_slices(ino, indx, new + rest)
            keep = {s.id for s in new + rest}
            _deref(tx, [(i, sz) for i, sz in _distinct(old) if i not in keep])
            return True

        return self._txn(fn)

    def clone(self, src: int, parent: int, name: bytes, uid: int, gid: int) -> tuple[int, Attr]:
        """A new file with the content of src, sharing its slices (metadata only)."""
        _check_name(name)
        ino = self.new_inode()

        def fn(tx: Tx) -> tuple[int, Attr]:
            attr = tx.get_attr(src)
            if attr is None:
                raise FSError(errno.ENOENT)
            if attr.type != TYPE_FILE:
                raise FSError(errno.EISDIR if attr.type == TYPE_DIR else errno.EINVAL)
            pattr = _free_name(tx, parent, name)
            now = now_ns()
            new = attr.copy()
            new.uid, new.gid, new.nlink, new.parent = uid, gid, 1, parent
            new.atime = new.mtime = new.ctime = now
            added: dict[int, int] = {}
            for indx in range((attr.length + CHUNK_SIZE - 1) // CHUNK_SIZE):
                slices = tx.get_slices(src, indx)
                if slices:
                    tx.set_slices(ino, indx, slices)
                    for sid, _ in _distinct(slices):
                        added[sid] = added.get(sid, 0) + 1
            if added:
                extra = tx.get_refs(list(added))
                for sid, n in added.items():
                    tx.set_ref(sid, extra.get(sid, 0) + n)
            _add_inode(tx, parent, pattr, name, ino, new, now)
            return ino, new

        return self._txn(fn)

    # ---- symlinks and xattrs -------------------------------------------------------------
    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> tuple[int, Attr]:
        if not target or len(target) > 4096:
            raise FSError(errno.ENAMETOOLONG if target else errno.ENOENT)
        return self.mknod(parent, name, TYPE_SYMLINK, 0o777, uid, gid, target=target)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self._read(lambda tx: tx.get_xattr(ino, name))
        if value is None:
            self.getattr(ino)
            raise FSError(errno.ENODATA)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        self.getattr(ino)
        return self._list_xattrs(ino)

    @abstractmethod
    def _list_xattrs(self, ino: int) -> list[bytes]: ...

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if not name or len(name) > MAX_XATTR_NAME:
            raise FSError(errno.ERANGE)
        if len(value) > MAX_XATTR_VALUE:
            raise FSError(errno.E2BIG)

        def fn(tx: Tx) -> None:
            attr = tx.get_attr(ino)
            if attr is None:
                raise FSError(errno.ENOENT)
            old = tx.get_xattr(ino, name)
            if flags & XATTR_CREATE and old is not None:
                raise FSError(errno.EEXIST)
            if flags & XATTR_REPLACE and old is None:
                raise FSError(errno.ENODATA)
            tx.set_xattr(ino, name, value)
            attr.ctime = now_ns()
            tx.set_attr(ino, attr)

        self._txn(fn)

    def removexattr(self, ino: int, name: bytes) -> None:
        def fn(tx: Tx) -> None:
            attr = tx.get_attr(ino)
            if attr is None:
                raise FSError(errno.ENOENT)
            if tx.get_xattr(ino, name) is None:
                raise FSError(errno.ENODATA)
            tx.del_xattr(ino, name)
            attr.ctime = now_ns()
            tx.set_attr(ino, attr)

        self._txn(fn)

    # ---- space ----------------------------------------------------------------------------
    def statfs(self) -> tuple[int, int, int, int]:
        """(total bytes, used bytes, total inodes, used inodes)."""
        used = max(0, self._get_counter("usedSpace"))
        inodes = max(0, self._get_counter("totalInodes")) + 1
        return TOTAL_SPACE, used, TOTAL_INODES, inodes

    # ---- open files and sessions --------------------------------------------------------
    def close(self, ino: int) -> None:
        """The last handle of ino on this client closed: reclaim it if it lost all its names."""
        if ino not in self._sustaining:
            return  # only an inode this client kept alive can be waiting for this close
        self._sustaining.discard(ino)

        def fn(tx: Tx) -> None:
            attr = tx.get_attr(ino)
            if attr is None or attr.nlink > 0:
                return
            tx.del_sustained(self.sid, ino)
            self._delete_inode(tx, ino, attr)

        self._txn(fn)

    def new_session(self, info: dict) -> int:
        self.sid = self._incr("nextSession", 1)
        info = dict(info, pid=os.getpid(), started=time.time())
        self._session_put(self.sid, time.time(), info)
        self._session_info = info
        return self.sid

    def heartbeat(self) -> None:
        if self.sid:
            self._session_put(self.sid, time.time(), self._session_info)

    def sessions(self) -> list[SessionInfo]:
        return self._session_list()

    def clean_session(self, sid: int) -> int:
        """Release what a dead (or closing) session held; returns files reclaimed."""
        reclaimed = 0
        for ino in self._sustained(sid):

            def fn(tx: Tx, ino: int = ino) -> bool:
                attr = tx.get_attr(ino)
                tx.del_sustained(sid, ino)
                if attr is None or attr.nlink > 0:
                    return False
                self._delete_inode(tx, ino, attr)
                return True

            reclaimed += bool(self._txn(fn))
        self._session_del(sid)
        return reclaimed

    def clean_stale_sessions(self, timeout: float) -> list[int]:
        """Sessions that stopped heartbeating for `timeout` seconds are cleaned by any client."""
        cutoff = time.time() - timeout
        cleaned = []
        for s in self._session_list():
            if s.sid != self.sid and s.heartbeat < cutoff:
                self.clean_session(s.sid)
                cleaned.append(s.sid)
        return cleaned

    def close_session(self) -> None:
        if self.sid:
            self.clean_session(self.sid)
            self.sid = 0

    # ---- write-back: slices committed before their blocks were uploaded -----------------------
    def pending_slices(self) -> list[PendingSlice]:
        """Every slice of the volume whose upload has not been confirmed, by any session
        (a dead session's stay listed until its node re-uploads them, or fsck reports them)."""
        return self._pending_list()

    def pending_done(self, ids: list[int]) -> None:
        """The blocks of these slices are all in the object store."""
        if ids:
            self._pending_done(ids)

    # ---- background deletion -------------------------------------------------------------
    def deleted_files(self, limit: int = 100) -> list[tuple[int, int]]:
        """(inode, length) of deleted files whose slices are still to be moved to the trash."""
        return self._delfiles(limit)

    def delete_file_data(self, ino: int, length: int) -> None:
        """Move every slice of a deleted file to the trash, chunk by chunk."""
        for indx in range((length + CHUNK_SIZE - 1) // CHUNK_SIZE):

            def fn(tx: Tx, indx: int = indx) -> None:
                slices = tx.get_slices(ino, indx)
                if slices:
                    tx.set_slices(ino, indx, [])
                    _deref(tx, _distinct(slices))

            self._txn(fn)
        self._delfile_done(ino, length)

    def trash_batch(self, limit: int = 1000, min_age: float = 0.0) -> list[tuple[int, int]]:
        """(slice id, size) of slices nobody references, queued at least min_age seconds ago:
        their objects are to be deleted."""
        return self._trash(limit, time.time() - min_age)

    def trash_done(self, slices: list[tuple[int, int]]) -> None:
        self._trash_done(slices)


def _free_name(tx: Tx, parent: int, name: bytes) -> Attr:
    """The attributes of a live directory `parent` in which `name` does not exist yet."""
    pattr = tx.get_attr(parent)
    if pattr is None or pattr.nlink == 0:
        raise FSError(errno.ENOENT)
    if pattr.type != TYPE_DIR:
        raise FSError(errno.ENOTDIR)
    if tx.get_entry(parent, name) is not None:
        raise FSError(errno.EEXIST)
    return pattr


def _add_inode(tx: Tx, parent: int, pattr: Attr, name: bytes, ino: int, attr: Attr, now: int) -> None:
    """Store a new inode under `name` in `parent` (whose attributes the caller checked)."""
    tx.set_attr(ino, attr)
    tx.set_entry(parent, name, ino, attr.type)
    pattr.mtime = pattr.ctime = now
    tx.set_attr(parent, pattr)
    tx.add_usage(_align4k(attr.length), 1)


def _deref(tx: Tx, slices: list[tuple[int, int]]) -> None:
    """Drop one reference to each slice; a slice nobody references any more goes to the trash.

    A slice starts with one reference (the chunk that got it written); `clone` adds one per
    chunk that shares it, recorded as an extra count so the common case stores nothing."""
    if not slices:
        return
    extra = tx.get_refs([i for i, _ in slices])
    gone = []
    for sid, size in slices:
        n = extra.get(sid, 0)
        if n > 0:
            tx.set_ref(sid, n - 1)
        else:
            gone.append((sid, size))
    tx.add_trash(gone)


def _distinct(slices: Iterable[Slice]) -> list[tuple[int, int]]:
    seen: dict[int, int] = {}
    for s in slices:
        if s.id:
            seen.setdefault(s.id, s.size)
    return list(seen.items())
