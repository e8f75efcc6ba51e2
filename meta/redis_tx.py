"""Transactions of the Redis engine, and how most of them take one round trip.

A transaction runs the shared POSIX logic (a function of a Tx) in one of three modes:

- "read": plain reads, no conflict tracking (lookups, listings);
- "watch": WATCH/MULTI/EXEC: every key read is watched, every write queued, a concurrent
  change retries the whole function (two or more round trips: each read is one);
- "blind": every value the function reads is taken from `Hints`, what this client last read
  or wrote of each key, and the writes go out together with those values as conditions, in
  one EVALSHA of CHECK_AND_APPLY: the script applies the writes only if every value is still
  what was assumed, else nothing (then the transaction runs again in watch mode). A read that
  the hints cannot answer ends the blind attempt before anything is sent (NeedRead).

So a create in a directory this client looked up, or the commit of a file it opened, costs one
round trip, and correctness never rests on a hint being fresh: a stale one costs a retry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .redis_schema import ENTRY, Keys
from .types import Attr, Slice

HINT_TTL = 10.0  # seconds a hint is used (past that, another client has likely changed it)
HINT_LIMIT = 100_000

# ARGV: the number of checks, then each check (kind g|h, key index, [field], present 0|1, value),
# then the number of writes, then each write (command, key index, argument count, arguments)
CHECK_AND_APPLY = """
local i = 1
local nchecks = tonumber(ARGV[i]); i = i + 1
for c = 1, nchecks do
  local kind, k = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  local v
  if kind == 'g' then
    v = redis.call('GET', k); i = i + 2
  else
    v = redis.call('HGET', k, ARGV[i + 2]); i = i + 3
  end
  local present, want = ARGV[i], ARGV[i + 1]; i = i + 2
  if present == '0' then
    if v then return 0 end
  elseif (not v) or v ~= want then
    return 0
  end
end
local nops = tonumber(ARGV[i]); i = i + 1
for o = 1, nops do
  local cmd, k, n = ARGV[i], KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2]); i = i + 3
  redis.call(cmd, k, unpack(ARGV, i, i + n - 1))
  i = i + n
