"""Object backends: s3, file (embedded default), mem (tests)."""

from __future__ import annotations

from cachefs.errors import ConfigError
from cachefs.meta.types import Settings
from cachefs.metrics import Metrics

from .base import RETRY_TIMEOUT, ObjectInfo, ObjectStore, Transient


def open_store(settings: Settings, metrics: Metrics, retry_timeout: float = RETRY_TIMEOUT) -> ObjectStore:
    """The object store a volume's settings name; its requests are counted in metrics, and a
    request rides through an outage for retry_timeout seconds."""
    if settings.storage == "file":
        from .file import FileStore

        return FileStore(settings.bucket, metrics, retry_timeout)
    if settings.storage == "s3":
        from .s3 import S3Store

        return S3Store(settings.bucket, settings.endpoint, settings.access_key, settings.secret_key,
                       settings.region, metrics=metrics, retry_timeout=retry_timeout)
    if settings.storage == "mem":
        from .mem import MemStore

        return MemStore(metrics, settings.bucket, retry_timeout)
    raise ConfigError(f"unknown storage {settings.storage!r} (use file or s3)")


__all__ = ["ObjectInfo", "ObjectStore", "Transient", "open_store"]
