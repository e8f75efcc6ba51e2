"""File contents as metadata, shared by every engine: the slices of a file's chunks, the write
commit, truncate, fallocate, compaction's swap and clone (a part of BaseMeta)."""

from __future__ import annotations

import errno
from collections.abc import Collection

from cachefs.errors import FSError

from .records import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    Tx,
    add_inode,
    align4k,
    check_name,
    deref,
    distinct,
    free_name,
)
from .types import CHUNK_SIZE, TYPE_DIR, TYPE_FILE, Attr, Slice, now_ns


class FileData:
    def read_chunk(self, ino: int, indx: int) -> list[Slice]:
        return self._read(lambda tx: tx.get_slices(ino, indx))

    def file_slices(self, ino: int, length: int) -> list[tuple[int, int]]:
        """Distinct (slice id, size) of a file of `length` bytes: what its blocks are made of."""
        chunks = (length + CHUNK_SIZE - 1) // CHUNK_SIZE
        return distinct(s for indx in range(chunks) for s in self.read_chunk(ino, indx))


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
                    deref(tx, distinct(slices))
        tx.add_usage(align4k(length) - align4k(old), 0)
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
                tx.add_usage(align4k(end) - align4k(attr.length), 0)
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
            tx.add_usage(align4k(newlen) - align4k(attr.length), 0)
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
            deref(tx, [(i, sz) for i, sz in distinct(old) if i not in keep])
            return True

        return self._txn(fn)

    def clone(self, src: int, parent: int, name: bytes, uid: int, gid: int) -> tuple[int, Attr]:
        """A new file with the content of src, sharing its slices (metadata only)."""
        check_name(name)
        ino = self.new_inode()

        def fn(tx: Tx) -> tuple[int, Attr]:
            attr = tx.get_attr(src)
            if attr is None:
                raise FSError(errno.ENOENT)
            if attr.type != TYPE_FILE:
                raise FSError(errno.EISDIR if attr.type == TYPE_DIR else errno.EINVAL)
            pattr = free_name(tx, parent, name)
            now = now_ns()
            new = attr.copy()
            new.uid, new.gid, new.nlink, new.parent = uid, gid, 1, parent
            new.atime = new.mtime = new.ctime = now
            added: dict[int, int] = {}
            for indx in range((attr.length + CHUNK_SIZE - 1) // CHUNK_SIZE):
                slices = tx.get_slices(src, indx)
                if slices:
                    tx.set_slices(ino, indx, slices)
                    for sid, _ in distinct(slices):
                        added[sid] = added.get(sid, 0) + 1
            if added:
                extra = tx.get_refs(list(added))
                for sid, n in added.items():
                    tx.set_ref(sid, extra.get(sid, 0) + n)
            add_inode(tx, parent, pattr, name, ino, new, now)
            return ino, new

        return self._txn(fn)

