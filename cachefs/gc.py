"""gc: the objects of a volume that no file references any more, and may be removed.

Referenced means named by a chunk of some file, or queued in the trash (the background jobs of
the mounts delete those after the trash delay). An unreferenced object is left alone while a
live session may still commit it (its slice id lies in one of that session's ranges and is not
recorded as committed: meta/inflight.py), or while it is younger than the age threshold (an
upload whose commit is on its way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cachefs.meta import BaseMeta

from .block import parse_block_key
from .objects import ObjectInfo, ObjectStore


@dataclass
class GCReport:
    objects: int = 0
    referenced: int = 0
    leaked: list[ObjectInfo] = field(default_factory=list)
    in_flight: int = 0  # unreferenced, but a live session may still commit them
    young: int = 0  # unreferenced, younger than the age threshold
    foreign: int = 0  # under the volume's prefix but not a block key

    @property
    def leaked_bytes(self) -> int:
        return sum(o.size for o in self.leaked)


def find_leaks(meta: BaseMeta, objects: ObjectStore, volume: str, min_age: float,
               session_timeout: float = 60.0) -> GCReport:
    referenced = meta.referenced_slices()
    cutoff = meta.now() - session_timeout
    in_flight: list[tuple[int, int, set[int]]] = []
    for s in meta.sessions():
        if s.heartbeat >= cutoff:
            in_flight += meta.session_ranges(s.sid)
    report = GCReport()
    now = time.time()
    for info in objects.entries(f"{volume}/chunks/"):
        report.objects += 1
        ident = parse_block_key(info.key)
        if ident is None:
            report.foreign += 1
            continue
        slice_id = ident[0]
        if slice_id in referenced:
            report.referenced += 1
        elif any(start <= slice_id < end and slice_id not in used for start, end, used in in_flight):
            report.in_flight += 1
        elif now - info.mtime < min_age:
            report.young += 1
        else:
            report.leaked.append(info)
    return report
