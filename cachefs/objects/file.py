"""A local directory as object store: the embedded default."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from cachefs.errors import ConfigError, ObjectError, ObjectNotFound
from cachefs.fileutil import private_dirs, write_atomic
from cachefs.metrics import Metrics

from .base import RETRY_TIMEOUT, ObjectInfo, ObjectStore, Transient


class FileStore(ObjectStore):
    kind = "file"

    def __init__(self, root: str, metrics: Metrics, retry_timeout: float = RETRY_TIMEOUT) -> None:
        super().__init__(metrics, retry_timeout)
        if not root:
            raise ConfigError("file storage needs --bucket DIRECTORY")
        self.root = os.path.abspath(root)

    def __str__(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ObjectError(f"bad object key {key!r}")
        return os.path.join(self.root, key)

    def _put(self, key: str, data: bytes) -> None:
        try:
            write_atomic(self._path(key), data)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise ObjectError(f"{self}: cannot write {key}: {e.strerror}") from None
            raise Transient(str(e)) from None

    def _get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(f"{self}: no object {key}") from None
        except OSError as e:
            raise Transient(str(e)) from None

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self}: no object {key}") from None
        except OSError as e:
            raise Transient(str(e)) from None

    def _delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise Transient(str(e)) from None

    def _entries(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        start = base if os.path.isdir(base) else os.path.dirname(base)
        for dirpath, _dirs, files in os.walk(start):
            for fn in files:
                full = os.path.join(dirpath, fn)
                key = os.path.relpath(full, self.root)
                if key.startswith(prefix) and ".tmp." not in fn:
                    try:
                        st = os.stat(full)
                    except FileNotFoundError:
                        continue
                    yield ObjectInfo(key, st.st_size, st.st_mtime)

    def check(self) -> None:
        if not os.path.isdir(self.root):
            raise ConfigError(f"storage directory {self.root} does not exist")
        if not os.access(self.root, os.W_OK):
            raise ConfigError(f"storage directory {self.root} is not writable")

    def create(self) -> None:
        try:
            private_dirs(self.root)
        except OSError as e:
            raise ConfigError(f"cannot create storage directory {self.root}: {e.strerror}") from None
