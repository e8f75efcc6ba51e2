"""Metadata engines (importable as cachefs.meta): pick one from a URL."""

from __future__ import annotations

from collections.abc import Callable

from cachefs.errors import ConfigError
from cachefs.metrics import Metrics

from .engine import BaseMeta, Changes


def open_meta(url: str, is_open: Callable[[int], bool] | None = None, metrics: Metrics | None = None,
              retry_timeout: float = 60.0, observer: Callable[[Changes], None] | None = None) -> BaseMeta:
    """The engine for META_URL: redis://[[user]:password@]host:port/db (and the Sentinel,
    Cluster and TLS forms of meta/redis_url.py) or sqlite3://PATH. is_open: whether this client
    has an inode open (a mount's open files); retry_timeout: how long an operation rides through
    an outage of the engine before it fails (meta/retry.py); observer: told what each committed
    transaction changed (a client's metadata cache)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"bad metadata URL {redact_url(url)!r}: expected redis://... or sqlite3://...")
    if scheme in ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"):
        from .redis_engine import RedisMeta

        return RedisMeta(url, is_open, metrics, retry_timeout, observer)
    if scheme in ("sqlite3", "sqlite"):
        from .sqlite_engine import SqliteMeta

        return SqliteMeta(rest.split("?", 1)[0], is_open, metrics, retry_timeout, observer)
    raise ConfigError(f"unknown metadata URL scheme {scheme!r} (use redis:// or sqlite3://)")


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and status output."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    cred, _, tail = rest.partition("@")
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:****@{tail}"


__all__ = ["BaseMeta", "Changes", "open_meta", "redact_url"]
