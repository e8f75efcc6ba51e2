"""`cachefs.Client`: the file system in the training process itself, without FUSE.

The same synchronous core as a mount (the metadata engine, the chunk store, the node's disk
cache, the cache group), reached through paths instead of inodes: no kernel round trip and no
request handler per read. Files opened here follow the same close-to-open rules as a mount's,
and fail with the same errors (OSError subclasses from the one errno mapping:
FileNotFoundError, PermissionError, IsADirectoryError, ...).

One cache per node (cacheview.py): a node's disk cache has one keeper, the process holding its
owner lock (the node's mount, or a client given a cache_dir). A client without a cache of its
own reads the cache of this node's mount of the volume, when one runs: hits straight from its
entry files (immutable, checksummed), misses asked of the mount's block service on loopback,
which fetches each block once, keeps it and answers; so nothing is cached twice and the mount
alone counts and evicts. DataLoader workers forked from a client that keeps a cache read it the
same way, from their parent.

Fork and pickle: a client survives being pickled into DataLoader workers and being used after
fork: the child builds its own connections and threads at its first call (nothing of the
parent's is used, nor closed, there), and freezes what it inherited out of its garbage
collections (gc.freeze, as Python's docs advise for processes forked without exec).
"""

from __future__ import annotations

import atexit
import errno
import gc
import io
import logging
import os
import socket
import stat as statmod
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import Executor, wait
from dataclasses import dataclass, fields
from typing import Any

from cachefs.meta.types import ROOT_INODE, TYPE_DIR, TYPE_FILE, TYPE_SYMLINK, Attr

from . import access
from .access import Caller
from .errors import CachefsError, FSError, errno_of
from .handles import Ctx
from .options import Options

# small files of a read_many batch in flight together (cold DataLoader epochs, 6000 files of
# 110 KB, items/s with 8 workers: width 4 1261-1548, 8 1488-1489, 16 1327-1388; 4 workers alike)
BATCH_FETCHES = 8

SESSION_END_WAIT = 3.0  # seconds close() waits for an engine that is away to end the session

_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _forked() -> None:
    if _CLIENTS:
        # a DataLoader worker: what it inherited stays out of its garbage collections. A full
        # collection walked the parent's whole heap (torch's objects: ~0.1 s each) and wrote
        # to every page of it (copy-on-write faults): measured, 4 workers reading 6000 warm
        # files ran at ~5800 items/s in the epochs where one happened, ~9500 where none did
        gc.freeze()
    for c in list(_CLIENTS):
        c._volume = None  # the parent's: its threads did not follow us, its sockets are not ours
        c._pid = os.getpid()
        c._lock = threading.Lock()
        c._copy = True


os.register_at_fork(after_in_child=_forked)


@atexit.register
def _exiting() -> None:
    """A process that ends without close() still commits what it wrote and ends its session."""
    for c in list(_CLIENTS):
        try:
            c.close()
        except Exception as e:  # noqa: BLE001 - the others must still close
            logging.getLogger("cachefs").warning("closing a client at exit: %s", e)


def _oserror(e: BaseException, path: str) -> OSError:
    """The OSError subclass the errno maps to (FileNotFoundError for ENOENT, ...)."""
    err = errno_of(e)
    return OSError(err, os.strerror(err), path)


@dataclass(frozen=True)
class StatResult:
    """What os.stat returns, for a path of the volume."""

    st_mode: int
    st_ino: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime: float
    st_mtime: float
    st_ctime: float
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int

    @classmethod
    def of(cls, ino: int, a: Attr) -> StatResult:
        return cls(a.st_mode, ino, a.nlink, a.uid, a.gid, a.length, a.atime / 1e9, a.mtime / 1e9,
                   a.ctime / 1e9, a.atime, a.mtime, a.ctime)


