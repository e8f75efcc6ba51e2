"""The embedded engine: one SQLite file in WAL mode, safe for several mounts on one machine."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from cachefs.errors import ConfigError, MetaError
from cachefs.metrics import Metrics

from .engine import BaseMeta, Changes
from .retry import Retry
from .types import Attr, PendingSlice, SessionInfo, Settings, Slice

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS setting(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counter(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS node(ino INTEGER PRIMARY KEY, attr BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS edge(parent INTEGER, name BLOB, ino INTEGER NOT NULL, type INTEGER NOT NULL,
    PRIMARY KEY(parent, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunk(ino INTEGER, indx INTEGER, slices BLOB NOT NULL,
    PRIMARY KEY(ino, indx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS symlink(ino INTEGER PRIMARY KEY, target BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS xattr(ino INTEGER, name BLOB, value BLOB NOT NULL,
    PRIMARY KEY(ino, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS session(sid INTEGER PRIMARY KEY, heartbeat REAL NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sustained(sid INTEGER, ino INTEGER, PRIMARY KEY(sid, ino)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delfile(ino INTEGER PRIMARY KEY, length INTEGER NOT NULL, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trash(id INTEGER PRIMARY KEY, size INTEGER NOT NULL, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sliceref(id INTEGER PRIMARY KEY, extra INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending(id INTEGER PRIMARY KEY, sid INTEGER NOT NULL, ino INTEGER NOT NULL,
                                   size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS slicerange(sid INTEGER, start INTEGER, end INTEGER NOT NULL,
                                      PRIMARY KEY(sid, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sliceused(sid INTEGER, start INTEGER, id INTEGER,
                                     PRIMARY KEY(sid, start, id)) WITHOUT ROWID;
"""
TABLES = ["setting", "counter", "node", "edge", "chunk", "symlink", "xattr", "session", "sustained",
          "delfile", "trash", "sliceref", "pending", "slicerange", "sliceused"]


class SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def _one(self, sql: str, *args: object) -> tuple | None:
        return self.db.execute(sql, args).fetchone()

    def get_attr(self, ino: int) -> Attr | None:
        row = self._one("SELECT attr FROM node WHERE ino=?", ino)
        return Attr.unpack(row[0]) if row else None

    def set_attr(self, ino: int, attr: Attr) -> None:
        self.db.execute("INSERT OR REPLACE INTO node VALUES(?,?)", (ino, attr.pack()))

    def del_inode(self, ino: int) -> None:
        for table in ("node", "symlink", "xattr"):
            self.db.execute(f"DELETE FROM {table} WHERE ino=?", (ino,))

    def get_entry(self, parent: int, name: bytes) -> tuple[int, int] | None:
        row = self._one("SELECT ino, type FROM edge WHERE parent=? AND name=?", parent, name)
        return (row[0], row[1]) if row else None

    def set_entry(self, parent: int, name: bytes, ino: int, typ: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO edge VALUES(?,?,?,?)", (parent, name, ino, typ))

    def del_entry(self, parent: int, name: bytes) -> None:
        self.db.execute("DELETE FROM edge WHERE parent=? AND name=?", (parent, name))

    def has_entries(self, ino: int) -> bool:
        return self._one("SELECT 1 FROM edge WHERE parent=? LIMIT 1", ino) is not None

    def get_slices(self, ino: int, indx: int) -> list[Slice]:
        row = self._one("SELECT slices FROM chunk WHERE ino=? AND indx=?", ino, indx)
        return Slice.unpack_many(row[0]) if row else []

    def append_slices(self, ino: int, indx: int, slices: list[Slice]) -> None:
        row = self._one("SELECT slices FROM chunk WHERE ino=? AND indx=?", ino, indx)
        blob = (bytes(row[0]) if row else b"") + b"".join(s.pack() for s in slices)
        self.db.execute("INSERT OR REPLACE INTO chunk VALUES(?,?,?)", (ino, indx, blob))

    def set_slices(self, ino: int, indx: int, slices: list[Slice]) -> None:
        if slices:
            blob = b"".join(s.pack() for s in slices)
            self.db.execute("INSERT OR REPLACE INTO chunk VALUES(?,?,?)", (ino, indx, blob))
        else:
            self.db.execute("DELETE FROM chunk WHERE ino=? AND indx=?", (ino, indx))

    def chunk_indexes(self, ino: int) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT indx FROM chunk WHERE ino=? ORDER BY indx", (ino,))]

    def get_symlink(self, ino: int) -> bytes | None:
        row = self._one("SELECT target FROM symlink WHERE ino=?", ino)
        return bytes(row[0]) if row else None

    def set_symlink(self, ino: int, target: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO symlink VALUES(?,?)", (ino, target))

    def get_xattr(self, ino: int, name: bytes) -> bytes | None:
        row = self._one("SELECT value FROM xattr WHERE ino=? AND name=?", ino, name)
        return bytes(row[0]) if row else None

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO xattr VALUES(?,?,?)", (ino, name, value))

    def del_xattr(self, ino: int, name: bytes) -> None:
        self.db.execute("DELETE FROM xattr WHERE ino=? AND name=?", (ino, name))

    def add_usage(self, space: int, inodes: int) -> None:
        for name, n in (("usedSpace", space), ("totalInodes", inodes)):
            if n:
                _add_counter(self.db, name, n)

    def add_delfile(self, ino: int, length: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO delfile VALUES(?,?,?)", (ino, length, time.time()))

    def add_trash(self, slices: Iterable[tuple[int, int]]) -> None:
        now = time.time()
        self.db.executemany("INSERT OR IGNORE INTO trash VALUES(?,?,?)", [(i, s, now) for i, s in slices])

    def get_refs(self, ids: list[int]) -> dict[int, int]:
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT id, extra FROM sliceref WHERE id IN ({marks})", ids).fetchall()
        return {r[0]: r[1] for r in rows}

    def set_ref(self, sid: int, extra: int) -> None:
        if extra > 0:
            self.db.execute("INSERT OR REPLACE INTO sliceref VALUES(?,?)", (sid, extra))
        else:
            self.db.execute("DELETE FROM sliceref WHERE id=?", (sid,))

    def add_sustained(self, sid: int, ino: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO sustained VALUES(?,?)", (sid, ino))

    def del_sustained(self, sid: int, ino: int) -> None:
        self.db.execute("DELETE FROM sustained WHERE sid=? AND ino=?", (sid, ino))

    def add_pending(self, slice_id: int, sid: int, ino: int, size: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO pending VALUES(?,?,?,?)", (slice_id, sid, ino, size))

    def add_used(self, sid: int, start: int, slice_id: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO sliceused VALUES(?,?,?)", (sid, start, slice_id))


def _add_counter(db: sqlite3.Connection, name: str, n: int) -> int:
    return db.execute(
        "INSERT INTO counter VALUES(?,?) ON CONFLICT(name) DO UPDATE SET value=value+excluded.value "
        "RETURNING value",
        (name, n),
    ).fetchone()[0]


class SqliteMeta(BaseMeta):
    name = "sqlite3"

    def __init__(self, path: str, is_open: Callable[[int], bool] | None = None, metrics: Metrics | None = None,
                 retry_timeout: float = 60.0, observer: Callable[[Changes], None] | None = None) -> None:
        super().__init__(is_open, observer)
        # a local file has no outages to ride through (a busy writer is waited for by SQLite's
        # own busy timeout); the retry policy is kept for its bookkeeping
        self.retry = Retry(f"SQLite {path}", retry_timeout, metrics)
        if not path:
            raise ConfigError("sqlite3:// URL needs a file path, e.g. sqlite3:///var/lib/cachefs/vol.db")
        self.path = os.path.abspath(path)
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise ConfigError(f"directory of the SQLite file does not exist: {parent}")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        try:
            self._db().executescript(SCHEMA)
        except sqlite3.Error as e:
            raise MetaError(f"cannot use SQLite database {self.path}: {e}") from None

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA busy_timeout=60000")
            except sqlite3.Error as e:
                raise MetaError(f"cannot open SQLite database {self.path}: {e}") from None
            self._local.db = db
            with self._all_lock:
                self._all.append(db)
        return db

    class _lock_write:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")

    def _engine_txn(self, fn: Callable[[SqliteTx], T]) -> T:
        db = self._db()
        try:
            with self._lock_write(db):
                return fn(SqliteTx(db))
        except sqlite3.Error as e:
            raise MetaError(f"SQLite: {e}") from None

    def _read(self, fn: Callable[[SqliteTx], T]) -> T:
        try:
            return fn(SqliteTx(self._db()))
        except sqlite3.Error as e:
            raise MetaError(f"SQLite: {e}") from None

    def _incr(self, counter: str, n: int) -> int:
        return self._txn(lambda tx: _add_counter(tx.db, counter, n))

    def _get_counter(self, counter: str) -> int:
        row = self._db().execute("SELECT value FROM counter WHERE name=?", (counter,)).fetchone()
        return row[0] if row else 0

    def _load_settings(self) -> Settings | None:
        row = self._db().execute("SELECT value FROM setting WHERE name='format'").fetchone()
        return Settings.from_json(row[0]) if row else None

    def _store_settings(self, settings: Settings) -> None:
        self._txn(lambda tx: tx.db.execute("INSERT OR REPLACE INTO setting VALUES('format',?)",
                                           (settings.to_json(),)))

    def _reset(self) -> None:
        def fn(tx: SqliteTx) -> None:
            for table in TABLES:
                tx.db.execute(f"DELETE FROM {table}")

        self._txn(fn)

    def _all_chunks(self) -> Iterator[bytes]:
        for (blob,) in self._db().execute("SELECT slices FROM chunk"):
            yield bytes(blob)

    def _list_entries(self, ino: int) -> list[tuple[bytes, int, int]]:
        rows = self._db().execute("SELECT name, ino, type FROM edge WHERE parent=?", (ino,)).fetchall()
        return [(bytes(r[0]), r[1], r[2]) for r in rows]

    def _count_entries(self, ino: int) -> int:
        return self._db().execute("SELECT COUNT(*) FROM edge WHERE parent=?", (ino,)).fetchone()[0]

    def _get_attrs(self, inos: list[int]) -> list[Attr | None]:
        if not inos:
            return []
        marks = ",".join("?" * len(inos))
        rows = self._db().execute(f"SELECT ino, attr FROM node WHERE ino IN ({marks})", inos).fetchall()
        found = {r[0]: Attr.unpack(r[1]) for r in rows}
        return [found.get(i) for i in inos]

    def _list_xattrs(self, ino: int) -> list[bytes]:
        rows = self._db().execute("SELECT name FROM xattr WHERE ino=?", (ino,)).fetchall()
        return [bytes(r[0]) for r in rows]

    def _session_put(self, sid: int, heartbeat: float, info: dict) -> bool:
        def fn(tx: SqliteTx) -> bool:
            new = tx.db.execute("SELECT 1 FROM session WHERE sid=?", (sid,)).fetchone() is None
            tx.db.execute("INSERT OR REPLACE INTO session VALUES(?,?,?)", (sid, heartbeat, json.dumps(info)))
            return new

        return self._txn(fn)

    def _session_list(self) -> list[SessionInfo]:
        rows = self._db().execute("SELECT sid, heartbeat, info FROM session ORDER BY sid").fetchall()
        return [SessionInfo(r[0], r[1], json.loads(r[2])) for r in rows]

    def _session_del(self, sid: int) -> None:
        def fn(tx: SqliteTx) -> None:
            tx.db.execute("DELETE FROM session WHERE sid=?", (sid,))
            tx.db.execute("DELETE FROM sustained WHERE sid=?", (sid,))

        self._txn(fn)

    def _sustained(self, sid: int) -> list[int]:
        rows = self._db().execute("SELECT ino FROM sustained WHERE sid=?", (sid,)).fetchall()
        return [r[0] for r in rows]

    def _delfiles(self, limit: int) -> list[tuple[int, int]]:
        rows = self._db().execute("SELECT ino, length FROM delfile ORDER BY added LIMIT ?", (limit,))
        return [(r[0], r[1]) for r in rows.fetchall()]

    def _delfile_done(self, ino: int, length: int) -> None:
        self._txn(lambda tx: tx.db.execute("DELETE FROM delfile WHERE ino=?", (ino,)))

    def _trash(self, limit: int, before: float) -> list[tuple[int, int]]:
        rows = self._db().execute("SELECT id, size FROM trash WHERE added<=? ORDER BY added LIMIT ?",
                                  (before, limit))
        return [(r[0], r[1]) for r in rows.fetchall()]

    def _trash_done(self, slices: list[tuple[int, int]]) -> None:
        self._txn(lambda tx: tx.db.executemany("DELETE FROM trash WHERE id=?", [(i,) for i, _ in slices]))

    def _pending_list(self) -> list[PendingSlice]:
        rows = self._db().execute("SELECT id, sid, ino, size FROM pending ORDER BY id").fetchall()
        return [PendingSlice(*r) for r in rows]

    def _range_add(self, sid: int, start: int, end: int) -> None:
        self._txn(lambda tx: tx.db.execute("INSERT OR REPLACE INTO slicerange VALUES(?,?,?)", (sid, start, end)))

    def _range_list(self, sid: int) -> list[tuple[int, int]]:
        rows = self._db().execute("SELECT start, end FROM slicerange WHERE sid=? ORDER BY start", (sid,))
        return [(r[0], r[1]) for r in rows.fetchall()]

    def _range_used(self, sid: int, start: int) -> set[int]:
        rows = self._db().execute("SELECT id FROM sliceused WHERE sid=? AND start=?", (sid, start))
        return {r[0] for r in rows.fetchall()}

    def _range_drop(self, sid: int, start: int) -> None:
        def fn(tx: SqliteTx) -> None:
            tx.db.execute("DELETE FROM slicerange WHERE sid=? AND start=?", (sid, start))
            tx.db.execute("DELETE FROM sliceused WHERE sid=? AND start=?", (sid, start))

        self._txn(fn)

    def _pending_done(self, ids: list[int]) -> None:
        self._txn(lambda tx: tx.db.executemany("DELETE FROM pending WHERE id=?", [(i,) for i in ids]))

    def close_engine(self) -> None:
        with self._all_lock:
            for db in self._all:
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()
