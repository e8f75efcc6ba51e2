"""Every Redis key of a volume, in one place.

All keys but the volume pointer carry the hash tag `{name}`, so one volume lives in one Redis
Cluster slot and every multi-key transaction stays legal there.

| key                    | type   | holds                                             |
|------------------------|--------|---------------------------------------------------|
| cachefs:volume         | string | the name of the volume in this db (untagged)      |
| {v}setting             | string | volume settings as JSON                           |
| {v}nextInode / nextSlice / nextSession | string | id counters                       |
| {v}usedSpace / totalInodes             | string | statfs counters                   |
| {v}i<ino>              | string | packed Attr                                       |
| {v}d<ino>              | hash   | name -> packed (ino, type)                        |
| {v}c<ino>_<indx>       | string | packed slice records, appended                    |
| {v}k<ino>              | set    | the chunk indexes of ino that hold records        |
| {v}s<ino>              | string | symlink target                                    |
| {v}x<ino>              | hash   | xattr name -> value                               |
| {v}sessions            | zset   | sid -> last heartbeat                             |
| {v}sessionInfos        | hash   | sid -> JSON                                       |
| {v}ss<sid>             | set    | inodes kept alive by open handles of the session  |
| {v}delfiles            | zset   | "ino:length" -> time queued                       |
| {v}trash               | zset   | "id:size" -> time queued                          |
| {v}sliceRef            | hash   | slice id -> extra references (shared slices)      |
| {v}pending             | hash   | slice id -> "sid:ino:size", not yet uploaded      |
| {v}m<id>               | string | a commit's marker (expires): was it applied?      |
| {v}r<sid>              | hash   | start -> end: slice id ranges the session took    |
| {v}u<sid>_<start>      | set    | slice ids of that range the session committed     |
"""

from __future__ import annotations

import struct

VOLUME_POINTER = "cachefs:volume"
ENTRY = struct.Struct("<QB")


class Keys:
    def __init__(self, name: str) -> None:
        self.tag = "{" + name + "}"

    def setting(self) -> str:
        return self.tag + "setting"

    def counter(self, name: str) -> str:
        return self.tag + name

    def attr(self, ino: int) -> str:
        return f"{self.tag}i{ino}"

    def dir(self, ino: int) -> str:
        return f"{self.tag}d{ino}"

    def chunk(self, ino: int, indx: int) -> str:
        return f"{self.tag}c{ino}_{indx}"

    def chunk_index(self, ino: int) -> str:
        return f"{self.tag}k{ino}"

    def symlink(self, ino: int) -> str:
        return f"{self.tag}s{ino}"

    def xattr(self, ino: int) -> str:
        return f"{self.tag}x{ino}"

    def sessions(self) -> str:
        return self.tag + "sessions"

    def session_infos(self) -> str:
        return self.tag + "sessionInfos"

    def sustained(self, sid: int) -> str:
        return f"{self.tag}ss{sid}"

    def delfiles(self) -> str:
        return self.tag + "delfiles"

    def trash(self) -> str:
        return self.tag + "trash"

    def slice_refs(self) -> str:
        return self.tag + "sliceRef"

    def pending(self) -> str:
        return self.tag + "pending"

    def ranges(self, sid: int) -> str:
        return f"{self.tag}r{sid}"

    def used(self, sid: int, start: int) -> str:
        return f"{self.tag}u{sid}_{start}"

    def marker(self, txid: str) -> str:
        return f"{self.tag}m{txid}"

    def pattern(self) -> str:
        """A SCAN pattern matching every key of the volume (names hold no glob characters)."""
        return self.tag + "*"
