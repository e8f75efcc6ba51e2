"""Which cache entry goes when the disk cache is full: "2-random" (the policy JuiceFS's disk
cache uses by default), not LRU.

Training reads its dataset in epochs: a cyclic scan. When the blocks a cache must hold are a
little more than it can (a member of a cache group whose share came out above its cache, a
dataset just over --cache-size), LRU evicts each block just before it is read again and hits
nothing; evicting the older of two entries picked at random keeps most of the set and still
favours what was used recently. The table is not thread-safe: DiskCache holds its lock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")
SAMPLES = 2  # entries compared per eviction
TRIES = 64  # random picks before a filtered victim search walks the whole table


class EntryTable(Generic[V]):
    """key -> value, with a use stamp per key and random picks in O(1)."""

    def __init__(self, seed: int | None = None) -> None:
        self._values: dict[str, V] = {}
        self._stamps: dict[str, int] = {}
        self._keys: list[str] = []
        self._pos: dict[str, int] = {}
        self._clock = 0
        self._random = random.Random(seed)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def get(self, key: str) -> V | None:
        return self._values.get(key)

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(list(self._values.items()))

    def add(self, key: str, value: V) -> None:
        """Insert (or replace) as just used."""
        if key not in self._values:
            self._pos[key] = len(self._keys)
            self._keys.append(key)
        self._values[key] = value
        self.touch(key)

    def touch(self, key: str) -> None:
        if key in self._values:
            self._clock += 1
            self._stamps[key] = self._clock

    def pop(self, key: str) -> V | None:
        value = self._values.pop(key, None)
        if value is None:
            return None
        del self._stamps[key]
        i = self._pos.pop(key)
        last = self._keys.pop()
        if last != key:  # the last key takes the hole
            self._keys[i] = last
            self._pos[last] = i
        return value

    def victim(self, accept: Callable[[V], bool] = lambda v: True) -> str | None:
        """The least recently used of SAMPLES random entries that `accept` takes."""
        picked: list[str] = []
        for _ in range(TRIES):
            if len(picked) >= SAMPLES or not self._keys:
                break
            key = self._keys[self._random.randrange(len(self._keys))]
            if key not in picked and accept(self._values[key]):
                picked.append(key)
        if not picked:  # few or no acceptable entries: look at each
            picked = [k for k, v in self._values.items() if accept(v)][:SAMPLES]
        return min(picked, key=self._stamps.__getitem__, default=None)
