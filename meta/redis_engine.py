"""The production engine: Redis (standalone or Cluster), one volume per database.

Each multi-key operation runs as one optimistic WATCH/MULTI/EXEC transaction: reads watch
their keys, writes are queued and applied atomically, and a concurrent change retries the
whole operation. The key layout lives in redis_schema.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from cachefs.errors import ConfigError, FSError, MetaError
from cachefs.metrics import Metrics

from .engine import BaseMeta, Changes
from .redis_schema import ENTRY, VOLUME_POINTER, Keys
from .redis_tx import CHECK_AND_APPLY, Hints, RedisTx
from .redis_url import cluster_of, connect
from .redis_url import parse as parse_url
from .retry import Outage, Retry
from .types import TYPE_FILE, Attr, PendingSlice, SessionInfo, Settings, Slice

T = TypeVar("T")
log = logging.getLogger("cachefs.meta")


# One round trip for the commonest metadata request: the entry and the attributes it points to
# (both keys carry the volume's hash tag, so they live in one Cluster slot), for one name or
# many at once (the directories a DataLoader batch's paths go through): KEYS are the parents'
# directory hashes, ARGV the attribute key prefix and then the names; an answer per name, false
# for a miss
LOOKUP_SCRIPT = """
local out = {}
for i, dir in ipairs(KEYS) do
  local e = redis.call('HGET', dir, ARGV[i + 1])
  if e then
    out[i] = {e, redis.call('GET', ARGV[1] .. string.format('%d', struct.unpack('<I8', e)))}
  else
    out[i] = false
  end
end
return out
"""

# the same, with the first chunk's slice records (an open by path: one round trip), for one name
# or many at once (a DataLoader batch's files): KEYS are the parents' directory hashes, ARGV the
# two key prefixes and then the names; an answer per name, false for a miss
LOOKUP_OPEN_SCRIPT = """
local out = {}
for i, dir in ipairs(KEYS) do
  local e = redis.call('HGET', dir, ARGV[i + 2])
  if e then
    local ino = string.format('%d', struct.unpack('<I8', e))
    out[i] = {e, redis.call('GET', ARGV[1] .. ino), redis.call('GET', ARGV[2] .. ino .. '_0')}
  else
    out[i] = false
  end
