"""The composition root: opening a formatted volume builds every collaborator (metrics, engine,
object store, caches, durability, chunk store, reader, writer, vfs, background jobs) and hands
each one what it needs through its constructor. The FUSE mount, the CLI and the Python API all
open volumes here."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import secrets
import socket

from cachefs.meta import BaseMeta, open_meta
from cachefs.meta.types import Settings

from .background import Background
from .block import block_key
from .cacheview import CacheView, Notices
from .chunkstore import ChunkStore
from .compact import CompactionQueue
from .diskcache import CacheBusy, DiskCache
from .durability import Durability, WriteThrough
from .errors import ConfigError
from .fileutil import private_dirs
from .group.peers import Peers
from .group.ring import Member
from .group.service import BlockService
from .handles import OpenFiles
from .internal import Control
from .metacache import MetaCache
from .metrics import Metrics
from .objects import ObjectStore, open_store
from .options import Options
from .reader import Reader
from .staging import Staging, StagingBusy, staging_dir
from .vfs import VFS
from .writeback import WriteBack
from .writer import Writer

log = logging.getLogger("cachefs.volume")
GROUP_PORT = 9601  # a cache group member's block service, unless --group-listen says otherwise


def _usable_dir(path: str) -> None:
    """A cache directory that is one (made, private, when missing) and writable, or a
    ConfigError saying what it is instead."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--cache-dir {path} is not a directory")
    try:
        private_dirs(path)
    except OSError as e:
        raise ConfigError(f"--cache-dir {path}: cannot create it ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--cache-dir {path} is not writable")


