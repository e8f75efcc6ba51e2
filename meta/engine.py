"""POSIX metadata semantics shared by every engine.

An engine supplies transactions (`_txn`, `_read`) over a small set of record operations (`Tx`,
records.py); everything a file system means by create, unlink, rename, truncate, write commit,
links and sessions is written once, so both engines behave the same and one test suite covers
both. BaseMeta is that interface: the engine hooks, settings, ids, lookups and xattrs here, its
namespace changes (namespace.py), file contents (filedata.py) and sessions (sessions.py) in
parts of their own.
"""

from __future__ import annotations

import errno
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from cachefs.errors import ConfigError, FSError

from .filedata import FileData
from .inflight import InFlight
from .namespace import Namespace
from .records import MAX_NAME, MAX_XATTR_NAME, MAX_XATTR_VALUE, XATTR_CREATE, XATTR_REPLACE, Tx
from .retry import Retry
from .sessions import Sessions
from .types import META_VERSION, ROOT_INODE, TYPE_DIR, Attr, PendingSlice, SessionInfo, Settings, Slice, now_ns

T = TypeVar("T")

TOTAL_SPACE = 1 << 50  # reported capacity: object stores have no fixed size
TOTAL_INODES = 10 << 30


@dataclass
class Changes:
    """What one committed transaction changed that a client may have cached."""

    attrs: dict[int, Attr] = field(default_factory=dict)  # written: their new attributes
    gone: set[int] = field(default_factory=set)  # inodes deleted
    entries: dict[tuple[int, bytes], int] = field(default_factory=dict)  # (parent, name) -> inode
    removed: set[tuple[int, bytes]] = field(default_factory=set)  # entries deleted

    def __bool__(self) -> bool:
        return bool(self.attrs or self.gone or self.entries or self.removed)