end
return out
"""


def _scripted(name: bytes) -> bool:
    """Is name looked up by the scripts? "." and ".." are not entries, and a name too long is
    answered by the base class (ENAMETOOLONG)."""
    return name not in (b".", b"..") and len(name) <= 255


def _pair(member: bytes) -> tuple[int, int]:
    a, b = member.split(b":")
    return int(a), int(b)


MARKER_TTL = 600  # seconds a commit's marker lives: longer than any retry of that commit
REPLICA_WAIT_MS = 1000  # how long a commit behind Sentinel waits for a replica's acknowledgement
REPLICA_RECHECK = 10.0  # seconds between looks at how many replicas the master has
# answers that mean "not now" (a restart loading its data, a replica not yet promoted, slots on
# the move) rather than "no"
_OUTAGE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
_OUTAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError,
                  redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
                  redis.exceptions.MasterDownError, redis.exceptions.SlotNotCoveredError)
_UNSET = object()


def _password_file() -> str:
    path = os.environ.get("META_PASSWORD_FILE")
    if not path:
        return ""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise ConfigError(f"META_PASSWORD_FILE {path}: {e.strerror}") from None


def _is_outage(e: redis.RedisError) -> bool:
    if isinstance(e, redis.AuthenticationError):
        return False
    if isinstance(e, _OUTAGE_ERRORS):
        return True
    return isinstance(e, redis.ResponseError) and str(e).split(" ", 1)[0] in _OUTAGE_REPLIES


@dataclass(frozen=True)
class Endpoint:
    """A plain Redis server: a TCP address or a unix socket, and what to say after connecting."""

    host: str | None
    port: int
    path: str | None  # a unix socket (host and port unused)
    db: int
    username: str | None
    password: str | None
    timeout: float  # seconds a reply may take


class RedisMeta(BaseMeta):
    name = "redis"

    def __init__(self, url: str, is_open: Callable[[int], bool] | None = None, metrics: Metrics | None = None,
                 retry_timeout: float = 60.0, observer: Callable[[Changes], None] | None = None) -> None:
        super().__init__(is_open, observer)
        u = parse_url(url)
        self.where = u.where
        # a password may come from the environment or a file instead of the URL (then `ps`
        # cannot show it)
        password = os.environ.get("META_PASSWORD") or _password_file() or None
        self.r = connect(u, password)
        try:
            self.r.ping()
            if u.kind == "single":
                self.r = cluster_of(u, self.r, password)
            self._check_eviction()
            name = self.r.get(VOLUME_POINTER)
        except redis.AuthenticationError:
            raise ConfigError(f"{self.where} refused the password") from None
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise MetaError(f"cannot reach {self.where}: {e}") from None
        except redis.RedisError as e:
            raise MetaError(f"{self.where}: {e}") from None
        self.cluster = not isinstance(self.r, redis.Redis)
        self.retry = Retry(self.where, retry_timeout, metrics)
        self.metrics = metrics
        # behind Sentinel a commit is acknowledged only once a replica has it too (Redis
        # replicates asynchronously: a master killed right after answering would lose it in the
        # failover); how many replicas to wait for is looked up again now and then
        self._replicated = u.kind == "sentinel"
        self._replicas, self._replicas_checked = 0, 0.0
        self.k = Keys(name.decode() if name else "unformatted")
        self._lookup = self.r.register_script(LOOKUP_SCRIPT)
        self._lookup_open = self.r.register_script(LOOKUP_OPEN_SCRIPT)
        self._check_and_apply = self.r.register_script(CHECK_AND_APPLY)
        self.hints = Hints()

    def lookup(self, parent: int, name: bytes) -> tuple[int, Attr]:
        if not _scripted(name):
            return super().lookup(parent, name)
        found = self._call(lambda: self._lookup(keys=[self.k.dir(parent)], args=[self.k.attr(0)[:-1], name]))
        one = self._looked_up(parent, name, found[0])
        if isinstance(one, FSError):
            raise one
        return one

    def lookup_many(self, pairs: list[tuple[int, bytes]]) -> list[tuple[int, Attr] | FSError]:
        plain = [i for i, (_, name) in enumerate(pairs) if _scripted(name)]
        out: list[Any] = [None] * len(pairs)
        if plain:
            found = self._call(lambda: self._lookup(keys=[self.k.dir(pairs[i][0]) for i in plain],
                                                    args=[self.k.attr(0)[:-1], *(pairs[i][1] for i in plain)]))
            for i, one in zip(plain, found, strict=True):
                out[i] = self._looked_up(*pairs[i], one)
        return [self._one_lookup(*pairs[i]) if one is None else one for i, one in enumerate(out)]

    def _looked_up(self, parent: int, name: bytes, found: list | None) -> tuple[int, Attr] | FSError:
        """The lookup script's answer for one name; its keys kept as hints for the write that
        often follows (a create after a miss)."""
        if not found or not found[1]:
            if not found:
                self.hints.put((self.k.dir(parent), name), None)
            return FSError(errno.ENOENT)
        ino = ENTRY.unpack(found[0])[0]
        self.hints.put((self.k.dir(parent), name), found[0])
        self.hints.put(self.k.attr(ino), found[1])
        return ino, Attr.unpack(found[1])

    def lookup_open(self, parent: int, name: bytes) -> tuple[int, Attr, list[Slice] | None]:
        if not _scripted(name):
            return super().lookup_open(parent, name)
        one = self.lookup_open_many([(parent, name)])[0]
        if isinstance(one, FSError):
            raise one
        return one

    def lookup_open_many(self, pairs: list[tuple[int, bytes]]) -> list[tuple[int, Attr, list[Slice] | None] | FSError]:
        plain = [i for i, (_, name) in enumerate(pairs) if _scripted(name)]
        out: list[Any] = [None] * len(pairs)
        if plain:
            found = self._call(lambda: self._lookup_open(
                keys=[self.k.dir(pairs[i][0]) for i in plain],
                args=[self.k.attr(0)[:-1], self.k.chunk(0, 0)[:-3], *(pairs[i][1] for i in plain)]))
            for i, one in zip(plain, found, strict=True):
                if not one or not one[1]:
                    out[i] = FSError(errno.ENOENT)
                    continue
                ino = ENTRY.unpack(one[0])[0]
                self.hints.put((self.k.dir(pairs[i][0]), pairs[i][1]), one[0])
                out[i] = (ino, *self._opened(ino, one[1], one[2]))
        for i, one in enumerate(out):
            if one is None:
                out[i] = self._one_lookup_open(*pairs[i])
        return out

    def open_file(self, ino: int) -> tuple[Attr, list[Slice] | None]:
        # one MGET (the keys share the volume's hash tag, so this holds on a cluster too): a
        # pipeline of two GETs costs twice the client CPU for the same round trip
        return self.open_answer(ino, self._call(lambda: self.r.mget(*self.open_command(ino)[1:])))

    def open_command(self, ino: int) -> list[str]:
        """The one command open_file sends, for a caller that sends it itself (the FUSE shell's
        event loop, cachefs/loopredis.py); open_answer reads its reply."""
        return ["MGET", self.k.attr(ino), self.k.chunk(ino, 0)]

    def open_answer(self, ino: int, reply: list) -> tuple[Attr, list[Slice] | None]:
        data, chunk = reply
        if not data:
            raise FSError(errno.ENOENT)
        return self._opened(ino, data, chunk)

    def endpoint(self) -> Endpoint | None:
        """Where this engine's one Redis server listens, for a caller with a connection of its
        own (open_command): None behind Sentinel or on a Cluster (only the engine's clients
        follow a failover or a slot) and with TLS."""
        if self.cluster or self._replicated:
            return None
        pool = self.r.connection_pool
        if issubclass(pool.connection_class, redis.SSLConnection):
            return None
        kw = pool.connection_kwargs
        return Endpoint(kw.get("host"), kw.get("port", 6379), kw.get("path"), kw.get("db", 0) or 0,
                        kw.get("username"), kw.get("password"), kw.get("socket_timeout") or 5.0)

    def _opened(self, ino: int, data: bytes, chunk: bytes | None) -> tuple[Attr, list[Slice] | None]:
        """An open's answer from the inode's packed attributes and first chunk's records."""
        self.hints.put(self.k.attr(ino), data)
        self.hints.put(self.k.chunk(ino, 0), chunk)
        attr = Attr.unpack(data)
        return attr, Slice.unpack_many(chunk or b"") if attr.type == TYPE_FILE else None

    def _check_eviction(self) -> None:
        try:
            answers = self.r.config_get("maxmemory-policy")
        except redis.ResponseError:
            return  # CONFIG disabled (managed Redis): cannot check
        policy = answers.get("maxmemory-policy")
        if policy and policy != "noeviction":
            raise ConfigError(
                f"{self.where} has maxmemory-policy {policy}: it may evict metadata; set it to noeviction"
            )

    def _attempt(self, fn: Callable[[], T]) -> T:
        """One try of fn: an outage becomes Outage (meta/retry.py tries again), any other
        Redis failure a MetaError."""
        try:
            return fn()
        except redis.WatchError:
            raise
        except redis.RedisError as e:
            if _is_outage(e):
                raise Outage(str(e)) from e
            raise MetaError(f"{self.where}: {e}") from None

    def _call(self, fn: Callable[[], T]) -> T:
        return self.retry.call(lambda: self._attempt(fn))

    def _engine_txn(self, fn: Callable[[RedisTx], T]) -> T:
        """fn as one WATCH/MULTI/EXEC transaction, retried whole on a conflict and through an
        outage. A commit whose answer was lost (the connection dropped during EXEC) may have
        been applied: each commit also sets a marker key of its own, so the retry asks the
        marker first and, when it is there, returns what the first attempt computed instead of
        applying the operation twice (a create must not report EEXIST for its own file)."""
        marker = self.k.marker(uuid.uuid4().hex)
        sent: list = [_UNSET]  # the result of a commit whose EXEC went out unanswered

        def blind() -> Any:
            """One round trip: the function on hinted values, its writes sent with those values
            as conditions (meta/redis_tx.py); _UNSET when it needs a real read, failed on a hint
            (its error must be checked against the truth) or met other values."""
            tx = RedisTx(None, self.k, "blind", self.hints)
            try:
                result = fn(tx)
            except Exception:  # NeedRead, or an error a stale hint may have caused
                self._count("watched")
                return _UNSET
            if not tx.ops:
                self._count("watched")
                return _UNSET
            tx._op("SET", marker, 1, "EX", MARKER_TTL)
            keys, argv = tx.script_args()
            sent[0] = result
            if self._check_and_apply(keys=keys, args=argv):
                tx.remember()
                self._count("one round trip")
                return result
            sent[0] = _UNSET
            tx.forget()
            self._count("stale hints")
            return _UNSET

        def attempt() -> T:
            if sent[0] is not _UNSET:
                if self.r.exists(marker):
                    return sent[0]
                sent[0] = _UNSET
            result = blind()
            if result is not _UNSET:
                if self._replicated:
                    self._wait_replicas()
                return result
            conflicts, started = 0, time.monotonic()
            while True:
                try:
                    with self.r.pipeline(transaction=True) as pipe:
                        tx = RedisTx(pipe, self.k, "watch", self.hints)
                        result = fn(tx)
                        if not tx.ops:
                            tx.remember()
                            return result
                        pipe.multi()
                        for op in tx.ops:
                            pipe.execute_command(*op)
                        pipe.set(marker, 1, ex=MARKER_TTL)
                        sent[0] = result
                        pipe.execute()
                    tx.remember()
                    if self._replicated:
                        self._wait_replicas()
                    return result
                except redis.WatchError:
                    # a concurrent change: run it again (never an error for the caller)
                    sent[0] = _UNSET
                    conflicts += 1
                    if time.monotonic() - started > self.retry.timeout:
                        raise MetaError(f"{self.where}: {conflicts} conflicting concurrent updates in "
                                        f"{self.retry.timeout:g} s; gave up") from None
                    time.sleep(random.uniform(0, min(0.1, 0.001 * conflicts)))

        return self._call(attempt)

    def _count(self, path: str) -> None:
        if self.metrics is not None:
            self.metrics.meta_transactions.labels(path).inc()

    def _wait_replicas(self) -> None:
        """Wait (a bounded time) until a replica has every write so far (Sentinel setups)."""
        now = time.monotonic()
        if now - self._replicas_checked > REPLICA_RECHECK:
            self._replicas = min(1, int(self.r.info("replication").get("connected_slaves", 0)))
            self._replicas_checked = now
        if self._replicas and self.r.wait(self._replicas, REPLICA_WAIT_MS) < self._replicas:
            self._replicas_checked = 0.0  # look again next time: the replica may be gone
            log.warning("%s: no replica acknowledged a commit within %d ms", self.where, REPLICA_WAIT_MS)

    def _read(self, fn: Callable[[RedisTx], T]) -> T:
        def attempt() -> T:
            tx = RedisTx(self.r, self.k, "read", self.hints)
            result = fn(tx)
            tx.remember()
            return result

        return self._call(attempt)

    def now(self) -> float:
        """The engine's clock (every client judges heartbeats by it)."""
        sec, usec = self._call(self.r.time)
        return sec + usec / 1e6

    def _incr(self, counter: str, n: int) -> int:
        return self._call(lambda: self.r.incrby(self.k.counter(counter), n))

    def _get_counter(self, counter: str) -> int:
        return int(self._call(lambda: self.r.get(self.k.counter(counter))) or 0)

    def _load_settings(self) -> Settings | None:
        def fn() -> Settings | None:
            name = self.r.get(VOLUME_POINTER)
            if not name:
                return None
            self.k = Keys(name.decode())
            data = self.r.get(self.k.setting())
            return Settings.from_json(data) if data else None

        return self._call(fn)

    def _store_settings(self, settings: Settings) -> None:
        def fn() -> None:
            # two writes (the pointer is untagged: on a Cluster it lives in another slot), the
            # settings first, so the pointer never names a volume without them
            self.k = Keys(settings.name)
            self.r.set(self.k.setting(), settings.to_json())
            self.r.set(VOLUME_POINTER, settings.name)

        self._call(fn)

    def _upgrade(self, version: int) -> None:
        if version < 2:  # index every file's chunks that hold records
            prefix = self.k.chunk(0, 0)[: -len("0_0")]

            def fn() -> None:
                for key in self.r.scan_iter(match=prefix + "*", count=1000):
                    ino, _, indx = key.decode()[len(prefix) :].partition("_")
                    if ino.isdigit() and indx.isdigit():
                        self.r.sadd(self.k.chunk_index(int(ino)), int(indx))

            self._call(fn)

    def _all_chunks(self) -> Iterator[bytes]:
        prefix = self.k.chunk(0, 0)[: -len("0_0")]
        batch: list = []

        def fetch() -> list:
            return self._call(lambda: self.r.mget(batch))

        for key in self._call(lambda: list(self.r.scan_iter(match=prefix + "*", count=1000))):
            batch.append(key)
            if len(batch) >= 500:
                yield from (v for v in fetch() if v)
                batch = []
        if batch:
            yield from (v for v in fetch() if v)

    def _reset(self) -> None:
        def fn() -> None:
            batch = []
            for key in self.r.scan_iter(match=self.k.pattern(), count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self.r.delete(*batch)
                    batch = []
            if batch:
                self.r.delete(*batch)

        self._call(fn)

    def _list_entries(self, ino: int) -> list[tuple[bytes, int, int]]:
        data = self._call(lambda: self.r.hgetall(self.k.dir(ino)))
        return [(name, *ENTRY.unpack(v)) for name, v in data.items()]

    def _count_entries(self, ino: int) -> int:
        return self._call(lambda: self.r.hlen(self.k.dir(ino)))

    def _get_attrs(self, inos: list[int]) -> list[Attr | None]:
        if not inos:
            return []
        vals = self._call(lambda: self.r.mget([self.k.attr(i) for i in inos]))
        return [Attr.unpack(v) if v else None for v in vals]

    def _list_xattrs(self, ino: int) -> list[bytes]:
        return self._call(lambda: self.r.hkeys(self.k.xattr(ino)))

    def _session_put(self, sid: int, heartbeat: float, info: dict) -> bool:
        def fn() -> bool:
            with self.r.pipeline(transaction=True) as p:
                p.zadd(self.k.sessions(), {str(sid): heartbeat})
                p.hset(self.k.session_infos(), str(sid), json.dumps(info))
                return bool(p.execute()[0])

        return self._call(fn)

    def _session_list(self) -> list[SessionInfo]:
        def fn() -> list[SessionInfo]:
            rows = self.r.zrange(self.k.sessions(), 0, -1, withscores=True)
            if not rows:
                return []
            infos = self.r.hmget(self.k.session_infos(), [r[0] for r in rows])
            return [SessionInfo(int(sid), hb, json.loads(info) if info else {})
                    for (sid, hb), info in zip(rows, infos, strict=True)]

        return self._call(fn)

    def _session_del(self, sid: int) -> None:
        def fn() -> None:
            with self.r.pipeline(transaction=True) as p:
                p.zrem(self.k.sessions(), str(sid))
                p.hdel(self.k.session_infos(), str(sid))
                p.delete(self.k.sustained(sid))
                p.execute()

        self._call(fn)

    def _sustained(self, sid: int) -> list[int]:
        return [int(i) for i in self._call(lambda: self.r.smembers(self.k.sustained(sid)))]

    def _delfiles(self, limit: int) -> list[tuple[int, int]]:
        return [_pair(m) for m in self._call(lambda: self.r.zrange(self.k.delfiles(), 0, limit - 1))]

    def _delfile_done(self, ino: int, length: int) -> None:
        self._call(lambda: self.r.zrem(self.k.delfiles(), f"{ino}:{length}"))

    def _trash(self, limit: int, before: float) -> list[tuple[int, int]]:
        rows = self._call(lambda: self.r.zrangebyscore(self.k.trash(), "-inf", before, start=0, num=limit))
        return [_pair(m) for m in rows]

    def _trash_done(self, slices: list[tuple[int, int]]) -> None:
        if slices:
            self._call(lambda: self.r.zrem(self.k.trash(), *[f"{i}:{s}" for i, s in slices]))

    def _pending_list(self) -> list[PendingSlice]:
        rows = self._call(lambda: self.r.hgetall(self.k.pending()))
        out = [PendingSlice(int(k), *(int(x) for x in v.split(b":"))) for k, v in rows.items()]
        return sorted(out, key=lambda p: p.id)

    def _range_add(self, sid: int, start: int, end: int) -> None:
        self._call(lambda: self.r.hset(self.k.ranges(sid), start, end))

    def _range_list(self, sid: int) -> list[tuple[int, int]]:
        rows = self._call(lambda: self.r.hgetall(self.k.ranges(sid)))
        return sorted((int(a), int(b)) for a, b in rows.items())

    def _range_used(self, sid: int, start: int) -> set[int]:
        return {int(i) for i in self._call(lambda: self.r.smembers(self.k.used(sid, start)))}

    def _range_drop(self, sid: int, start: int) -> None:
        def fn() -> None:
            with self.r.pipeline(transaction=True) as p:
                p.hdel(self.k.ranges(sid), start)
                p.delete(self.k.used(sid, start))
                p.execute()

        self._call(fn)

    def _pending_done(self, ids: list[int]) -> None:
        self._call(lambda: self.r.hdel(self.k.pending(), *ids))

    def close_engine(self) -> None:
        self.r.close()
