"""Opening a formatted volume: the engine, the object store, the chunk store and the vfs that
the FUSE mount, the CLI and the Python API all share."""

from __future__ import annotations

from dataclasses import dataclass, field

from cachefs.meta import BaseMeta, open_meta
from cachefs.meta.types import Settings

from .chunkstore import ChunkStore
from .diskcache import DiskCache
from .objects import ObjectStore, open_store
from .vfs import VFS


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
        self.vfs = VFS(self.meta, self.chunks, read_only=o.read_only)

    def close(self) -> None:
        try:
            self.vfs.flush_all()
        finally:
            self.chunks.close()
            self.meta.close_engine()
