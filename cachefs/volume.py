"""The composition root: opening a formatted volume builds every collaborator (metrics, engine,
object store, caches, durability, chunk store, reader, writer, vfs, background jobs) and hands
each one what it needs through its constructor. The FUSE mount, the CLI and the Python API all
open volumes here."""

from __future__ import annotations

import functools
import logging
import os

from cachefs.meta import BaseMeta, open_meta
from cachefs.meta.types import Settings

from .background import Background
from .block import block_key
from .chunkstore import ChunkStore
from .compact import CompactionQueue
from .diskcache import DiskCache
from .durability import Durability, WriteThrough
from .errors import ConfigError
from .fileutil import private_dirs
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
    def __init__(self, meta_url: str, options: Options | None = None) -> None:
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
            self.objects.check()
            self._build(o)
        except BaseException:
            self.meta.close_engine()
            raise

    def _build(self, o: Options) -> None:
        s = self.settings
        self.cache = None
        for d in o.cache_dirs:
            _usable_dir(d)
        if o.cache_dirs and o.cache_size > 0:
            self.cache = DiskCache(o.cache_dirs, s.uuid, o.cache_size, o.free_space_ratio, self.metrics)
        key = functools.partial(block_key, s.name)
        through = WriteThrough(self.objects, key, s.block_size, self.cache, o.cache_large_write)
        # write-back staging; also opened without --writeback when a previous write-back run
        # left blocks there, so that recover() can upload them
        staging = self._open_staging(o)
        self.writeback: WriteBack | None = None
        if staging is not None:
            self.writeback = WriteBack(self.objects, staging, through, key, self.meta.pending_done,
                                       o.max_uploads, self.metrics, defer=o.upload_defer,
                                       fsync_remote=o.fsync_remote)
        self.durability: Durability = self.writeback if o.writeback else through
        self.chunks = ChunkStore(self.objects, s.name, s.block_size, self.durability, self.metrics,
                                 compression=s.compression, max_uploads=o.max_uploads,
                                 max_downloads=o.max_downloads,
                                 buffer_bytes=max(o.buffer_size, s.block_size * 4), cache=self.cache,
                                 staging=staging if o.writeback else None,
                                 pending_slice_ids=lambda: {p.id for p in self.meta.pending_slices()},
                                 pending_timeout=o.pending_timeout,
                                 ranged_reads=s.block_format >= 2 and s.compression == "none")
        self.compactions = CompactionQueue()
        self.writer = Writer(self.meta, self.chunks, self.durability, self.compactions)
        self.reader = Reader(self.meta, self.chunks, self.compactions, self.writer.commit)
        self.control = Control(self.meta, self.chunks, self.flush)
        self.vfs = VFS(self.meta, self.files, self.reader, self.writer, self.durability, self.control,
                       self.metrics, self.metacache, read_only=o.read_only, open_cache=o.open_cache)
        self.background = Background(self.meta, self.chunks, self.compactions, heartbeat=o.heartbeat,
                                     session_timeout=o.session_timeout, trash_delay=o.trash_delay)

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
            if o.writeback:
                raise
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
        try:
            self.writer.commit_all(self.files)
        finally:
            self.chunks.close()
            if self.writeback is not None:
                self.writeback.close()
            self.meta.close_engine()