class Recording:
    """A Tx that notes the attributes and entries it writes."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx
        self.changes = Changes()

    def __getattr__(self, name: str) -> object:
        return getattr(self._tx, name)

    def set_attr(self, ino: int, attr: Attr) -> None:
        self._tx.set_attr(ino, attr)
        self.changes.attrs[ino] = attr.copy()
        self.changes.gone.discard(ino)

    def del_inode(self, ino: int) -> None:
        self._tx.del_inode(ino)
        self.changes.attrs.pop(ino, None)
        self.changes.gone.add(ino)

    def set_entry(self, parent: int, name: bytes, ino: int, typ: int) -> None:
        self._tx.set_entry(parent, name, ino, typ)
        self.changes.entries[(parent, name)] = ino
        self.changes.removed.discard((parent, name))

    def del_entry(self, parent: int, name: bytes) -> None:
        self._tx.del_entry(parent, name)
        self.changes.entries.pop((parent, name), None)
        self.changes.removed.add((parent, name))


class BaseMeta(Namespace, FileData, Sessions, InFlight, ABC):
    """The metadata interface every layer above uses; engines subclass it."""

    name = "base"
    retry: Retry  # how this engine's operations ride through its outages (each engine makes one)

    def __init__(self, is_open: Callable[[int], bool] | None = None,
                 observer: Callable[[Changes], None] | None = None) -> None:
        self.sid = 0
        self.observer = observer  # told what each committed transaction changed
        # whether this client still has the inode open (its open files): unlink keeps such an
        # inode alive for the open handles instead of deleting it
        self.is_open: Callable[[int], bool] = is_open or (lambda ino: False)
        self._alloc_lock = threading.Lock()
        self._alloc: dict[str, tuple[int, int]] = {}
        self.settings: Settings | None = None
        self._sustaining: set[int] = set()  # inodes this client keeps alive for its open handles
        self._init_inflight()

    # ---- engine hooks -------------------------------------------------------------------
    @abstractmethod
    def _engine_txn(self, fn: Callable[[Tx], T]) -> T:
        """Run fn atomically, retrying it on conflict with a concurrent client."""

    def _txn(self, fn: Callable[[Tx], T]) -> T:
        """fn as one transaction of the engine; what it changed in attributes and entries is
        then told to the observer (the client's metadata cache), from the attempt that
        committed."""
        if self.observer is None:
            return self._engine_txn(fn)
        last: list[Recording] = []

        def recorded(tx: Tx) -> T:
            rec = Recording(tx)
            last[:] = [rec]
            return fn(rec)

        result = self._engine_txn(recorded)
        if last and last[0].changes:
            self.observer(last[0].changes)
        return result

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
    def _count_entries(self, ino: int) -> int: ...

    @abstractmethod
    def _get_attrs(self, inos: list[int]) -> list[Attr | None]: ...

    @abstractmethod
    def _session_put(self, sid: int, heartbeat: float, info: dict) -> bool:
        """Record the session's heartbeat and info; True when it was not registered (new, or
        taken for dead and cleaned up by another client)."""

    def now(self) -> float:
        """The engine's clock, by which every client judges heartbeats (seconds since the
        epoch); an engine on one machine answers this machine's."""
        return time.time()

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
    def _all_chunks(self) -> Iterator[bytes]:
        """The packed records of every chunk of the volume (gc)."""

    # the slice id ranges of sessions (inflight.py)
    @abstractmethod
    def _range_add(self, sid: int, start: int, end: int) -> None: ...

    @abstractmethod
    def _range_list(self, sid: int) -> list[tuple[int, int]]: ...

    @abstractmethod
    def _range_used(self, sid: int, start: int) -> set[int]: ...

    @abstractmethod
    def _range_drop(self, sid: int, start: int) -> None: ...

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
        if settings.meta_version < META_VERSION:
            self._upgrade(settings.meta_version)
            settings.meta_version = META_VERSION
            self._store_settings(settings)
        elif settings.meta_version > META_VERSION:
            raise ConfigError(f"volume {settings.name!r} was formatted by a newer cachefs (metadata version "
                              f"{settings.meta_version}; this one knows {META_VERSION})")
        self.settings = settings
        return settings

    def _upgrade(self, version: int) -> None:
        """Bring the records of a volume of an older metadata version up to date (idempotent:
        two clients may do it at once)."""

    def referenced_slices(self) -> set[int]:
        """Every slice id a chunk of the volume names, or the trash holds for deletion: a full
        scan of the metadata (for gc)."""
        ids = {s.id for blob in self._all_chunks() for s in Slice.unpack_many(blob) if s.id}
        ids |= {i for i, _ in self._trash(1 << 62, float("inf"))}
        return ids

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

    # ---- lookups -----------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> tuple[int, Attr]:
        return self._read(lambda tx: self._lookup_in(tx, parent, name))

    def lookup_many(self, pairs: list[tuple[int, bytes]]) -> list[tuple[int, Attr] | FSError]:
        """lookup of each (parent, name), in one round trip where the engine allows (the
        directories a DataLoader batch's paths go through); the FSError in place of one that
        fails."""
        def fn(tx: Tx) -> list[tuple[int, Attr] | FSError]:
            out: list[tuple[int, Attr] | FSError] = []
            for parent, name in pairs:
                try:
                    out.append(self._lookup_in(tx, parent, name))
                except FSError as e:
                    out.append(e)
            return out

        return self._read(fn)

    def _one_lookup(self, parent: int, name: bytes) -> tuple[int, Attr] | FSError:
        try:
            return self.lookup(parent, name)
        except FSError as e:
            return e

    @staticmethod
    def _lookup_in(tx: Tx, parent: int, name: bytes) -> tuple[int, Attr]:
        if len(name) > MAX_NAME:
            raise FSError(errno.ENAMETOOLONG)
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
        return self._with_attrs(self._list_entries(ino))

    def listing(self, ino: int, limit: int) -> list[tuple[bytes, int, Attr]] | None:
        """readdir's entries of a directory, for a client's lookups (metacache.py); None when it
        holds more than `limit`: too many to fetch for lookups alone."""
        if self._count_entries(ino) > limit:
            return None
        return self._with_attrs(self._list_entries(ino))

    def _with_attrs(self, entries: list[tuple[bytes, int, int]]) -> list[tuple[bytes, int, Attr]]:
        """(name, inode, attr) of the entries whose inode still exists, attrs fetched in batches."""
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

    # ---- symlinks and xattrs -------------------------------------------------------------
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

