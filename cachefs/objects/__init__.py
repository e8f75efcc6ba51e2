"""Object backends: s3, file (embedded default), mem (tests)."""

from __future__ import annotations

from cachefs.errors import ConfigError
from cachefs.meta.types import Settings

from .base import ObjectStore, Transient

_MEM: dict[str, ObjectStore] = {}


def open_store(settings: Settings) -> ObjectStore:
    """The object store a volume's settings name."""
    if settings.storage == "file":
        from .file import FileStore

        return FileStore(settings.bucket)
    if settings.storage == "s3":
        from .s3 import S3Store

        return S3Store(settings.bucket, settings.endpoint, settings.access_key, settings.secret_key,
                       settings.region)
    if settings.storage == "mem":
        from .mem import MemStore

        return _MEM.setdefault(settings.bucket, MemStore())
    raise ConfigError(f"unknown storage {settings.storage!r} (use file or s3)")


__all__ = ["ObjectStore", "Transient", "open_store"]
