"""The one exception hierarchy of cachefs and its mapping to errno.

Every layer raises these; the FUSE shell turns them into errno with `errno_of`, the CLI prints
`str(exc)` as a one-line message. Anything else escaping is a bug and maps to EIO.
"""

from __future__ import annotations

import errno as _errno


class CachefsError(Exception):
    """Base of every error cachefs raises on purpose."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, err: int | None = None) -> None:
        super().__init__(message or _errno.errorcode.get(err or self.errno, "error"))
        if err is not None:
            self.errno = err


class FSError(CachefsError):
    """A POSIX failure of one file-system operation (carries the errno to return)."""

    def __init__(self, err: int, message: str = "") -> None:
        super().__init__(message or _errno.errorcode.get(err, str(err)), err=err)


class ConfigError(CachefsError):
    """Bad input from the user: a URL, a flag, an unformatted volume."""

    errno = _errno.EINVAL


class MetaError(CachefsError):
    """The metadata engine cannot be reached or refused the operation."""

    errno = _errno.EIO


class ObjectError(CachefsError):
    """The object store failed permanently for one request."""

    errno = _errno.EIO


class ObjectUnavailable(ObjectError):
    """The object store kept failing in ways worth retrying (down, timing out, throttling)."""


class ObjectNotFound(ObjectError):
    """An object that should exist is missing."""


class ChecksumError(CachefsError):
    """A stored block does not match its checksum: EIO, never wrong bytes."""

    errno = _errno.EIO


def errno_of(exc: BaseException) -> int:
    """The errno a failed operation reports; the only place this mapping lives."""
    if isinstance(exc, CachefsError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return _errno.EIO