class DirEntry:
    """What os.scandir yields, for an entry of a volume's directory."""

    def __init__(self, parent: str, name: str, ino: int, attr: Attr) -> None:
        self.name = name
        self.path = f"{parent.rstrip('/')}/{name}"
        self._ino, self._attr = ino, attr

    def inode(self) -> int:
        return self._ino

    def is_dir(self, follow_symlinks: bool = True) -> bool:
        return self._attr.type == TYPE_DIR

    def is_file(self, follow_symlinks: bool = True) -> bool:
        return self._attr.type == TYPE_FILE

    def is_symlink(self) -> bool:
        return self._attr.type == TYPE_SYMLINK

    def stat(self, follow_symlinks: bool = True) -> StatResult:
        return StatResult.of(self._ino, self._attr)

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class Client:
    """A client of one volume. Keyword arguments are mount options (cachefs/options.py):
    cache_dir, cache_size (bytes), cache_group, writeback, read_only, ...; meta_url defaults
    to $CACHEFS_META_URL. A forked or unpickled copy (a DataLoader worker) makes its own
    connections and session and leaves the volume's chores (the trash, dead sessions) to the
    original and to the node's mounts."""

    def __init__(self, meta_url: str | None = None, **options: Any) -> None:
        url = meta_url or os.environ.get("CACHEFS_META_URL", "")
        if not url:
            raise ValueError("no metadata URL: pass meta_url or set CACHEFS_META_URL")
        known = {f.name for f in fields(Options)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)} (see cachefs/options.py)")
        options.setdefault("cache_dir", "")  # a disk cache only when asked (or the node's mount's)
        if options.get("cache_group"):
            options.setdefault("no_sharing", True)  # a training process reads the group, serves nothing
        self.meta_url = url
        self.options = Options(**options).validate()
        self._volume = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._checked = False  # the bucket answered once: copies in workers need not ask again
        self._copy = False  # forked or unpickled: the original does the volume's chores
        _CLIENTS.add(self)
        self.volume  # noqa: B018 - fail now (unreachable engine, bad URL), not at the first read

    # ---- the volume, made in this process ------------------------------------------------------
    @property
    def volume(self) -> Any:
        if self._volume is None or self._pid != os.getpid():
            with self._lock:
                if self._volume is None or self._pid != os.getpid():
                    self._volume = self._open_volume()
                    self._pid = os.getpid()
        return self._volume

    def _open_volume(self) -> Any:
        from .volume import Volume

        vol = Volume(self.meta_url, self.options, node_cache=True, check_objects=not self._checked)
        self._checked = True
        vol.start({"client": "python", "hostname": socket.gethostname(), "pid": os.getpid()})
        vol.background.start(chores=not self._copy)
        return vol

    def __getstate__(self) -> dict:
        return {"meta_url": self.meta_url, "options": self.options, "checked": self._checked}

    def __setstate__(self, state: dict) -> None:
        self.meta_url, self.options = state["meta_url"], state["options"]
        self._checked = state.get("checked", False)
        self._volume, self._pid, self._lock, self._copy = None, os.getpid(), threading.Lock(), True
        _CLIENTS.add(self)

    def close(self) -> None:
        """Commit what is written, end the session (a pickled or forked copy has its own)."""
        vol, self._volume = self._volume, None
        if vol is not None and self._pid == os.getpid():
            try:
                with vol.meta.retry.capped(SESSION_END_WAIT):
                    vol.background.stop()
                    vol.meta.close_session()
            except CachefsError as e:  # the engine is away: the others clean the session up
                logging.getLogger("cachefs").warning("session not ended: %s", e)
            finally:
                vol.close()  # what is written is committed with the engine's full patience

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- paths ---------------------------------------------------------------------------------
    @staticmethod
    def _parts(path: str) -> list[bytes]:
        """The components of a volume path ('/a/b', 'a/b'); ValueError for one that leaves it."""
        parts: list[bytes] = []
        for p in str(path).split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if not parts:
                    raise ValueError(f"path {path!r} is outside the volume")
                parts.pop()
                continue
            parts.append(p.encode())
        return parts

    def _resolve(self, path: str, parent: bool = False) -> tuple[int, Attr, bytes]:
        """(inode, attributes, last name) of path; with parent, of its directory and the name
        in it (a directory this process may search)."""
        (found,) = self._walk([path], parent)
        return found

    def _walk(self, paths: list[str], parent: bool) -> list[tuple[int, Attr, bytes]]:
        """_resolve of each path. Every directory walked through must be searchable by this
        process (access.py: no kernel checks for us). Entries and attributes this client saw
        within the entry and attribute timeouts are taken from its metadata cache, as a mount's
        kernel takes its dentries (open still revalidates); the directories not in it are
        looked up together, one round trip per depth, not one per directory (a dataset batch's
        paths go through a directory each, whose entries expire every second)."""
        vfs, who = self.volume.vfs, Caller.this_process()
        split = []
        for path in paths:
            parts = self._parts(path)
            if parent and not parts:
                raise ValueError(f"{path!r} names the volume's root")
            split.append((path, tuple(parts[:-1] if parent else parts), parts[-1] if parts else b""))
        # (root may search any directory: its attributes are needed only when asked for)
        root = None
        if who.uid != 0 or any(not end for _, end, _ in split):
            root = vfs.cached_getattr(ROOT_INODE) or self._call("/", vfs.getattr, ROOT_INODE)

        def searchable(path: str, attr: Attr | None) -> None:
            if attr is not None:
                if attr.type != TYPE_DIR:
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
                if who.uid != 0:
                    self._may(path, attr, access.X)

        # first through the metadata cache, path by path; what it does not hold is walked below
        known: dict[tuple[bytes, ...], tuple[int, Attr | None]] = {(): (ROOT_INODE, root)}
        seen: dict[tuple[bytes, ...], str] = {}  # a path through each directory, for its error
        levels: list[list[tuple[bytes, ...]]] = []  # the directories left to look up, by depth
        for path, end, _ in split:
            ino, attr, k = ROOT_INODE, root, 0
            while k < len(end):
                searchable(path, attr)
                hit = vfs.cached_lookup(ino, end[k])
                if hit is None:
                    break
                ino, attr = hit
                k += 1
            known[end[:k]] = (ino, attr)
            seen.setdefault(end[:k], path)
            for j in range(k + 1, len(end) + 1):
                d = end[:j]
                if d not in seen:
                    seen[d] = path
                    while len(levels) < j:
                        levels.append([])
                    levels[j - 1].append(d)
        # the rest together, one round trip per depth
        for level in levels:
            asked = []
            for d in level:
                if d in known:
                    continue
                searchable(seen[d[:-1]], known[d[:-1]][1])
                asked.append((d, known[d[:-1]][0]))
            if asked:
                for (d, _), one in zip(asked, vfs.lookup_many([(ino, d[-1]) for d, ino in asked]), strict=True):
                    if isinstance(one, CachefsError):
                        raise _oserror(one, seen[d])
                    known[d] = one
        out = []
        for path, end, name in split:
            ino, attr = known[end]
            if parent:
                searchable(path, attr)
            out.append((ino, attr, name))
        return out  # type: ignore[return-value]

    def _may(self, path: str, attr: Attr, want: int) -> None:
        """PermissionError unless this process may `want` on a file with these attributes."""
        try:
            access.check(attr, want, Caller.this_process())
        except CachefsError as e:
            raise _oserror(e, path) from None

    def _may_change(self, path: str, dir_ino: int, dir_attr: Attr, name: bytes) -> None:
        """May this process add or remove `name` in the directory (write and search on it, and
        the sticky bit's rule for an existing entry)?"""
        who = Caller.this_process()
        if who.uid == 0:
            return
        try:
            access.check(dir_attr, access.W | access.X, who)
            if dir_attr.mode & statmod.S_ISVTX:
                try:
                    _, victim = self.volume.vfs.lookup(dir_ino, name)
                except FSError as e:
                    if e.errno != errno.ENOENT:
                        raise
                else:
                    access.check_sticky(dir_attr, victim, who)
        except CachefsError as e:
            raise _oserror(e, path) from None

    def _find_or_open(self, path: str, flags: int, ctx: Ctx) -> tuple[int, Attr, int | None]:
        """(inode, attributes, handle) of path, for an open that only reads. A last name in the
        metadata cache is found there (handle None: the caller opens it, as any other); one
        that is not is looked up and opened in one round trip, which is how a dataset's items
        are opened (once an epoch, long after the listing's entries expired)."""
        if not self._parts(path):
            ino, attr, _ = self._resolve(path)
            return ino, attr, None
        vfs = self.volume.vfs
        (parent, _, name), = self._walk([path], parent=True)
        hit = vfs.cached_lookup(parent, name)
        if hit is not None:
            return hit[0], hit[1], None
        ino, attr, fh = self._call(path, vfs.open_at, parent, name, flags, ctx)
        try:
            self._may(path, attr, access.R)
        except BaseException:
            vfs.release(fh)
            raise
        return ino, attr, fh

    def _call(self, path: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except CachefsError as e:
            raise _oserror(e, path) from None

    # ---- the os-like API -------------------------------------------------------------------------
    def stat(self, path: str) -> StatResult:
        ino, attr, _ = self._resolve(path)
        return StatResult.of(ino, attr)

    def exists(self, path: str) -> bool:
        try:
            self._resolve(path)
        except FileNotFoundError:
            return False
        return True

    def isdir(self, path: str) -> bool:
        try:
            return statmod.S_ISDIR(self.stat(path).st_mode)
        except FileNotFoundError:
            return False

    def isfile(self, path: str) -> bool:
        try:
            return statmod.S_ISREG(self.stat(path).st_mode)
        except FileNotFoundError:
            return False

    def scandir(self, path: str = "/") -> list[DirEntry]:
        ino, attr, _ = self._resolve(path)
        if attr.type != TYPE_DIR:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        self._may(path, attr, access.R)
        entries = self._call(path, self.volume.meta.readdir, ino)
        return [DirEntry(path, n.decode(errors="surrogateescape"), i, a) for n, i, a in entries]

    def listdir(self, path: str = "/") -> list[str]:
        return [e.name for e in self.scandir(path)]

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """As os.walk, top-down."""
        entries = self.scandir(top)
        dirs = [e.name for e in entries if e.is_dir()]
        yield top, dirs, [e.name for e in entries if not e.is_dir()]
        for d in dirs:
            yield from self.walk(f"{top.rstrip('/')}/{d}")

    def mkdir(self, path: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        parent, pattr, name = self._resolve(path, parent=True)
        self._may_change(path, parent, pattr, name)
        try:
            self.volume.vfs.mkdir(parent, name, mode & ~_umask(), _ctx())
        except CachefsError as e:
            if not (exist_ok and errno_of(e) == errno.EEXIST and self.isdir(path)):
                raise _oserror(e, path) from None

    def makedirs(self, path: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        parts = self._parts(path)
        for i in range(1, len(parts) + 1):
            sub = "/" + b"/".join(parts[:i]).decode(errors="surrogateescape")
            self.mkdir(sub, mode, exist_ok=exist_ok or i < len(parts))

    def rename(self, src: str, dst: str) -> None:
        """Atomic, and replaces dst (like os.replace)."""
        p1, a1, n1 = self._resolve(src, parent=True)
        p2, a2, n2 = self._resolve(dst, parent=True)
        self._may_change(src, p1, a1, n1)
        self._may_change(dst, p2, a2, n2)
        self._call(src, self.volume.vfs.rename, p1, n1, p2, n2)

    replace = rename

    def remove(self, path: str) -> None:
        parent, pattr, name = self._resolve(path, parent=True)
        self._may_change(path, parent, pattr, name)
        self._call(path, self.volume.vfs.unlink, parent, name)

    unlink = remove

    def rmdir(self, path: str) -> None:
        parent, pattr, name = self._resolve(path, parent=True)
        self._may_change(path, parent, pattr, name)
        self._call(path, self.volume.vfs.rmdir, parent, name)

    def clone(self, src: str, dst: str) -> None:
        """dst as a copy of src that shares its blocks (metadata only)."""
        ino, attr, _ = self._resolve(src)
        self._may(src, attr, access.R)
        parent, pattr, name = self._resolve(dst, parent=True)
        self._may_change(dst, parent, pattr, name)
        self._call(dst, self.volume.meta.clone, ino, parent, name, os.geteuid(), os.getegid())

    def open(self, path: str, mode: str = "r", buffering: int = -1, encoding: str | None = None,
             errors: str | None = None, newline: str | None = None) -> Any:
        """A file object like open()'s: binary modes give io.BufferedReader / Writer / Random,
        text modes an io.TextIOWrapper around them."""
        raw = RawFile(self, path, mode)
        binary = "b" in mode
        if buffering == 0:
            if not binary:
                raise ValueError("can't have unbuffered text I/O")
            return raw
        size = buffering if buffering > 1 else 1 << 20
        if raw.readable() and raw.writable():
            buf: Any = io.BufferedRandom(raw, size)
        elif raw.writable():
            buf = io.BufferedWriter(raw, size)
        else:
            buf = io.BufferedReader(raw, size)
        return buf if binary else io.TextIOWrapper(buf, encoding or "utf-8", errors, newline)

    def read_bytes(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of a file, in one call (blocks fetched in parallel)."""
        with RawFile(self, path, "rb") as f:
            if end is None:
                f.seek(start)
                return f.readall()
            return bytes(f.pread(start, max(0, min(end, f.size) - start)))

    def open_many(self, paths: list[str]) -> list[RawFile]:
        """Files opened for reading, all in one metadata round trip (a DataLoader batch's; each
        is revalidated at its open, as close-to-open wants). A path that cannot be opened
        raises its OSError, the others closed first."""
        vfs, ctx, root = self.volume.vfs, _ctx(), Caller.this_process().uid == 0
        for path in paths:
            if not self._parts(path):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        pairs = [(ino, name) for ino, _, name in self._walk(paths, parent=True)]
        files, failed = [], None
        for path, one in zip(paths, vfs.open_many(pairs, os.O_RDONLY, ctx), strict=True):
            if isinstance(one, CachefsError):
                failed = failed or _oserror(one, path)
                continue
            ino, attr, fh = one
            files.append(RawFile(self, path, "rb", opened=(ino, fh)))
            if failed is None and not root:
                try:
                    self._may(path, attr, access.R)
                except OSError as e:
                    failed = e
        if failed is not None:
            for f in files:
                f.close()
            raise failed
        return files

    def read_many(self, paths: list[str], executor: Executor | None = None) -> list[bytes]:
        """Whole files, opened together (open_many). Small files in memory or the disk cache
        are read in one pass, all their reads started first (vfs.read_cached_many); small ones
        not cached here are fetched together by this thread, BATCH_FETCHES at a time
        (vfs.read_whole_many); with an executor, its threads read the others meanwhile."""
        files = self.open_many(paths)
        try:
            vfs = self.volume.vfs
            here: dict[int, Any] = {i: got for i, got in enumerate(vfs.read_cached_many([f._fh for f in files]))
                                    if got is not None}
            rest = [i for i in range(len(files)) if i not in here]
            if executor is None or not rest:
                here.update((i, files[i].readall()) for i in rest)
                return [bytes(here[i]) for i in range(len(files))]
            # the others in the disk cache (larger files) are read on this thread, their reads
            # started first (advise). Reading cached files on the executor's threads instead cost
            # up to twice the CPU per file in DataLoader workers (measured, 4000 warm files of
            # 110 KB: ~5000 against 2500-5000 items/s with 4 workers, ~4400 against 1700-3600
            # with 8); so did fetching small ones there, in GIL and future hand-offs (~90 futex
            # calls per cold 110 KB file)
            cached = {i: files[i].advise() for i in rest}
            cold = [i for i in rest if not cached[i]]
            fetched = vfs.read_whole_many([files[i]._fh for i in cold], BATCH_FETCHES) if cold else []
            got = {i: one for i, one in zip(cold, fetched, strict=True) if one is not None}
            futures = {i: executor.submit(files[i].readall) for i in cold if i not in got}
            try:
                for i, one in got.items():
                    if isinstance(one, BaseException):
                        raise _oserror(one, files[i].name) if isinstance(one, CachefsError) else one
                here.update(got)
                here.update((i, files[i].readall()) for i in rest if cached[i])
            finally:
                wait(futures.values())  # every read done before its file is closed, even when one failed
            return [bytes(here[i]) if i in here else futures[i].result() for i in range(len(files))]
        finally:
            for f in files:
                f.close()

    def write_bytes(self, path: str, data: bytes) -> None:
        with RawFile(self, path, "wb") as f:
            f.write(data)

    def flush(self, timeout: float | None = None) -> list[tuple[int, int]]:
        """Wait until what this client wrote is in the object store (write-back)."""
        return self.volume.flush(timeout)


def _ctx() -> Ctx:
    return Ctx(os.geteuid(), os.getegid(), os.getpid())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RawFile(io.RawIOBase):
    """An open file of a Client (the vfs's handle), unbuffered; Client.open wraps it."""

    def __init__(self, client: Client, path: str, mode: str, opened: tuple[int, int] | None = None) -> None:
        """opened: the (inode, handle) of a read-only open already made (Client.open_many)."""
        super().__init__()
        self.client, self.name, self.mode = client, path, mode
        m = mode.replace("b", "").replace("t", "")
        plus = "+" in m
        flags = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}.get(m[:1])
        if flags is None or len(m.replace("+", "")) != 1:
            raise ValueError(f"invalid mode: {mode!r}")
        if plus:
            flags = (flags & ~os.O_WRONLY) | os.O_RDWR
        self._flags = flags
        vfs = client.volume.vfs
        self._vfs = vfs
        if opened is not None:
            self.ino, self._fh = opened
            self._pos = 0
            return
        ctx = _ctx()
        fh = None
        try:
            if flags & (os.O_ACCMODE | os.O_CREAT | os.O_TRUNC) == os.O_RDONLY:
                ino, attr, fh = client._find_or_open(path, flags, ctx)
            else:
                ino, attr, _ = client._resolve(path)
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                raise
            parent, pattr, name = client._resolve(path, parent=True)
            client._may_change(path, parent, pattr, name)
            self._fh, ino, _ = client._call(path, vfs.create, parent, name, 0o666 & ~_umask(), flags, ctx)
        else:
            if fh is not None:
                self._fh = fh  # opened with its lookup
            elif attr.type == TYPE_DIR:
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            elif flags & os.O_EXCL:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
            else:
                want = (access.R if self.readable() else 0) | (access.W if self.writable() or flags & os.O_TRUNC else 0)
                client._may(path, attr, want)
                self._fh = client._call(path, vfs.open, ino, flags, ctx)
        self.ino = ino
        self._pos = 0

    # ---- io.RawIOBase --------------------------------------------------------------------------
    def readable(self) -> bool:
        return self._flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)

    def writable(self) -> bool:
        return self._flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        # open has just revalidated the attributes (close-to-open) and our own writes update
        # them: the cached copy saves a round trip per file read whole
        attr = self._vfs.cached_getattr(self.ino)
        return (attr if attr is not None else self._vfs.getattr(self.ino)).length

    def pread(self, offset: int, n: int) -> Any:
        try:
            return self._vfs.read(self._fh, offset, n)
        except CachefsError as e:
            raise _oserror(e, self.name) from None

    def advise(self) -> bool:
        """The rest of the file will be read next: its cache entries are read ahead without
        waiting (vfs.advise); True when it is all cached here."""
        return self.readable() and self._vfs.advise(self._fh, self._pos, self.size - self._pos)

    def readinto(self, b: Any) -> int:
        if not self.readable():
            raise io.UnsupportedOperation("not readable")
        data = self.pread(self._pos, len(b))
        n = len(data)
        memoryview(b).cast("B")[:n] = data
        self._pos += n
        return n

    def readall(self) -> bytes:
        """To the end, in one read where the size is known (its blocks fetched in parallel)."""
        asked = max(1 << 20, self.size - self._pos)
        first = self.pread(self._pos, asked)
        if not first:
            return b""
        self._pos += len(first)
        # a short answer ended at the end the file had then: no read to find it again
        more = self.pread(self._pos, 1 << 20) if len(first) == asked else b""
        if not more:
            return bytes(first)
        out = bytearray(first)
        while more:
            out += more
            self._pos += len(more)
            more = self.pread(self._pos, 1 << 20)
        return bytes(out)

    def write(self, b: Any) -> int:
        if not self.writable():
            raise io.UnsupportedOperation("not writable")
        data = bytes(b)
        try:
            n = self._vfs.write(self._fh, self._pos, data)
        except CachefsError as e:
            raise _oserror(e, self.name) from None
        self._pos = self.size if self._flags & os.O_APPEND else self._pos + n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position", self.name)
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        try:
            self._vfs.setattr(self.ino, length=size)
        except CachefsError as e:
            raise _oserror(e, self.name) from None
        return size

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a cachefs client file has no descriptor")

    def flush(self) -> None:
        if self.closed or not self.writable():
            return
        try:
            self._vfs.flush(self._fh)
        except CachefsError as e:
            raise _oserror(e, self.name) from None

    def fsync(self) -> None:
        try:
            self._vfs.fsync(self._fh)
        except CachefsError as e:
            raise _oserror(e, self.name) from None

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # flushes
            self._vfs.release(self._fh)
        except CachefsError as e:
            raise _oserror(e, self.name) from None


__all__ = ["Client", "DirEntry", "RawFile", "StatResult"]
