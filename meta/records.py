"""What an engine supplies inside one atomic transaction (`Tx`, a small set of record
operations) and the helpers the shared POSIX logic writes over it."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import Protocol

from cachefs.errors import FSError

from .types import TYPE_DIR, TYPE_FILE, Attr, Slice

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
    # the chunks of ino that hold slice records, ascending: what truncate, deletion, fallocate,
    # clone and fsck visit (a sparse file's work follows its data, not its length)
    def chunk_indexes(self, ino: int) -> list[int]: ...
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
    def add_used(self, sid: int, start: int, slice_id: int) -> None: ...  # committed, of range start



def align4k(n: int) -> int:
    return (n + 4095) & ~4095


def stored(slices: Iterable[Slice]) -> int:
    """The space a chunk's records take (what statfs counts: allocated bytes, not lengths)."""
    return sum(align4k(s.len) for s in slices if s.id)


def check_name(name: bytes) -> None:
    if len(name) > MAX_NAME:
        raise FSError(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise FSError(errno.EINVAL)



def free_name(tx: Tx, parent: int, name: bytes) -> Attr:
    """The attributes of a live directory `parent` in which `name` does not exist yet."""
    pattr = tx.get_attr(parent)
    if pattr is None or pattr.nlink == 0:
        raise FSError(errno.ENOENT)
    if pattr.type != TYPE_DIR:
        raise FSError(errno.ENOTDIR)
    if tx.get_entry(parent, name) is not None:
        raise FSError(errno.EEXIST)
    return pattr


def add_inode(tx: Tx, parent: int, pattr: Attr, name: bytes, ino: int, attr: Attr, now: int) -> None:
    """Store a new inode under `name` in `parent` (whose attributes the caller checked)."""
    tx.set_attr(ino, attr)
    tx.set_entry(parent, name, ino, attr.type)
    pattr.mtime = pattr.ctime = now
    tx.set_attr(parent, pattr)
    # a file's space is its data (counted as slices are committed), another inode's its length
    tx.add_usage(0 if attr.type == TYPE_FILE else align4k(attr.length), 1)


def deref(tx: Tx, slices: list[tuple[int, int]]) -> None:
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


def distinct(slices: Iterable[Slice]) -> list[tuple[int, int]]:
    seen: dict[int, int] = {}
    for s in slices:
        if s.id:
            seen.setdefault(s.id, s.size)
    return list(seen.items())
