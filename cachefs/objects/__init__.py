"""Object backends: s3, file (embedded default), mem (tests)."""

from __future__ import annotations

from cachefs.errors import ConfigError
from cachefs.meta.types import Settings
from cachefs.metrics import Metrics

from .base import ObjectStore, Transient


def open_store(settings: Settings, metrics: Metrics) -> ObjectStore:
    """The object store a volume's settings name; its requests are counted in metrics."""
    if settings.storage == "file":
        from .file import FileStore

        return FileStore(settings.bucket, metrics)
    if settings.storage == "s3":
        from .s3 import S3Store

        return S3Store(settings.bucket, settings.endpoint, settings.access_key, settings.secret_key,
                       settings.region, metrics=metrics)
    if settings.storage == "mem":
        from .mem import MemStore

        return MemStore(metrics, settings.bucket)
    raise ConfigError(f"unknown storage {settings.storage!r} (use file or s3)")


__all__ = ["ObjectStore", "Transient", "open_store"]
