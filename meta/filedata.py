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
    check_name,
    deref,
    distinct,
    free_name,
    stored,
)
from .types import CHUNK_SIZE, TYPE_DIR, TYPE_FILE, Attr, Slice, now_ns

MAX_LENGTH = (1 << 63) - 1  # the largest file the kernel (and a signed 64-bit length) allows


class FileData:
    def read_chunk(self, ino: int, indx: int) -> list[Slice]:
        return self._read(lambda tx: tx.get_slices(ino, indx))

    def open_file(self, ino: int) -> tuple[Attr, list[Slice] | None]:
        """An inode's attributes and, for a file, its first chunk's slices (what an open needs
        and a small file's first read): one round trip where the engine allows."""
        attr = self.getattr(ino)
        return attr, self.read_chunk(ino, 0) if attr.type == TYPE_FILE else None

    def lookup_open(self, parent: int, name: bytes) -> tuple[int, Attr, list[Slice] | None]:
        """lookup and open_file of its answer, (inode, attributes, first chunk's slices): what
        an open by path needs, in one round trip where the engine allows."""
        ino, _ = self.lookup(parent, name)
        attr, first = self.open_file(ino)
        return ino, attr, first

    def lookup_open_many(self, pairs: list[tuple[int, bytes]]) -> list[tuple[int, Attr, list[Slice] | None] | FSError]:
        """lookup_open of each (parent, name), in one round trip where the engine allows (a
        batch of a dataset's files); an answer per pair, the FSError in its place for one that
        fails."""
        return [self._one_lookup_open(parent, name) for parent, name in pairs]

    def _one_lookup_open(self, parent: int, name: bytes) -> tuple[int, Attr, list[Slice] | None] | FSError:
        try:
            return self.lookup_open(parent, name)
        except FSError as e:
            return e

    def chunk_indexes(self, ino: int) -> list[int]:
        """The chunks of ino that hold slice records, ascending."""
        return self._read(lambda tx: tx.chunk_indexes(ino))

    def file_slices(self, ino: int) -> list[tuple[int, int]]:
        """Distinct (slice id, size) of a file: what its blocks are made of (a read per chunk
        that holds data, however long the file is)."""
        return distinct(s for indx in self.chunk_indexes(ino) for s in self.read_chunk(ino, indx))


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
        if length > MAX_LENGTH:
            raise FSError(errno.EFBIG)
        old = attr.length
        if length < old:
            indx, pos = divmod(length, CHUNK_SIZE)
            freed = 0
            for i in tx.chunk_indexes(ino):  # only chunks that hold data: a sparse file is cheap
                if i == indx and pos:
                    end = min(CHUNK_SIZE, old - indx * CHUNK_SIZE)
                    tx.append_slices(ino, indx, [Slice(pos, 0, 0, 0, end - pos)])
                elif i >= indx:
                    slices = tx.get_slices(ino, i)
                    if slices:
                        tx.set_slices(ino, i, [])
                        freed += stored(slices)
                        deref(tx, distinct(slices))
            tx.add_usage(-freed, 0)
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
            if end > MAX_LENGTH:
                raise FSError(errno.EFBIG)
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                # zeros over the chunks that hold data; the others read as zeros already
                zend = min(end, attr.length) if mode & FALLOC_FL_KEEP_SIZE else end
                for indx in tx.chunk_indexes(ino):
                    a, b = max(offset, indx * CHUNK_SIZE), min(zend, (indx + 1) * CHUNK_SIZE)
                    if a < b:
                        tx.append_slices(ino, indx, [Slice(a - indx * CHUNK_SIZE, 0, 0, 0, b - a)])
            if end > attr.length and not mode & FALLOC_FL_KEEP_SIZE:
                attr.length = end  # nothing is allocated: the object store has no space to reserve
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
            if newlen > MAX_LENGTH:
                raise FSError(errno.EFBIG)
            self.committing(tx, [s.id for _, s in slices if s.id])
            for indx, group in by_chunk.items():
                tx.append_slices(ino, indx, group)
            for _, s in slices:
                if s.id in pending:
                    tx.add_pending(s.id, self.sid, ino, s.size)
            tx.add_usage(stored(s for _, s in slices), 0)
            attr.length = newlen
            attr.mtime = attr.ctime = mtime or now_ns()
            tx.set_attr(ino, attr)
            return attr

        attr = self._txn(fn)
        self.resolved([s.id for _, s in slices])
        return attr

    def compact_chunk(self, ino: int, indx: int, old: list[Slice], new: list[Slice]) -> bool:
        """Replace the leading records `old` of a chunk by `new`; False when the chunk changed
        underneath in a way that makes the replacement wrong (the caller drops `new`)."""

        def fn(tx: Tx) -> bool:
            cur = tx.get_slices(ino, indx)
            if cur[: len(old)] != old:
                return False
            self.committing(tx, [s.id for s in new if s.id])
            rest = cur[len(old) :]
            tx.set_slices(ino, indx, new + rest)
            tx.add_usage(stored(new) - stored(old), 0)
            keep = {s.id for s in new + rest}
            deref(tx, [(i, sz) for i, sz in distinct(old) if i not in keep])
            return True

        done = self._txn(fn)
        if done:
            self.resolved([s.id for s in new])
        return done

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
            space = 0
            for indx in tx.chunk_indexes(src):
                slices = tx.get_slices(src, indx)
                if slices:
                    tx.set_slices(ino, indx, slices)
                    space += stored(slices)
                    for sid, _ in distinct(slices):
                        added[sid] = added.get(sid, 0) + 1
            tx.add_usage(space, 0)
            if added:
                extra = tx.get_refs(list(added))
                for sid, n in added.items():
                    tx.set_ref(sid, extra.get(sid, 0) + n)
            add_inode(tx, parent, pattr, name, ino, new, now)
            return ino, new

        return self._txn(fn)

