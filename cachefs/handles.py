"""What one client knows about the files it has open: per-file state (buffered slices, resolved
chunks, what close-to-open last saw), the open handles, and the table of open files that the
metadata engine asks before it deletes an unlinked inode."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from cachefs.meta.types import Attr

from . import internal
from .chunkstore import SliceWriter
from .slices import Segment


@dataclass
class Ctx:
    """Who asks: the caller's ids (the FUSE request context, or root for the CLI)."""

    uid: int = 0
    gid: int = 0
    pid: int = 0


ROOT_CTX = Ctx()


@dataclass
class Buffered:
    """A slice being written by this client and not committed yet."""

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
    buffered: list[Buffered] = field(default_factory=list)
    active: dict[int, Buffered] = field(default_factory=dict)  # chunk index -> the slice still growing
    segments: dict[int, list[Segment]] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)  # slices added per chunk since open
    seen: tuple[int, int] = (0, 0)  # (mtime, length) as this client last knew them
    no_caps: bool = False  # known to have no security.capability while open here
    xattr_changes: int = 0  # xattr changes made through this client (no_caps is set only if none raced)

    def refresh(self, attr: Attr) -> None:
        """The engine's attributes are the truth now: forget resolved chunks (caller holds lock)."""
        self.length = attr.length
        self.segments.clear()
        self.seen = (attr.mtime, attr.length)


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


class OpenFiles:
    """The files open on this client, with how often each is open. Thread-safe."""

    def __init__(self) -> None:
        self._files: dict[int, FileState] = {}
        self._lock = threading.Lock()
        self.handles: dict[int, Handle] = {}
        self._next_fh = itertools.count(1)

    def is_open(self, ino: int) -> bool:
        with self._lock:
            fs = self._files.get(ino)
            return fs is not None and fs.opens > 0

    def get(self, ino: int) -> FileState | None:
        return self._files.get(ino)

    def opened(self, ino: int, attr: Attr) -> FileState:
        """Count one more open of ino; its state (new with attr's length when it was not open)."""
        with self._lock:
            fs = self._files.get(ino)
            if fs is None:
                fs = self._files[ino] = FileState(ino, attr.length, seen=(attr.mtime, attr.length))
            fs.opens += 1
        return fs

    def closed(self, fs: FileState) -> bool:
        """Count one open less; True when that was the last one (the state is forgotten)."""
        with self._lock:
            fs.opens -= 1
            last = fs.opens == 0
            if last:
                self._files.pop(fs.ino, None)
        return last

    def states(self) -> list[FileState]:
        with self._lock:
            return list(self._files.values())

    def add_handle(self, ino: int, flags: int, **kw: object) -> Handle:
        h = Handle(next(self._next_fh), ino, flags, **kw)
        self.handles[h.fh] = h
        return h
