"""Which member of a cache group owns a block: a consistent-hash ring with virtual nodes.

Each member holds VNODES points per unit of weight, at hashes of its id; a block belongs to
the member of the first point at or after the block key's hash. A member joining or leaving
moves only the blocks of its own points (about its weight's share), and every node that knows
the same members agrees on each block's owner.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import xxhash

VNODES = 256  # points per unit of weight: each share within ~6 % of its weight


@dataclass(frozen=True)
class Member:
    id: str  # stable across restarts of the node's mount: its address
    address: str  # host:port of its block service
    weight: float = 1.0


def _hash(text: str) -> int:
    return xxhash.xxh64_intdigest(text.encode())


class Ring:
    def __init__(self, members: list[Member]) -> None:
        self.members = {m.id: m for m in members}
        points = []
        for m in members:
            for i in range(max(1, round(VNODES * m.weight))):
                points.append((_hash(f"{m.id}#{i}"), m.id))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [mid for _, mid in points]

    def __len__(self) -> int:
        return len(self.members)

    def owner(self, key: str) -> Member | None:
        if not self._hashes:
            return None
        i = bisect.bisect(self._hashes, _hash(key)) % len(self._hashes)
        return self.members[self._owners[i]]
