"""A do-nothing pyfuse3 file system that keeps everything in memory: the ceiling of any Python
FUSE file system on this machine, measured beside cachefs by bench/compare.py. It waits for
requests as cachefs's mount does (cachefs/fusewait.py), so the ceiling is that of the loop
cachefs runs.

    python bench/memfs.py MOUNTPOINT     (foreground; unmount with fusermount3 -u)
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

import pyfuse3
import trio

from cachefs import fusewait
from cachefs.options import Options


class Node:
    __slots__ = ("mode", "data", "children", "mtime", "nlink", "parent")

    def __init__(self, mode: int, parent: int) -> None:
        self.mode = mode
        self.data = bytearray()
        self.children: dict[bytes, int] = {}
        self.mtime = time.time_ns()
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.parent = parent


class MemFS(pyfuse3.Operations):
    def __init__(self) -> None:
        super().__init__()
        self.nodes = {pyfuse3.ROOT_INODE: Node(stat.S_IFDIR | 0o777, pyfuse3.ROOT_INODE)}
        self.next = pyfuse3.ROOT_INODE + 1
        self.handles: dict[int, int] = {}

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        n = self.nodes[ino]
        e = pyfuse3.EntryAttributes()
        e.st_ino, e.st_mode, e.st_nlink = ino, n.mode, n.nlink
        e.st_size = len(n.data)
        e.st_blksize, e.st_blocks = 4096, (len(n.data) + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = n.mtime
        e.attr_timeout = e.entry_timeout = 1
        return e

    def _get(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def lookup(self, parent_inode, name, ctx):
        ino = self._get(parent_inode).children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(ino)

    async def getattr(self, inode, ctx):
        self._get(inode)
        return self._attr(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        n = self._get(inode)
        if fields.update_size:
            del n.data[attr.st_size :]
            n.data.extend(b"\0" * (attr.st_size - len(n.data)))
        if fields.update_mode:
            n.mode = (n.mode & ~0o7777) | (attr.st_mode & 0o7777)
        return self._attr(inode)

    def _new(self, parent: int, name: bytes, mode: int) -> int:
        p = self._get(parent)
        if name in p.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino, self.next = self.next, self.next + 1
        self.nodes[ino] = Node(mode, parent)
        p.children[name] = ino
        return ino

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._attr(self._new(parent_inode, name, stat.S_IFDIR | (mode & 0o7777)))

    async def create(self, parent_inode, name, mode, flags, ctx):
        ino = self._new(parent_inode, name, stat.S_IFREG | (mode & 0o7777))
        return pyfuse3.FileInfo(fh=ino), self._attr(ino)

    async def open(self, inode, flags, ctx):
        n = self._get(inode)
        if flags & os.O_TRUNC:
            n.data.clear()
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh, off, size):
        return bytes(self.nodes[fh].data[off : off + size])

    async def write(self, fh, off, buf):
        d = self.nodes[fh].data
        if off > len(d):
            d.extend(b"\0" * (off - len(d)))
        d[off : off + len(buf)] = buf
        return len(buf)

    async def release(self, fh):
        return None

    async def flush(self, fh):
        return None

    async def fsync(self, fh, datasync):
        return None

    async def unlink(self, parent_inode, name, ctx):
        ino = self._get(parent_inode).children.pop(name, None)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.nodes.pop(ino, None)

    async def rmdir(self, parent_inode, name, ctx):
        p = self._get(parent_inode)
        ino = p.children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.nodes[ino].children:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del p.children[name]
        del self.nodes[ino]

    async def opendir(self, inode, ctx):
        self._get(inode)
        return inode

    async def readdir(self, fh, start_id, token):
        items = sorted(self.nodes[fh].children.items())
        for i, (name, ino) in enumerate(items[start_id:], start_id):
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), i + 1):
                break

    async def releasedir(self, fh):
        return None

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = 255
        return s


def main() -> None:
    mountpoint = sys.argv[1]
    # pyfuse3.init, waiting for requests in the loop cachefs runs
    fusewait.init(MemFS(), mountpoint, {"fsname=memfs", "allow_other", "default_permissions"}, Options().busy_poll)
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
