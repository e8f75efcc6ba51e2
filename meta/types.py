"""Records the metadata engines store: inode attributes, slice records, volume settings."""

from __future__ import annotations

import dataclasses
import json
import stat
import struct
import time
from dataclasses import dataclass, field

CHUNK_SIZE = 64 << 20
# 2: each file's chunks that hold data are indexed (Redis: {v}k<ino>), and statfs counts
# allocated bytes; a volume of version 1 is brought up to date by its first mount
META_VERSION = 2
ROOT_INODE = 1

# inode types, as stored (the S_IFMT bits are derived from them)
TYPE_FILE = 1
TYPE_DIR = 2
TYPE_SYMLINK = 3
TYPE_FIFO = 4
TYPE_BLOCKDEV = 5
TYPE_CHARDEV = 6
TYPE_SOCKET = 7

_IFMT = {
    TYPE_FILE: stat.S_IFREG,
    TYPE_DIR: stat.S_IFDIR,
    TYPE_SYMLINK: stat.S_IFLNK,
    TYPE_FIFO: stat.S_IFIFO,
    TYPE_BLOCKDEV: stat.S_IFBLK,
    TYPE_CHARDEV: stat.S_IFCHR,
    TYPE_SOCKET: stat.S_IFSOCK,
}
_TYPE_OF_IFMT = {v: k for k, v in _IFMT.items()}


def type_from_mode(mode: int) -> int:
    """The stored type of a full st_mode (regular file when the format bits are absent)."""
    return _TYPE_OF_IFMT.get(stat.S_IFMT(mode), TYPE_FILE)


def now_ns() -> int:
    return time.time_ns()


@dataclass(slots=True)
class Attr:
    """Attributes of one inode; `mode` holds permission bits only (with suid/sgid/sticky)."""

    type: int
    mode: int
    uid: int = 0
    gid: int = 0
    atime: int = 0  # ns since the epoch
    mtime: int = 0
    ctime: int = 0
    nlink: int = 1
    length: int = 0
    rdev: int = 0
    parent: int = 0

    _FMT = struct.Struct("<BHIIqqqIQIQ")

    @property
    def st_mode(self) -> int:
        return _IFMT[self.type] | (self.mode & 0o7777)

    def pack(self) -> bytes:
        return self._FMT.pack(
            self.type, self.mode, self.uid, self.gid, self.atime, self.mtime, self.ctime,
            self.nlink, self.length, self.rdev, self.parent,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Attr:
        return cls(*cls._FMT.unpack(data))

    def copy(self) -> Attr:
        return dataclasses.replace(self)


@dataclass(frozen=True, slots=True)
class Slice:
    """One slice record of a chunk: `len` bytes at chunk offset `pos`, taken from byte `off` of
    slice `id` (whose stored size is `size`). id 0 means zeros (truncate, punch hole)."""

    pos: int
    id: int
    size: int
    off: int
    len: int

    _FMT = struct.Struct("<IQIII")

    def pack(self) -> bytes:
        return self._FMT.pack(self.pos, self.id, self.size, self.off, self.len)

    @classmethod
    def unpack_many(cls, data: bytes) -> list[Slice]:
        return [cls(*t) for t in cls._FMT.iter_unpack(data)]

    @classmethod
    def record_size(cls) -> int:
        return cls._FMT.size


@dataclass(slots=True)
class Settings:
    """A volume's settings, stored by `format` so a mount needs only the metadata URL."""

    name: str
    uuid: str
    storage: str = "file"
    bucket: str = ""
    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    region: str = ""
    block_size: int = 4 << 20
    compression: str = "none"
    meta_version: int = META_VERSION
    block_format: int = 1  # 2: uncompressed blocks are CFB2 (per-segment checksums: ranged reads)
    group_secret: str = ""  # hex: signs the requests between the members of a cache group
    extra: dict = field(default_factory=dict)

    SECRET_FIELDS = ("secret_key", "group_secret")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def masked(self) -> dict:
        """The settings as a dict with secrets replaced, for status output and logs."""
        data = dataclasses.asdict(self)
        for key in self.SECRET_FIELDS:
            if data.get(key):
                data[key] = "removed"
        return data


@dataclass(slots=True)
class SessionInfo:
    sid: int
    heartbeat: float
    info: dict


@dataclass(slots=True, frozen=True)
class PendingSlice:
    """A committed slice whose blocks may not be in the object store yet (write-back)."""

    id: int
    sid: int  # the session whose staging directory holds its blocks
    ino: int
    size: int
