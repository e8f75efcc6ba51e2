"""The FUSE shell: pyfuse3 handlers that answer in the event loop what memory can answer without
blocking (fresh cached attributes and entries, a release or flush with nothing to do), send every
other call to a bounded pool of worker threads, and map our exceptions to errno. No file-system
logic lives here."""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from cachefs.meta.records import RENAME_EXCHANGE
from cachefs.meta.types import TYPE_DIR, Attr

from .diskcache import PendingRead
from .errors import CachefsError, ChecksumError, errno_of
from .internal import is_internal
from .kernelcache import DirectoryPlaces, KernelAttrs
from .loopredis import LoopOpen
from .metrics import Metrics
from .threadhop import ThreadHop
from .uring import Ring
from .vfs import VFS, Ctx

log = logging.getLogger("cachefs.fuse")


class Operations(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, vfs: VFS, metrics: Metrics, threads: int = 32, attr_timeout: float = 1.0,
                 entry_timeout: float = 1.0, dir_entry_timeout: float = 1.0,
                 on_init: Callable[[], None] | None = None, loop_open: LoopOpen | None = None,
                 ring: Ring | None = None) -> None:
        """on_init: work that must wait until the kernel has finished its INIT handshake (run
        once, at the first request). loop_open: the open's metadata read sent from the event
        loop (cachefs/loopredis.py), where the engine allows it. ring: disk-cache reads the loop
        waits for without a thread (cachefs/uring.py), where the kernel allows it."""
        super().__init__()
        self.vfs = vfs
        self.hop = ThreadHop(threads)
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.dir_entry_timeout = dir_entry_timeout
        self.latency = metrics.fuse_latency
        self.read_bytes = metrics.fuse_bytes.labels("read")
        self.write_bytes = metrics.fuse_bytes.labels("write")
        self.fast = metrics.fuse_in_memory
        self._children: dict[tuple[Any, str], Any] = {}  # (metric, op) -> its labelled child
        self.loop_open = loop_open
        self.loop_opens = {r: metrics.fuse_loop_redis.labels("open", r) for r in ("answered", "fallback")}
        self.ring = ring
        self.loop_disk = {r: metrics.fuse_loop_disk.labels(r) for r in ("answered", "fallback")}
        self._internal_fhs: set[int] = set()
        self._on_init = on_init
        self.dirs = DirectoryPlaces()
        self.attrs = KernelAttrs()

    async def _run(self, op: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._on_init is not None:
            hook, self._on_init = self._on_init, None
            hook()
        start = time.perf_counter()
        try:
            return await self.hop.run(functools.partial(fn, *args, **kwargs))
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            err = errno_of(e)
            if err == errno.EIO:
                log.error("%s failed: %s", op, e, exc_info=not hasattr(e, "errno"))
            raise pyfuse3.FUSEError(err) from None
        finally:
            self._took(op, start)

    def waiting(self) -> bool:
        """Whether a request is waiting for something other than the FUSE device (a thread, the
        io_uring, Redis): its answer needs the event loop, which must not busy-poll for the next
        request meanwhile (fusewait.py)."""
        return bool(self.hop.running or (self.ring is not None and self.ring.inflight())
                    or (self.loop_open is not None and self.loop_open.inflight()))

    def _took(self, op: str, start: float) -> None:
        self._child(self.latency, op).observe(time.perf_counter() - start)

    def _child(self, metric: Any, op: str) -> Any:
        """metric.labels(op), looked up once: labels() costs several times the update, and the
        shell updates a metric on every request."""
        child = self._children.get((metric, op))
        if child is None:
            child = self._children[(metric, op)] = metric.labels(op)
        return child

    def close(self) -> None:
        self.hop.close()
        if self.loop_open is not None:
            self.loop_open.close()
        if self.ring is not None:
            self.ring.close()

    def _entry(self, ino: int, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = self.dir_entry_timeout if attr.type == 2 else self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = attr.st_mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.length
        e.st_blksize = 4096
        e.st_blocks = (attr.length + 511) // 512
        e.st_atime_ns = attr.atime
        e.st_mtime_ns = attr.mtime
        e.st_ctime_ns = attr.ctime
        self.attrs.told(ino, attr.mtime, attr.length)
        return e

    @staticmethod
    def _ctx(ctx: pyfuse3.RequestContext) -> Ctx:
        return Ctx(ctx.uid, ctx.gid, ctx.pid)

    def _answered(self, op: str) -> None:
        """A request answered from memory, in the event loop."""
        self._child(self.fast, op).inc()

    async def lookup(self, parent_inode, name, ctx):
        hit = self.vfs.cached_lookup(parent_inode, name)
        if hit is not None:
            self._answered("lookup")
            return await self._entry_at(parent_inode, name, *hit)
        try:
            ino, attr = await self._run("lookup", self.vfs.lookup, parent_inode, name)
        except pyfuse3.FUSEError as e:
            if e.errno != errno.ENOENT:
                raise
            # a negative entry the kernel keeps for the entry timeout (a create's lookup before
            # it, a search path's misses): no second request for the same missing name
            miss = pyfuse3.EntryAttributes()
            miss.st_ino = 0
            miss.entry_timeout = self.entry_timeout
            return miss
        return await self._entry_at(parent_inode, name, ino, attr)

    async def _entry_at(self, parent: int, name: bytes, ino: int, attr: Attr) -> pyfuse3.EntryAttributes:
        """The reply naming ino at parent/name; a directory another node moved here is dropped
        from the kernel's cache under its old name first (kernelcache.py)."""
        if attr.type == TYPE_DIR:
            stale = self.dirs.elsewhere(ino, parent, name)
            if stale:
                await self.hop.run(functools.partial(self.dirs.drop, ino, stale))
            if self.dirs.dropping(ino, parent, name):
                raise pyfuse3.FUSEError(errno.ENOENT)
            self.dirs.answered(ino, parent, name)
        return self._entry(ino, attr)

    async def getattr(self, inode, ctx):
        attr = self.vfs.cached_getattr(inode)
        if attr is not None:
            self._answered("getattr")
            return self._entry(inode, attr)
        return self._entry(inode, await self._run("getattr", self.vfs.getattr, inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        kw: dict[str, Any] = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime"] = attr.st_mtime_ns
        if fields.update_size:
            kw["length"] = attr.st_size
        new = await self._run("setattr", self.vfs.setattr, inode, self._ctx(ctx), **kw)
        return self._entry(inode, new)

    async def readlink(self, inode, ctx):
        return await self._run("readlink", self.vfs.readlink, inode)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        ino, attr = await self._run("mknod", self.vfs.mknod, parent_inode, name, mode, self._ctx(ctx), rdev)
        return self._entry(ino, attr)

    async def mkdir(self, parent_inode, name, mode, ctx):
        ino, attr = await self._run("mkdir", self.vfs.mkdir, parent_inode, name, mode, self._ctx(ctx))
        self.dirs.answered(ino, parent_inode, name)
        return self._entry(ino, attr)

    async def unlink(self, parent_inode, name, ctx):
        await self._run("unlink", self.vfs.unlink, parent_inode, name)

    async def rmdir(self, parent_inode, name, ctx):
        await self._run("rmdir", self.vfs.rmdir, parent_inode, name)
        self.dirs.removed(parent_inode, name)

    async def symlink(self, parent_inode, name, target, ctx):
        ino, attr = await self._run("symlink", self.vfs.symlink, parent_inode, name, target, self._ctx(ctx))
        return self._entry(ino, attr)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._run("rename", self.vfs.rename, parent_inode_old, name_old, parent_inode_new, name_new,
                        flags)
        self.dirs.moved(parent_inode_old, name_old, parent_inode_new, name_new, bool(flags & RENAME_EXCHANGE))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        attr = await self._run("link", self.vfs.link, inode, new_parent_inode, new_name)
        return self._entry(inode, attr)

    async def open(self, inode, flags, ctx):
        fh = await self._open_in_loop(inode, flags)
        if fh is None:
            fh = await self._run("open", self._open, inode, flags, self._ctx(ctx))
        if is_internal(inode):
            self._internal_fhs.add(fh)  # their bytes are not file data: kept out of the metrics
        return pyfuse3.FileInfo(fh=fh, direct_io=is_internal(inode), keep_cache=self.vfs.keep_cache(fh))

    async def _open_in_loop(self, inode: int, flags: int) -> int | None:
        """A read-only open done without a worker thread: from --open-cache's memory, or with
        its close-to-open read sent by the loop itself (loop_open). None: the thread path's."""
        fh = self.vfs.open_in_memory(inode, flags)
        if fh is not None:
            self._answered("open")
        elif self.loop_open is not None and self.vfs.loop_openable(inode, flags):
            start = time.perf_counter()
            try:
                fetched = await self.loop_open.fetch(inode)
                fh = None if fetched is None else self.vfs.open_in_memory(inode, flags, fetched)
            except CachefsError as e:
                raise pyfuse3.FUSEError(errno_of(e)) from None
            except Exception as e:  # the thread path meets it again and reports it as usual
                log.warning("open of inode %d in the event loop failed: %r", inode, e)
                fh = None
            self.loop_opens["fallback" if fh is None else "answered"].inc()
            if fh is None:
                return None
            self._took("open", start)
        else:
            return None
        attr = self.vfs.cached_getattr(inode)
        if attr is not None and not self.attrs.current(inode, attr.mtime, attr.length) \
                or self.vfs.preloaded(fh) is False:
            await self._run("open", self._after_open, inode, fh)  # what needs a thread after all
        return fh

    def _open(self, inode: int, flags: int, ctx: Ctx) -> int:
        fh = self.vfs.open(inode, flags, ctx)
        self._after_open(inode, fh)
        return fh

    def _after_open(self, inode: int, fh: int) -> None:
        """The kernel's attributes dropped if another node changed the file since it got them
        (KernelAttrs), and a small file's bytes brought into memory in the open's hop
        (VFS.preload): the read that follows every such open is then answered in the event loop."""
        try:
            attr = self.vfs.cached_getattr(inode)  # as the open's close-to-open check read them
            if attr is not None:
                self.attrs.opened(inode, attr.mtime, attr.length)
            self.vfs.preload(fh)
        except BaseException:
            self.vfs.release(fh)  # the open fails: its handle must not stay counted
            raise

    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, ino, attr = await self._run("create", self.vfs.create, parent_inode, name, mode, flags,
                                        self._ctx(ctx))
        return pyfuse3.FileInfo(fh=fh), self._entry(ino, attr)

    async def read(self, fh, off, size):
        data = self.vfs.read_in_memory(fh, off, size, pending=self.ring is not None and not self.ring.busy())
        if isinstance(data, PendingRead):
            data = await self._read_pending(data)
        elif data is not None:
            self._answered("read")
        if data is not None:
            self.read_bytes.inc(len(data))
            return data
        data = await self._run("read", self.vfs.read, fh, off, size)
        if fh not in self._internal_fhs:
            self.read_bytes.inc(len(data))
        return data

    async def _read_pending(self, p: PendingRead) -> bytes | None:
        """A disk-cache read the loop waits for on the io_uring; None when the thread path must
        read it after all (it then meets a damaged entry again, drops it and fetches a good copy)."""
        assert self.ring is not None
        start = time.perf_counter()
        try:
            data = p.finish(await self.ring.read(p.fd, p.size, p.pos))
        except (OSError, ChecksumError) as e:
            log.debug("disk-cache read in the event loop failed: %r", e)
            self.loop_disk["fallback"].inc()
            return None
        finally:
            p.drop()
        self.loop_disk["answered"].inc()
        self._took("read", start)
        return data

    async def write(self, fh, off, buf):
        n = await self._run("write", self.vfs.write, fh, off, buf)
        self.write_bytes.inc(n)
        return n

    async def flush(self, fh):
        if self.vfs.nothing_to_flush(fh):
            self._answered("flush")
            return
        await self._run("flush", self.vfs.flush, fh)

    async def release(self, fh):
        self._internal_fhs.discard(fh)
        if self.vfs.release_in_memory(fh):
            self._answered("release")
            return
        await self._run("release", self.vfs.release, fh)

    async def fsync(self, fh, datasync):
        await self._run("fsync", self.vfs.fsync, fh, datasync)

    async def opendir(self, inode, ctx):
        return await self._run("opendir", self.vfs.opendir, inode)

    async def readdir(self, fh, start_id, token):
        entries = await self._run("readdir", self.vfs.readdir, fh, start_id)
        parent = self.vfs.handle_ino(fh)
        for i, (name, ino, attr) in enumerate(entries):
            if attr.type == TYPE_DIR and name not in (b".", b".."):
                stale = self.dirs.elsewhere(ino, parent, name)  # the kernel may take the entry (readdirplus)
                if stale:
                    # dropped before the reply, as a lookup does: a later lookup under the new
                    # name must not meet the old alias (the kernel would answer it ESTALE)
                    await self.hop.run(functools.partial(self.dirs.drop, ino, stale))
                self.dirs.answered(ino, parent, name)
            if not pyfuse3.readdir_reply(token, name, self._entry(ino, attr), start_id + i + 1):
                break

    async def releasedir(self, fh):
        self.vfs.releasedir(fh)

    async def fsyncdir(self, fh, datasync):
        return None

    async def statfs(self, ctx):
        total, used, itotal, iused = await self._run("statfs", self.vfs.statfs)
        s = pyfuse3.StatvfsData()
        s.f_bsize = 4096
        s.f_frsize = 4096
        s.f_blocks = total // 4096
        s.f_bfree = s.f_bavail = max(0, total - used) // 4096
        s.f_files = itotal
        s.f_ffree = s.f_favail = max(0, itotal - iused)
        s.f_namemax = 255
        return s

    async def setxattr(self, inode, name, value, ctx):
        await self._run("setxattr", self.vfs.setxattr, inode, name, value)

    async def getxattr(self, inode, name, ctx):
        if self.vfs.known_without(inode, name):  # asked before every write: no thread for it
            self._answered("getxattr")
            raise pyfuse3.FUSEError(errno.ENODATA)
        return await self._run("getxattr", self.vfs.getxattr, inode, name)

    async def listxattr(self, inode, ctx):
        return await self._run("listxattr", self.vfs.listxattr, inode)

    async def removexattr(self, inode, name, ctx):
        await self._run("removexattr", self.vfs.removexattr, inode, name)

    async def access(self, inode, mode, ctx):
        # default_permissions makes the kernel check modes; existence is all that is left
        await self._run("access", self.vfs.getattr, inode)
        return True

    async def forget(self, inode_list):
        return None


def fuse_options(fsname: str, read_only: bool, extra: list[str]) -> set[str]:
    opts = {f"fsname={fsname}", "subtype=cachefs", "allow_other", "default_permissions"}
    if read_only:
        opts.add("ro")
    for item in extra:
        for o in item.split(","):
            if o:
                opts.add(o)
    return opts


async def serve(ops: Operations, on_stop: Callable[[], None] | None = None) -> None:
    """Run the FUSE loop until the file system is unmounted or we are told to stop."""
    import signal

    async with trio.open_nursery() as nursery:

        async def signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as it:
                async for _ in it:
                    log.info("signal received: unmounting")
                    pyfuse3.terminate()
                    return

        nursery.start_soon(signals)
        if ops.ring is not None:
            nursery.start_soon(ops.ring.reap)
        await pyfuse3.main(min_tasks=4, max_tasks=64)
        nursery.cancel_scope.cancel()
    if on_stop is not None:
        on_stop()

