"""Namespace changes every engine shares: create, link, unlink, rmdir, rename, symlink (a part
of BaseMeta, which runs them as transactions of its engine)."""

from __future__ import annotations

import errno

from cachefs.errors import FSError

from .records import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Tx,
    add_inode,
    align4k,
    check_name,
    free_name,
)
from .types import ROOT_INODE, TYPE_DIR, TYPE_FILE, TYPE_SYMLINK, Attr, now_ns


class Namespace:
    # ---- namespace changes ---------------------------------------------------------------------
    def mknod(
        self, parent: int, name: bytes, typ: int, mode: int, uid: int, gid: int,
        rdev: int = 0, target: bytes | None = None,
    ) -> tuple[int, Attr]:
        check_name(name)
        ino = self.new_inode()

        def fn(tx: Tx) -> tuple[int, Attr]:
            pattr = free_name(tx, parent, name)
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
            add_inode(tx, parent, pattr, name, ino, attr, now)
            return ino, attr

        return self._txn(fn)

    def link(self, ino: int, parent: int, name: bytes) -> Attr:
        check_name(name)

        def fn(tx: Tx) -> Attr:
            attr = tx.get_attr(ino)
            if attr is None or attr.nlink == 0:
                raise FSError(errno.ENOENT)
            if attr.type == TYPE_DIR:
                raise FSError(errno.EPERM)
            pattr = free_name(tx, parent, name)
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
        # a file's data is freed (and uncounted) by delete_file_data, chunk by chunk
        tx.add_usage(0 if attr.type == TYPE_FILE else -align4k(attr.length), -1)
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
        check_name(n2)
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


    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> tuple[int, Attr]:
        if not target or len(target) > 4096:
            raise FSError(errno.ENAMETOOLONG if target else errno.ENOENT)
        return self.mknod(parent, name, TYPE_SYMLINK, 0o777, uid, gid, target=target)

