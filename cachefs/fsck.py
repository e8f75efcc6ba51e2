"""fsck: which files have blocks the object store does not hold, or holds damaged.

A missing block of a slice still pending on a live session is an upload in progress, not damage;
one pending on an ended session is damage unless that node comes back with its staging
directory (then its mount uploads it), so it is reported with that hint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cachefs.meta import BaseMeta
from cachefs.meta.types import ROOT_INODE, TYPE_DIR, TYPE_FILE

from .block import HEADER, block_keys, decode_block, stored_sizes
from .errors import CachefsError
from .objects import ObjectStore


@dataclass
class Finding:
    path: str
    missing: int  # blocks
    total: int
    bad: int = 0  # blocks of the wrong size, or (verified) failing their checksum
    ended_sessions: set[int] = field(default_factory=set)  # writers gone with blocks still staged


@dataclass
class Report:
    files: int = 0
    blocks: int = 0
    damaged: list[Finding] = field(default_factory=list)
    uploading: list[Finding] = field(default_factory=list)


def stored_size_ok(size: int, length: int, compression: str) -> bool:
    """Whether an object of `size` bytes can be the stored form of a block of `length` plain
    bytes (block.py: CFB2 or CFB1 as is, or CFB1 lz4-compressed when that was smaller)."""
    if size in stored_sizes(length):
        return True
    return compression == "lz4" and HEADER.size < size <= HEADER.size + length


def check(meta: BaseMeta, objects: ObjectStore, volume: str, block_size: int, compression: str = "none",
          verify: bool = False, session_timeout: float = 60.0) -> Report:
    """Every file's blocks against the object store: present, of a size the block can have,
    and with verify, fetched and checked against their checksum."""
    present = dict(objects.list(f"{volume}/chunks/"))
    pending = {p.id: p.sid for p in meta.pending_slices()}
    cutoff = time.time() - session_timeout
    alive = {s.sid for s in meta.sessions() if s.heartbeat >= cutoff}
    report = Report()
    seen: set[int] = set()
    stack: list[tuple[int, str]] = [(ROOT_INODE, "")]
    while stack:
        dino, dpath = stack.pop()
        for name, ino, attr in meta.readdir(dino):
            path = f"{dpath}/{name.decode(errors='replace')}"
            if attr.type == TYPE_DIR:
                stack.append((ino, path))
                continue
            if attr.type != TYPE_FILE or ino in seen:
                continue
            seen.add(ino)
            report.files += 1
            f = Finding(path, 0, 0)
            uploading = False
            for slice_id, size in meta.file_slices(ino):
                for _i, key, n in block_keys(volume, slice_id, size, block_size):
                    f.total += 1
                    if key in present:
                        if not stored_size_ok(present[key], n, compression) or verify and not _verifies(
                                objects, key, n):
                            f.bad += 1
                        continue
                    f.missing += 1
                    sid = pending.get(slice_id)
                    if sid in alive:
                        uploading = True
                    elif sid is not None:
                        f.ended_sessions.add(sid)
            report.blocks += f.total
            if f.bad:
                report.damaged.append(f)
            elif f.missing:
                if uploading and not f.ended_sessions:
                    report.uploading.append(f)
                else:
                    report.damaged.append(f)
    return report


def _verifies(objects: ObjectStore, key: str, length: int) -> bool:
    try:
        decode_block(objects.get(key), length, key)
    except CachefsError:
        return False
    return True
