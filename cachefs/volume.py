"""Opening a formatted volume: the engine, the object store, the chunk store and the vfs that
the FUSE mount, the CLI and the Python API all share."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from cachefs.meta import BaseMeta, open_meta
from cachefs.meta.types import Settings

from .chunkstore import ChunkStore
from .diskcache import DiskCache
from .errors import ConfigError
from .objects import ObjectStore, open_store
from .staging import Staging, StagingBusy, staging_dir
from .vfs import VFS
from .writeback import WriteBack

log = logging.getLogger("cachefs.volume")


@dataclass
class VolumeOptions:
    read_only: bool = False
    max_uploads: int = 16
    max_downloads: int = 16
    buffer_size: int = 300 << 20
    cache_dirs: list[str] = field(default_factory=list)  # none: no disk cache
    cache_size: int = 100 << 30
    free_space_ratio: float = 0.1
    cache_large_writes: bool = False
    writeback: bool = False  # stage blocks durably on local disk, upload in the background
    fsync_remote: bool = False  # write-back: fsync waits until the file is in the object store
    pending_timeout: float = 60.0  # how long a read waits for another node's pending blocks
    upload_defer: float = 30.0  # write-back uploads give way to an active writer this long at most


class Volume:
    def __init__(self, meta_url: str, options: VolumeOptions | None = None) -> None:
        self.options = options or VolumeOptions()
        self.meta: BaseMeta = open_meta(meta_url)
        try:
            self.settings: Settings = self.meta.load()
            self.objects: ObjectStore = open_store(self.settings)
            self.objects.check()
        except BaseException:
            self.meta.close_engine()
            raise
        o = self.options
        self.metrics = self.objects.metrics
        self.cache = None
        if o.cache_dirs and o.cache_size > 0:
            self.cache = DiskCache(o.cache_dirs, self.settings.uuid, o.cache_size, o.free_space_ratio,
                                   self.metrics)
        self.chunks = ChunkStore(self.objects, self.settings.name, self.settings.block_size,
                                 self.settings.compression, o.max_uploads, o.max_downloads,
                                 buffer_bytes=max(o.buffer_size, self.settings.block_size * 4),
                                 cache=self.cache, metrics=self.metrics,
                                 cache_large_writes=o.cache_large_writes)
        self.chunks.pending_ids = lambda: {p.id for p in self.meta.pending_slices()}
        self.chunks.pending_timeout = o.pending_timeout
        self.writeback: WriteBack | None = None
        try:
            self._open_staging()
        except BaseException:
            self.chunks.close()
            self.meta.close_engine()
            raise
        self.vfs = VFS(self.meta, self.chunks, read_only=o.read_only, fsync_remote=o.fsync_remote)

    def _open_staging(self) -> None:
        """Write-back staging (also opened without --writeback when a previous write-back run left
        blocks there, so that recover() can upload them)."""
        o = self.options
        if o.writeback and (o.read_only or not o.cache_dirs or o.cache_size <= 0):
            raise ConfigError("--writeback needs a writable mount and a cache directory (--cache-dir, "
                              "--cache-size > 0)")
        if not o.cache_dirs:
            return
        path = staging_dir(o.cache_dirs[0], self.settings.uuid)
        if not o.writeback and not (os.path.isdir(path) and any(n != ".lock" for n in os.listdir(path))):
            return
        try:
            staging = Staging(path, o.cache_size, o.free_space_ratio, self.metrics)
        except StagingBusy:
            if o.writeback:
                raise
            return  # a live write-back mount owns what is staged there: nothing to recover
        except OSError as e:
            raise ConfigError(f"cannot use staging directory {path}: {e}") from None
        self.writeback = WriteBack(self.objects, staging, self.chunks.key, self.meta.pending_done,
                                   o.max_uploads, self.metrics, defer=o.upload_defer)
        self.chunks.writeback = self.writeback

    def recover(self, timeout: float | None = None) -> tuple[int, int]:
        """Upload what a killed write-back run left in staging: (slices, blocks). Runs before the
        mount reports ready."""
        if self.writeback is None:
            return 0, 0
        pending = {p.id: p.ino for p in self.meta.pending_slices()}
        done = self.writeback.recover(pending, timeout)
        if done[0]:
            log.info("re-uploaded %d staged block(s) of %d slice(s) left by the last run", done[1], done[0])
        if not self.options.writeback:
            self.writeback.close()
            self.writeback = self.chunks.writeback = None
        return done

    def flush(self, timeout: float | None = None) -> list[tuple[int, int]]:
        """Commit open files' writes and wait until everything is in the object store; returns
        what is still pending at the deadline as (inode, bytes)."""
        return self.vfs.flush_remote(timeout)

    def close(self) -> None:
        try:
            self.vfs.flush_all()
        finally:
            self.chunks.close()
            self.meta.close_engine()
