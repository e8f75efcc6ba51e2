"""Files the mount itself serves at its root: `.stats` (the metrics as text) and `.control`
(commands from the CLI: write a JSON request, read the JSON answer on the same handle).
`.control` also resolves in every directory, so the CLI reaches the mount from a pod that sees
only a subdirectory of the volume (a CSI bind mount); the name is reserved throughout.

They are hidden from directory listings and opened with direct I/O, so every read asks us."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from cachefs.meta.types import ROOT_INODE, TYPE_FILE, Attr, now_ns

from .errors import CachefsError, FSError

if TYPE_CHECKING:
    from cachefs.meta import BaseMeta

    from .chunkstore import ChunkStore

STATS_INODE = 0x7FFF_FFFF_0000_0001
CONTROL_INODE = 0x7FFF_FFFF_0000_0002
CONTROL_NAME = b".control"
NAMES = {b".stats": STATS_INODE, CONTROL_NAME: CONTROL_INODE}
_MODES = {STATS_INODE: 0o444, CONTROL_INODE: 0o600}
_STARTED = now_ns()


def is_internal(ino: int) -> bool:
    return ino in _MODES


def reserved(parent: int, name: bytes) -> bool:
    """Whether parent/name is one of the mount's own files (.control anywhere, .stats at the
    root)."""
    return name == CONTROL_NAME or (name in NAMES and parent == ROOT_INODE)


def attr(ino: int) -> Attr:
    return Attr(TYPE_FILE, _MODES[ino], 0, 0, _STARTED, _STARTED, _STARTED, nlink=1, length=0)


class InternalFile:
    """One open handle of an internal file."""

    def __init__(self, ino: int, render: Callable[[], str], control: Callable[[dict], dict]) -> None:
        self.ino = ino
        self._control = control
        self.request = bytearray()
        self.answer: bytes | None = render().encode() if ino == STATS_INODE else None

    def write(self, offset: int, data: bytes) -> int:
        if self.ino != CONTROL_INODE:
            raise FSError(errno.EBADF)
        self.request[offset : offset + len(data)] = data
        self.answer = None
        return len(data)

    def read(self, offset: int, size: int) -> bytes:
        if self.answer is None:
            self.answer = self._run().encode()
        return self.answer[offset : offset + size]

    def _run(self) -> str:
        try:
            request = json.loads(self.request.decode() or "{}")
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return json.dumps({"error": f"bad request: {e}"})
        try:
            return json.dumps(self._control(request))
        except CachefsError as e:
            return json.dumps({"error": str(e)})


class Control:
    """The commands `.control` understands; each works on inodes the CLI resolved."""

    def __init__(self, meta: BaseMeta, chunks: ChunkStore, flush: Callable[..., list[tuple[int, int]]]) -> None:
        self.meta = meta
        self.chunks = chunks
        self._flush = flush

    def __call__(self, request: dict) -> dict:
        cmd = request.get("cmd")
        if cmd in ("warmup", "check", "evict"):
            inodes = [int(i) for i in request.get("inodes", [])]
            return getattr(self, cmd)(inodes, max(1, int(request.get("threads", 16))))
        if cmd == "flush":
            timeout = request.get("timeout")
            left = self._flush(None if timeout is None else float(timeout), bool(request.get("final")))
            return {"pending": [{"inode": ino, "bytes": n, "path": self.meta.path_of(ino)} for ino, n in left]}
        raise FSError(errno.EINVAL, f"unknown command {cmd!r}")

    def _slices(self, ino: int) -> list[tuple[int, int]]:
        """Distinct (slice id, size) of a file: what its blocks are made of."""
        try:
            self.meta.getattr(ino)
        except FSError:
            return []
        return self.meta.file_slices(ino)

    def warmup(self, inodes: list[int], threads: int) -> dict:
        slices = [s for ino in inodes for s in self._slices(ino)]
        with ThreadPoolExecutor(threads) as pool:
            fetched = sum(pool.map(lambda s: self.chunks.warm(*s), slices))
        total = sum(size for _, size in slices)
        return {"bytes": total, "fetched": fetched, "cached": self._cached(slices)}

    def check(self, inodes: list[int], threads: int) -> dict:
        out = {}
        for ino in inodes:
            slices = self._slices(ino)
            out[str(ino)] = {"bytes": sum(s for _, s in slices), "cached": self._cached(slices)}
        return {"files": out}

    def evict(self, inodes: list[int], threads: int) -> dict:
        slices = [s for ino in inodes for s in self._slices(ino)]
        for s in slices:
            self.chunks.evict(*s)
        return {"bytes": sum(size for _, size in slices), "cached": self._cached(slices)}

    def _cached(self, slices: list[tuple[int, int]]) -> int:
        return sum(self.chunks.cached(*s) for s in slices)
