"""When a written block counts as safe, and what a commit of written slices must do about it.

Two answers share one interface, so the writer and the chunk store never ask which one they
have: `WriteThrough` (the default: a block is safe once it is in the object store; a commit is
just the metadata transaction) and `writeback.WriteBack` (a block is safe once it is durable in
the local staging directory; a commit records the slices not uploaded yet as pending, in the
same transaction, and the uploads finish in the background).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from cachefs.meta.types import Attr

from .block import Buffer
from .diskcache import DiskCache
from .objects import ObjectStore

BlockKey = Callable[[int, int, int], str]  # (slice id, index, length) -> object key
Commit = Callable[[list[int]], Attr]  # the metadata commit, given the slice ids to record as pending


class Durability(Protocol):
    through: WriteThrough  # for writes that must not be staged (compaction)

    def store(self, slice_id: int, ino: int, index: int, length: int, encoded: tuple[Buffer, ...],
              plain: Sequence[Buffer]) -> None:
        """Make one block safe (blocking): encoded is the stored form, plain its bytes."""

    def commit(self, ino: int, slice_ids: list[int], write: Commit) -> Attr:
        """Commit the file's slices through write(), with whatever must go into the same
        transaction."""

    def abandon(self, slice_ids: Iterable[int]) -> None:
        """These slices will never be committed: forget what is kept for them."""

    def error_of(self, ino: int) -> Exception | None:
        """Why a block of ino that was reported safe failed later (fails its next flush)."""

    def fsync(self, ino: int) -> None:
        """What fsync waits for beyond the commit."""

    def wait(self, ino: int | None = None, timeout: float | None = None) -> list[tuple[int, int]]:
        """Wait until every committed block (of ino, or all) is in the object store; what is
        still not there at the deadline, as (inode, bytes)."""

    def close(self) -> None: ...


class WriteThrough:
    """A block is safe once the object store has it; blocks smaller than a block (a small
    file, a file's tail) also go into the disk cache, since they are likely read back soon."""

    def __init__(self, objects: ObjectStore, key: BlockKey, block_size: int, cache: DiskCache | None = None,
                 cache_large_write: bool = False) -> None:
        self.objects = objects
        self.key = key
        self.block_size = block_size
        self.cache = cache
        # like JuiceFS: full blocks just written are not cached unless asked (a big write is
        # rarely read back at once, and caching it doubles the disk traffic of the write)
        self.cache_large_write = cache_large_write
        self.through = self

    def store(self, slice_id: int, ino: int, index: int, length: int, encoded: tuple[Buffer, ...],
              plain: Sequence[Buffer]) -> None:
        key = self.key(slice_id, index, length)
        self.objects.put(key, b"".join(encoded))
        if self.cache is not None and (self.cache_large_write or length < self.block_size):
            self.cache.put_later(key, b"".join(plain))

    def commit(self, ino: int, slice_ids: list[int], write: Commit) -> Attr:
        return write([])

    def abandon(self, slice_ids: Iterable[int]) -> None:
        pass

    def error_of(self, ino: int) -> Exception | None:
        return None

    def fsync(self, ino: int) -> None:
        pass

    def wait(self, ino: int | None = None, timeout: float | None = None) -> list[tuple[int, int]]:
        return []

    def close(self) -> None:
        pass