class Volume:
    def __init__(self, meta_url: str, options: Options | None = None, node_cache: bool = False,
                 check_objects: bool = True) -> None:
        """node_cache: read through this node's mount of the volume, when one runs, instead of a
        disk cache of our own (the Python client: one cache per node). check_objects=False: the
        bucket was already checked by the process this one was forked or unpickled from (a
        DataLoader worker), so the worker's start costs no object-store round trip."""
        self.node_cache = node_cache
        o = self.options = options or Options()
        self.metrics = Metrics()
        self.files = OpenFiles()
        self.metacache = MetaCache(o.attr_cache, o.entry_cache, o.dir_entry_cache)
        self.meta: BaseMeta = open_meta(meta_url, is_open=self.files.is_open, metrics=self.metrics,
                                        retry_timeout=o.meta_retry_timeout, observer=self.metacache.apply)
        self.flushed_for_exit = False  # `cachefs umount` flushed: the exiting process need not
        try:
            self.settings: Settings = self.meta.load()
            self.objects: ObjectStore = open_store(self.settings, self.metrics, o.io_retry_timeout)
            if check_objects:
                self.objects.check()
            self._build(o)
        except BaseException:
            self.meta.close_engine()
            raise

    def _build(self, o: Options) -> None:
        s = self.settings
        self.cache, keeper = self._open_cache(o)
        key = functools.partial(block_key, s.name)
        service = keeper["node_service"] if keeper is not None else None
        if o.cache_group:
            self.peers = self._peers(o)
        elif keeper is not None and isinstance(self.cache, CacheView) and keeper.get("node_adopts") \
                and self.cache.writable:
            # misses fetched here and written into the keeper's cache, the keeper told of them
            self.cache.notices = Notices(service, self._group_secret())
            self.peers = None
        elif keeper is not None:  # misses are asked of this node's keeper of the cache
            self.peers = Peers(self.meta, "", self._group_secret(), "node-reader", self.metrics,
                               fixed=Member(service, service))
        else:
            self.peers = None
        through = WriteThrough(self.objects, key, s.block_size, self.cache, o.cache_large_write)
        # write-back staging; also opened without --writeback when a previous write-back run
        # left blocks there, so that recover() can upload them
        staging = self._open_staging(o)
        self.writeback: WriteBack | None = None
        if staging is not None:
            self.writeback = WriteBack(self.objects, staging, through, key, self.meta.pending_done,
                                       o.max_uploads, self.metrics, defer=o.upload_defer,
                                       fsync_remote=o.fsync_remote)
        o = self.options  # (writeback off when another process holds the staging)
        self.durability: Durability = self.writeback if o.writeback else through
        self.chunks = ChunkStore(self.objects, s.name, s.block_size, self.durability, self.metrics,
                                 compression=s.compression, max_uploads=o.max_uploads,
                                 max_downloads=o.max_downloads,
                                 buffer_bytes=max(o.buffer_size, s.block_size * 4), cache=self.cache,
                                 staging=staging if o.writeback else None,
                                 pending_slice_ids=lambda: {p.id for p in self.meta.pending_slices()},
                                 pending_timeout=o.pending_timeout,
                                 ranged_reads=s.block_format >= 2 and s.compression == "none",
                                 peers=self.peers, pending_writer=self._pending_writer)
        self.compactions = CompactionQueue()
        self.writer = Writer(self.meta, self.chunks, self.durability, self.compactions)
        self.reader = Reader(self.meta, self.chunks, self.compactions, self.writer.commit)
        self.control = Control(self.meta, self.chunks, self.flush)
        self.vfs = VFS(self.meta, self.files, self.reader, self.writer, self.durability, self.control,
                       self.metrics, self.metacache, read_only=o.read_only, open_cache=o.open_cache)
        self.service = None
        if o.cache_group and not o.no_sharing:
            try:
                self.service = BlockService(self.chunks, self.peers.secret, self._listen, self.metrics)
            except OSError as e:
                raise ConfigError(f"--group-listen {self._listen}: {e.strerror}") from None
        elif isinstance(self.cache, DiskCache):
            # this node's other processes read our cache (cacheview.py) and ask this service,
            # on loopback, its port in our session, for what it misses
            self.service = BlockService(self.chunks, self._group_secret(), "127.0.0.1:0", self.metrics)
        self.background = Background(self.meta, self.chunks, self.compactions, heartbeat=o.heartbeat,
                                     session_timeout=o.session_timeout, trash_delay=o.trash_delay)

    def _peers(self, o: Options) -> Peers:
        """The cache group's view of its members (its block service comes after the chunk store)."""
        host, _, port = (o.group_listen or f":{GROUP_PORT}").rpartition(":")
        self._listen = f"{host or '0.0.0.0'}:{port}"
        advertise = host if host and host != "0.0.0.0" else socket.gethostbyname(socket.gethostname())
        timeout = min(self.options.session_timeout, 3 * o.heartbeat + 1)
        return Peers(self.meta, o.cache_group, self._group_secret(), f"{advertise}:{port}", self.metrics,
                     weight=o.group_weight, sharing=not o.no_sharing, refresh=o.heartbeat, member_timeout=timeout,
                     cached_bytes=lambda: self.cache.used if self.cache is not None else 0)

    def _group_secret(self) -> bytes:
        """The volume's group secret (made by format; made here for a volume formatted before
        cache groups existed)."""
        if not self.settings.group_secret:
            self.settings.group_secret = secrets.token_hex(32)
            self.meta.update_settings(self.settings)
            self.settings = self.meta.load()
        return bytes.fromhex(self.settings.group_secret)

    def _open_cache(self, o: Options) -> tuple[DiskCache | CacheView | None, dict | None]:
        """The disk cache, and the session info of the process that keeps it when that is not
        this one (cacheview.py: one cache per node). A process given a cache directory
        keeps it unless another of this node does; a Python client given none reads the cache
        of this node's mount, when one runs."""
        if o.cache_dirs and o.cache_size > 0:
            for d in o.cache_dirs:
                _usable_dir(d)
            try:
                return DiskCache(o.cache_dirs, self.settings.uuid, o.cache_size, o.free_space_ratio,
                                 self.metrics), None
            except CacheBusy:
                keeper = self._node_keeper(o.cache_dirs)
                log.info("another process of this node keeps cache dir %s: reading it, misses asked of %s",
                         o.cache_dir, keeper["node_service"] if keeper else "no one (it has no block service yet)")
                return CacheView(o.cache_dirs, self.settings.uuid, self.metrics), keeper
        if self.node_cache:
            found = self._node_keeper(None)
            if found is not None:
                return CacheView.open(found["node_cache"].split(":"), self.settings.uuid, self.metrics), found
        return None, None

    def _node_keeper(self, dirs: list[str] | None) -> dict | None:
        """The session info of a live process of this node that keeps a disk cache of the
        volume (of these directories, if given) and serves its misses: its block service
        (node_service), directories (node_cache), and whether it takes its readers' entries
        (node_adopts: a keeper in no cache group)."""
        cutoff = self.meta.now() - self.options.session_timeout
        host = socket.gethostname()
        want = [os.path.realpath(d) for d in dirs] if dirs else None
        for sess in self.meta.sessions():
            addr, kept = sess.info.get("node_service"), sess.info.get("node_cache")
            if not addr or not kept or sess.info.get("hostname") != host or sess.heartbeat < cutoff:
                continue
            kept_dirs = kept.split(":")
            if want is not None and [os.path.realpath(d) for d in kept_dirs] != want:
                continue
            log.info("reading through the cache of this node's %s (pid %s)",
                     sess.info.get("mountpoint") or "client", sess.info.get("pid"))
            return sess.info
        return None

    def _pending_writer(self, slice_id: int) -> int | None:
        return next((p.sid for p in self.meta.pending_slices() if p.id == slice_id), None)

    def start(self, info: dict) -> None:
        """Register this client's session (with its cache group membership), upload what a
        killed write-back run left in staging, then join the group: what a mount does before it
        reports ready."""
        published = dict(info, **(self.peers.info() if self.peers is not None else {}))
        if self.service is not None:
            host, _, _ = (self.service.listen).rpartition(":")
            published["node_service"] = f"{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{self.service.port}"
            if isinstance(self.cache, DiskCache):
                published["node_cache"] = ":".join(os.path.abspath(d) for d in self.options.cache_dirs)
                # a member of a cache group wants its readers' misses (its group may hold them)
                published["node_adopts"] = not self.options.cache_group
        self.meta.new_session(published)
        self.recover()
        if self.service is not None:
            self.service.start()
        if self.peers is not None:
            self.peers.start()

    def _open_staging(self, o: Options) -> Staging | None:
        if o.writeback and (o.read_only or not o.cache_dirs or o.cache_size <= 0):
            raise ConfigError("--writeback needs a writable mount and a cache directory (--cache-dir, "
                              "--cache-size > 0)")
        if not o.cache_dirs:
            return None
        path = staging_dir(o.cache_dirs[0], self.settings.uuid)
        if not o.writeback and not (os.path.isdir(path) and any(n != ".lock" for n in os.listdir(path))):
            return None
        try:
            return Staging(path, o.cache_size, o.free_space_ratio, self.metrics)
        except StagingBusy:
            if o.writeback and not self.node_cache:
                raise
            if o.writeback:  # a client forked from (or beside) a write-back client: its staging
                log.warning("the write-back staging in %s is another process's: this one writes "
                            "through", path)
                self.options = dataclasses.replace(o, writeback=False)
            return None  # a live write-back mount owns what is staged there: nothing to recover
        except OSError as e:
            raise ConfigError(f"cannot use staging directory {path}: {e}") from None

    def recover(self, timeout: float | None = None) -> tuple[int, int]:
        """Upload what a killed write-back run left in staging: (slices, blocks). Runs before the
        mount reports ready."""
        if self.writeback is None:
            return 0, 0
        pending = {p.id: p.ino for p in self.meta.pending_slices()}
        done = self.writeback.recover(pending, timeout)
        if done[0]:
            log.info("re-uploaded %d staged block(s) of %d slice(s) left by the last run", done[1], done[0])
        if not self.options.writeback:  # opened for recovery only
            self.writeback.close()
            self.writeback = None
        return done

    def flush(self, timeout: float | None = None, final: bool = False) -> list[tuple[int, int]]:
        """Commit open files' writes and wait until everything written before this call is in the
        object store; returns what is still pending at the deadline as (inode, bytes).
        final: the caller unmounts next and has reported what is left."""
        self.flushed_for_exit = self.flushed_for_exit or final
        self.writer.commit_all(self.files)
        return self.durability.wait(None, timeout)

    def close(self) -> None:
        if self.peers is not None:
            self.peers.stop()
        if self.service is not None:
            self.service.stop()
        try:
            self.writer.commit_all(self.files)
        finally:
            self.chunks.close()
            if self.cache is not None:
                self.cache.close()
            if self.writeback is not None:
                self.writeback.close()
            self.meta.close_engine()
