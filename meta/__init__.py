"""Metadata engines (importable as cachefs.meta): pick one from a URL."""

from __future__ import annotations

from collections.abc import Callable

from cachefs.errors import ConfigError

from .engine import BaseMeta


def open_meta(url: str, is_open: Callable[[int], bool] | None = None) -> BaseMeta:
    """The engine for META_URL: redis://[[user]:password@]host:port/db or sqlite3://PATH.
    is_open: whether this client has an inode open (a mount's open files)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"bad metadata URL {redact_url(url)!r}: expected redis://... or sqlite3://...")
    if scheme in ("redis", "rediss", "unix"):
        from .redis_engine import RedisMeta

        return RedisMeta(url, is_open)
    if scheme in ("sqlite3", "sqlite"):
        from .sqlite_engine import SqliteMeta

        return SqliteMeta(rest.split("?", 1)[0], is_open)
    raise ConfigError(f"unknown metadata URL scheme {scheme!r} (use redis:// or sqlite3://)")


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and status output."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    cred, _, tail = rest.partition("@")
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:****@{tail}"


__all__ = ["BaseMeta", "open_meta", "redact_url"]