end
return 1
"""

_MISSING = object()


class NeedRead(Exception):
    """A blind attempt needs a value the hints do not have."""


class Hints:
    """What this client last read or wrote of each key (or hash field), for blind attempts.
    Thread-safe by the GIL (dict operations)."""

    def __init__(self) -> None:
        self._v: dict[Any, tuple[float, bytes | None]] = {}

    def get(self, item: Any) -> Any:
        hit = self._v.get(item)
        if hit is None or hit[0] < time.monotonic():
            return _MISSING
        return hit[1]

    def put(self, item: Any, value: bytes | None) -> None:
        if len(self._v) >= HINT_LIMIT:
            self._v.clear()
        self._v[item] = (time.monotonic() + HINT_TTL, value)

    def drop(self, item: Any) -> None:
        self._v.pop(item, None)


class RedisTx:
    def __init__(self, conn: Any, keys: Keys, mode: str, hints: Hints | None = None) -> None:
        self.c = conn
        self.k = keys
        self.mode = mode  # read | watch | blind
        self.hints = hints
        self.watched: set[str] = set()
        self.ops: list[tuple] = []
        self.local: dict[Any, Any] = {}
        self.appended: dict[str, bytes] = {}
        self.seen: dict[Any, bytes | None] = {}  # what the function read, by key or (key, field)

    # ---- reads ----------------------------------------------------------------------------------
    def _w(self, key: str) -> None:
        if self.mode == "blind":
            raise NeedRead(key)
        if self.mode == "watch" and key not in self.watched:
            self.c.watch(key)
            self.watched.add(key)

    def _read_item(self, item: Any, fetch: Any) -> bytes | None:
        if item in self.local:
            return self.local[item]
        if item in self.seen:
            return self.seen[item]
        if self.mode == "blind":
            value = self.hints.get(item) if self.hints is not None else _MISSING
            if value is _MISSING:
                raise NeedRead(item)
        else:
            self._w(item if isinstance(item, str) else item[0])
            value = fetch()
        self.seen[item] = value
        return value

    def _get(self, key: str) -> bytes | None:
        return self._read_item(key, lambda: self.c.get(key))

    def _hget(self, key: str, field: bytes) -> bytes | None:
        return self._read_item((key, field), lambda: self.c.hget(key, field))

    # ---- writes ---------------------------------------------------------------------------------
    def _op(self, *op: Any) -> None:
        if self.mode == "read":
            raise RuntimeError("write in a read-only Redis transaction")
        self.ops.append(op)

    def _set(self, key: str, value: bytes) -> None:
        self.local[key] = value
        self.appended.pop(key, None)
        self._op("SET", key, value)

    def _delete(self, *keys: str) -> None:
        for key in keys:
            self.local[key] = None
            self.appended.pop(key, None)
            self._op("DEL", key)

    # ---- the record operations of meta/records.py's Tx -------------------------------------------
    def get_attr(self, ino: int) -> Attr | None:
        data = self._get(self.k.attr(ino))
        return Attr.unpack(data) if data else None

    def set_attr(self, ino: int, attr: Attr) -> None:
        self._set(self.k.attr(ino), attr.pack())

    def del_inode(self, ino: int) -> None:
        self._delete(self.k.attr(ino), self.k.symlink(ino), self.k.xattr(ino))

    def get_entry(self, parent: int, name: bytes) -> tuple[int, int] | None:
        data = self._hget(self.k.dir(parent), name)
        return ENTRY.unpack(data) if data else None

    def set_entry(self, parent: int, name: bytes, ino: int, typ: int) -> None:
        key, value = self.k.dir(parent), ENTRY.pack(ino, typ)
        self.local[(key, name)] = value
        self._op("HSET", key, name, value)

    def del_entry(self, parent: int, name: bytes) -> None:
        key = self.k.dir(parent)
        self.local[(key, name)] = None
        self._op("HDEL", key, name)

    def has_entries(self, ino: int) -> bool:
        key = self.k.dir(ino)
        self._w(key)
        return bool(self.c.hlen(key))

    def get_slices(self, ino: int, indx: int) -> list[Slice]:
        key = self.k.chunk(ino, indx)
        data = (self._get(key) or b"") + self.appended.get(key, b"")
        return Slice.unpack_many(data)

    def append_slices(self, ino: int, indx: int, slices: list[Slice]) -> None:
        key = self.k.chunk(ino, indx)
        blob = b"".join(s.pack() for s in slices)
        if key in self.local:
            self.local[key] = (self.local[key] or b"") + blob
        else:
            self.appended[key] = self.appended.get(key, b"") + blob
        self._op("APPEND", key, blob)
        self._indexed(ino, indx, True)

    def set_slices(self, ino: int, indx: int, slices: list[Slice]) -> None:
        key = self.k.chunk(ino, indx)
        if slices:
            self._set(key, b"".join(s.pack() for s in slices))
        else:
            self._delete(key)
        self._indexed(ino, indx, bool(slices))

    def _indexed(self, ino: int, indx: int, present: bool) -> None:
        key = self.k.chunk_index(ino)
        self.local[(key, indx)] = present
        self._op("SADD" if present else "SREM", key, indx)

    def chunk_indexes(self, ino: int) -> list[int]:
        key = self.k.chunk_index(ino)
        self._w(key)
        found = {int(i) for i in self.c.smembers(key)}
        for item, present in self.local.items():
            if isinstance(item, tuple) and item[0] == key:
                (found.add if present else found.discard)(item[1])
        return sorted(found)

    def get_symlink(self, ino: int) -> bytes | None:
        return self._get(self.k.symlink(ino))

    def set_symlink(self, ino: int, target: bytes) -> None:
        self._set(self.k.symlink(ino), target)

    def get_xattr(self, ino: int, name: bytes) -> bytes | None:
        return self._hget(self.k.xattr(ino), name)

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        key = self.k.xattr(ino)
        self.local[(key, name)] = value
        self._op("HSET", key, name, value)

    def del_xattr(self, ino: int, name: bytes) -> None:
        key = self.k.xattr(ino)
        self.local[(key, name)] = None
        self._op("HDEL", key, name)

    def add_usage(self, space: int, inodes: int) -> None:
        if space:
            self._op("INCRBY", self.k.counter("usedSpace"), space)
        if inodes:
            self._op("INCRBY", self.k.counter("totalInodes"), inodes)

    def add_delfile(self, ino: int, length: int) -> None:
        self._op("ZADD", self.k.delfiles(), time.time(), f"{ino}:{length}")

    def add_trash(self, slices: Iterable[tuple[int, int]]) -> None:
        now = time.time()
        members = [x for i, s in slices for x in (now, f"{i}:{s}")]
        if members:
            self._op("ZADD", self.k.trash(), "NX", *members)

    def get_refs(self, ids: list[int]) -> dict[int, int]:
        key = self.k.slice_refs()
        out = {}
        missing = [i for i in ids if (key, i) not in self.local]
        if missing:
            self._w(key)
            for i, v in zip(missing, self.c.hmget(key, missing), strict=True):
                if v:
                    out[i] = int(v)
        for i in ids:
            if (key, i) in self.local and self.local[(key, i)]:
                out[i] = self.local[(key, i)]
        return out

    def set_ref(self, sid: int, extra: int) -> None:
        key = self.k.slice_refs()
        self.local[(key, sid)] = extra
        if extra > 0:
            self._op("HSET", key, sid, extra)
        else:
            self._op("HDEL", key, sid)

    def add_sustained(self, sid: int, ino: int) -> None:
        self._op("SADD", self.k.sustained(sid), ino)

    def del_sustained(self, sid: int, ino: int) -> None:
        self._op("SREM", self.k.sustained(sid), ino)

    def add_pending(self, slice_id: int, sid: int, ino: int, size: int) -> None:
        self._op("HSET", self.k.pending(), slice_id, f"{sid}:{ino}:{size}")

    def add_used(self, sid: int, start: int, slice_id: int) -> None:
        self._op("SADD", self.k.used(sid, start), slice_id)

    # ---- after the commit -----------------------------------------------------------------------
    def script_args(self) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of CHECK_AND_APPLY for a blind attempt: the values read, as conditions,
        then the writes."""
        keys: list[str] = []
        index: dict[str, int] = {}

        def ki(key: str) -> int:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            return index[key]

        argv: list[Any] = [len(self.seen)]
        for item, value in self.seen.items():
            if isinstance(item, str):
                argv += ["g", ki(item)]
            else:
                argv += ["h", ki(item[0]), item[1]]
            argv += ["0", ""] if value is None else ["1", value]
        argv.append(len(self.ops))
        for cmd, key, *args in self.ops:
            argv += [cmd, ki(key), len(args), *args]
        return keys, argv

    def remember(self) -> None:
        """The transaction committed: what it read and wrote become hints."""
        if self.hints is None:
            return
        for item, value in self.seen.items():
            self.hints.put(item, value)
        for cmd, key, *args in self.ops:
            if cmd == "SET":
                self.hints.put(key, args[0])
            elif cmd == "DEL":
                self.hints.put(key, None)
            elif cmd == "HSET":
                self.hints.put((key, args[0]), args[1] if isinstance(args[1], bytes) else str(args[1]).encode())
            elif cmd == "HDEL":
                self.hints.put((key, args[0]), None)
            elif cmd == "APPEND":
                value = self.local.get(key, _MISSING)
                if value is _MISSING:
                    self.hints.drop(key)  # its whole value is not known here
                else:
                    self.hints.put(key, value)

    def forget(self) -> None:
        """A blind attempt met other values: those hints are stale."""
        if self.hints is not None:
            for item in self.seen:
                self.hints.drop(item)
