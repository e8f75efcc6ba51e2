"""The `cachefs://` protocol for fsspec (registered through the `fsspec.specs` entry point), so
pandas, pyarrow, torch.distributed.checkpoint and anything else that takes an fsspec URL reads
and writes a cachefs volume in-process, through cachefs.Client.

    fsspec.open("cachefs://datasets/train.csv", meta_url="redis://...")   # or $CACHEFS_META_URL

A URL's path is a path of the volume (`cachefs://a/b` and `cachefs:///a/b` are both /a/b).
Storage options are Client options (meta_url, cache_dir, cache_size, cache_group,
writeback, ...). `cp_file` is a metadata-only clone, `mv` an atomic rename, `cat_ranges`
fetches the ranges' blocks in parallel.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fsspec.spec import AbstractFileSystem

from .client import Client


class CachefsFileSystem(AbstractFileSystem):
    protocol = "cachefs"
    root_marker = "/"

    def __init__(self, meta_url: str | None = None, **options: Any) -> None:
        super().__init__(meta_url=meta_url, **options)
        client_options = {k: v for k, v in options.items() if k not in ("skip_instance_cache", "use_listings_cache",
                                                                       "listings_expiry_time", "max_paths")}
        self.client = Client(meta_url, **client_options)

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list | tuple):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("cachefs://"):
            path = path[len("cachefs://") :]
        return "/" + path.strip("/")

    # ---- listing and info --------------------------------------------------------------------------
    def _info_of(self, path: str, st: Any) -> dict:
        kind = "directory" if statmod.S_ISDIR(st.st_mode) else "file" if statmod.S_ISREG(st.st_mode) else "other"
        return {"name": path, "size": st.st_size if kind == "file" else 0, "type": kind, "mode": st.st_mode,
                "ino": st.st_ino, "mtime": st.st_mtime, "created": st.st_ctime, "nlink": st.st_nlink,
                "uid": st.st_uid, "gid": st.st_gid}

    def info(self, path: str, **kwargs: Any) -> dict:
        path = self._strip_protocol(path)
        return self._info_of(path, self.client.stat(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path)
        st = self.client.stat(path)
        if not statmod.S_ISDIR(st.st_mode):
            entries = [self._info_of(path, st)]
        else:
            entries = [self._info_of(e.path, e.stat()) for e in self.client.scandir(path)]
        return entries if detail else [e["name"] for e in entries]

    # ---- reading and writing ----------------------------------------------------------------------
    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: Any = None, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if "w" in mode or "a" in mode or "x" in mode:
            parent = os.path.dirname(path)
            if parent != "/" and not self.client.exists(parent):
                self.client.makedirs(parent, exist_ok=True)
        return self.client.open(path, mode if "b" in mode else mode + "b")

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        size = self.client.stat(path).st_size if start is not None and start < 0 or end is not None and end < 0 else 0
        start = 0 if start is None else start + size if start < 0 else start
        end = None if end is None else end + size if end < 0 else end
        return self.client.read_bytes(path, start, end)

    def cat_ranges(self, paths: list[str], starts: list[int], ends: list[int], max_gap: Any = None,
                   on_error: str = "return", **kwargs: Any) -> list:
        """Each range fetched at once: their blocks come in parallel."""

        def one(args: tuple[str, int, int]) -> Any:
            try:
                return self.cat_file(*args)
            except Exception as e:
                if on_error == "raise":
                    raise
                return e

        with ThreadPoolExecutor(min(16, max(1, len(paths)))) as pool:
            return list(pool.map(one, zip(paths, starts, ends, strict=True)))

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if mode == "create" and self.client.exists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        parent = os.path.dirname(path)
        if parent != "/" and not self.client.exists(parent):
            self.client.makedirs(parent, exist_ok=True)
        self.client.write_bytes(path, value)

    # ---- the namespace ----------------------------------------------------------------------------
    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """A copy that shares the source's blocks: metadata only."""
        path2 = self._strip_protocol(path2)
        if self.client.exists(path2):
            self.client.remove(path2)
        self.client.clone(self._strip_protocol(path1), path2)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: Any = None, **kwargs: Any) -> None:
        """An atomic rename (a whole directory at once)."""
        self.client.rename(self._strip_protocol(path1), self._strip_protocol(path2))

    def _rm(self, path: str) -> None:
        path = self._strip_protocol(path)
        if self.client.isdir(path):
            self.client.rmdir(path)
        else:
            self.client.remove(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: Any = None) -> None:
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for p in sorted(paths, key=len, reverse=True):  # children before their directories
            self._rm(p)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if create_parents:
            self.client.makedirs(path, exist_ok=True)
        else:
            self.client.mkdir(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.client.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        self.client.rmdir(self._strip_protocol(path))

    def created(self, path: str) -> Any:
        import datetime

        return datetime.datetime.fromtimestamp(self.client.stat(self._strip_protocol(path)).st_ctime,
                                               datetime.UTC)

    def modified(self, path: str) -> Any:
        import datetime

        return datetime.datetime.fromtimestamp(self.client.stat(self._strip_protocol(path)).st_mtime,
                                               datetime.UTC)
