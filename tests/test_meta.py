"""The shared engine suite: every test runs against SQLite, Redis and a Redis Cluster."""

from __future__ import annotations

import errno
import threading
import time
import uuid

import pytest

from cachefs.errors import ConfigError, FSError
from cachefs.meta import open_meta
from cachefs.meta.records import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE
from cachefs.meta.types import CHUNK_SIZE, ROOT_INODE, TYPE_DIR, TYPE_FILE, PendingSlice, Settings, Slice

ENGINES = ["sqlite", "redis", "cluster"]


@pytest.fixture(params=ENGINES)
def meta_url(request, volumes):
    return volumes.meta_url(request.param)


@pytest.fixture
def meta(meta_url):
    m = open_meta(meta_url)
    m.format(Settings(name="t", uuid=str(uuid.uuid4()), storage="mem", bucket="x"))
    m.new_session({"test": True})
    yield m
    m.close_engine()


def err(fn, *args, **kw) -> int:
    with pytest.raises(FSError) as e:
        fn(*args, **kw)
    return e.value.errno


def mkfile(meta, parent, name, mode=0o644):
    return meta.mknod(parent, name, TYPE_FILE, mode, 0, 0)[0]


def mkdir(meta, parent, name):
    return meta.mknod(parent, name, TYPE_DIR, 0o755, 0, 0)[0]


def names(meta, ino):
    return sorted(n for n, _, _ in meta.readdir(ino))


def test_format_twice_needs_force(meta_url):
    m = open_meta(meta_url)
    s = Settings(name="a", uuid="1", storage="mem")
    m.format(s)
    with pytest.raises(ConfigError, match="already formatted"):
        m.format(Settings(name="b", uuid="2", storage="mem"))
    m.format(Settings(name="b", uuid="2", storage="mem"), force=True)
    assert open_meta(meta_url).load().name == "b"


def test_unformatted(meta_url):
    with pytest.raises(ConfigError, match="not formatted"):
        open_meta(meta_url).load()


def test_create_lookup_and_nlink(meta):
    d = mkdir(meta, ROOT_INODE, b"d")
    f = mkfile(meta, d, b"f")
    assert meta.lookup(d, b"f")[0] == f
    assert meta.getattr(ROOT_INODE).nlink == 3
    assert meta.getattr(d).nlink == 2
    assert meta.lookup(d, b"..")[0] == ROOT_INODE
    assert err(meta.mknod, d, b"f", TYPE_FILE, 0o644, 0, 0) == errno.EEXIST
    assert err(meta.mknod, f, b"x", TYPE_FILE, 0o644, 0, 0) == errno.ENOTDIR
    assert err(meta.lookup, d, b"nope") == errno.ENOENT
    assert err(meta.mknod, d, b"x" * 256, TYPE_FILE, 0o644, 0, 0) == errno.ENAMETOOLONG


def test_lookup_open_answers_as_lookup_then_open_file(meta):
    d = mkdir(meta, ROOT_INODE, b"d")
    f = mkfile(meta, d, b"f")
    empty = mkfile(meta, d, b"empty")
    meta.write(f, [(0, Slice(0, meta.new_slice_id(), 10, 0, 10))])
    ino, attr, first = meta.lookup_open(d, b"f")
    assert (ino, attr, first) == (f, *meta.open_file(f))
    assert first and first[0].len == 10
    assert meta.lookup_open(d, b"empty")[::2] == (empty, [])
    assert meta.lookup_open(ROOT_INODE, b"d")[::2] == (d, None)
    assert meta.lookup_open(d, b"..")[0] == ROOT_INODE
    assert err(meta.lookup_open, d, b"nope") == errno.ENOENT
    assert err(meta.lookup_open, d, b"x" * 256) == errno.ENAMETOOLONG


def test_lookup_open_many_answers_each_as_lookup_open(meta):
    d = mkdir(meta, ROOT_INODE, b"d")
    f = mkfile(meta, d, b"f")
    g = mkfile(meta, ROOT_INODE, b"g")
    meta.write(f, [(0, Slice(0, meta.new_slice_id(), 10, 0, 10))])
    pairs = [(d, b"f"), (d, b"nope"), (ROOT_INODE, b"g"), (d, b".."), (d, b"x" * 256), (ROOT_INODE, b"d"), (g, b"x")]
    got = meta.lookup_open_many(pairs)
    assert got[0] == meta.lookup_open(d, b"f") and got[0][0] == f
    assert isinstance(got[1], FSError) and got[1].errno == errno.ENOENT
    assert got[2][0] == g and got[2][2] == []
    assert got[3][0] == ROOT_INODE
    assert isinstance(got[4], FSError) and got[4].errno == errno.ENAMETOOLONG
    assert got[5][::2] == (d, None)
    assert isinstance(got[6], FSError)  # a file is not a directory: nothing found under it
    assert meta.lookup_open_many([]) == []


def test_lookup_many_answers_each_as_lookup(meta):
    d = mkdir(meta, ROOT_INODE, b"d")
    f = mkfile(meta, d, b"f")
    pairs = [(d, b"f"), (d, b"nope"), (d, b"."), (d, b".."), (d, b"x" * 256), (ROOT_INODE, b"d"), (f, b"x")]
    got = meta.lookup_many(pairs)
    assert got[0] == meta.lookup(d, b"f") and got[0][0] == f
    assert isinstance(got[1], FSError) and got[1].errno == errno.ENOENT
    assert got[2][0] == d and got[3][0] == ROOT_INODE
    assert isinstance(got[4], FSError) and got[4].errno == errno.ENAMETOOLONG
    assert got[5] == meta.lookup(ROOT_INODE, b"d")
    assert isinstance(got[6], FSError)  # a file is not a directory: nothing found under it
    assert meta.lookup_many([]) == []


def test_setgid_directory_inheritance(meta):
    d = mkdir(meta, ROOT_INODE, b"d")
    meta.setattr(d, mode=0o2775, gid=42)
    f, a = meta.mknod(d, b"f", TYPE_FILE, 0o644, 7, 7)
    sub, sa = meta.mknod(d, b"s", TYPE_DIR, 0o755, 7, 7)
    assert a.gid == 42 and sa.gid == 42 and sa.mode & 0o2000


def test_unlink_rmdir(meta):
    d = mkdir(meta, ROOT_INODE, b"d")
    mkfile(meta, d, b"f")
    assert err(meta.rmdir, ROOT_INODE, b"d") == errno.ENOTEMPTY
    assert err(meta.unlink, ROOT_INODE, b"d") == errno.EISDIR
    assert err(meta.rmdir, d, b"f") == errno.ENOTDIR
    meta.unlink(d, b"f")
    meta.rmdir(ROOT_INODE, b"d")
    assert names(meta, ROOT_INODE) == []
    assert meta.getattr(ROOT_INODE).nlink == 2


def test_hard_links(meta):
    f = mkfile(meta, ROOT_INODE, b"a")
    meta.link(f, ROOT_INODE, b"b")
    assert meta.getattr(f).nlink == 2
    assert err(meta.link, ROOT_INODE, ROOT_INODE, b"c") == errno.EPERM
    meta.unlink(ROOT_INODE, b"a")
    assert meta.getattr(f).nlink == 1
    meta.unlink(ROOT_INODE, b"b")
    assert err(meta.getattr, f) == errno.ENOENT


def test_rename_cases(meta):
    a = mkfile(meta, ROOT_INODE, b"a")
    b = mkfile(meta, ROOT_INODE, b"b")
    d1 = mkdir(meta, ROOT_INODE, b"d1")
    d2 = mkdir(meta, ROOT_INODE, b"d2")
    # replace a file
    meta.rename(ROOT_INODE, b"a", ROOT_INODE, b"b")
    assert meta.lookup(ROOT_INODE, b"b")[0] == a
    assert err(meta.getattr, b) == errno.ENOENT
    # noreplace
    mkfile(meta, ROOT_INODE, b"c")
    assert err(meta.rename, ROOT_INODE, b"b", ROOT_INODE, b"c", RENAME_NOREPLACE) == errno.EEXIST
    # file over dir, dir over file
    assert err(meta.rename, ROOT_INODE, b"b", ROOT_INODE, b"d1") == errno.EISDIR
    assert err(meta.rename, ROOT_INODE, b"d1", ROOT_INODE, b"b") == errno.ENOTDIR
    # dir over empty dir across parents, nlink bookkeeping
    sub = mkdir(meta, d1, b"sub")
    meta.rename(d1, b"sub", ROOT_INODE, b"d2")
    assert meta.lookup(ROOT_INODE, b"d2")[0] == sub
    assert err(meta.getattr, d2) == errno.ENOENT
    assert meta.getattr(d1).nlink == 2
    assert meta.getattr(ROOT_INODE).nlink == 4  # d1, d2(sub)
    assert meta.getattr(sub).parent == ROOT_INODE
    # dir over non-empty dir
    mkfile(meta, sub, b"x")
    assert err(meta.rename, ROOT_INODE, b"d1", ROOT_INODE, b"d2") == errno.ENOTEMPTY
    # into own subtree
    assert err(meta.rename, ROOT_INODE, b"d2", sub, b"loop") == errno.EINVAL
    deep = mkdir(meta, sub, b"deep")
    assert err(meta.rename, ROOT_INODE, b"d2", deep, b"loop") == errno.EINVAL
    # exchange a file and a dir across parents
    meta.rename(ROOT_INODE, b"b", sub, b"deep", RENAME_EXCHANGE)
    assert meta.lookup(sub, b"deep")[0] == a
    assert meta.lookup(ROOT_INODE, b"b")[0] == deep
    assert meta.getattr(deep).parent == ROOT_INODE
    assert meta.getattr(sub).nlink == 2
    assert err(meta.rename, ROOT_INODE, b"zz", ROOT_INODE, b"c", RENAME_EXCHANGE) == errno.ENOENT
    assert err(meta.rename, ROOT_INODE, b"c", ROOT_INODE, b"none", RENAME_EXCHANGE) == errno.ENOENT


def test_rename_same_inode_is_noop(meta):
    f = mkfile(meta, ROOT_INODE, b"a")
    meta.link(f, ROOT_INODE, b"b")
    meta.rename(ROOT_INODE, b"a", ROOT_INODE, b"b")
    assert names(meta, ROOT_INODE) == [b"a", b"b"]


def test_write_read_truncate(meta):
    f = mkfile(meta, ROOT_INODE, b"f")
    s1 = Slice(0, meta.new_slice_id(), 100, 0, 100)
    attr = meta.write(f, [(0, s1), (1, Slice(10, meta.new_slice_id(), 5, 0, 5))])
    assert attr.length == CHUNK_SIZE + 15
    assert meta.read_chunk(f, 0) == [s1]
    attr = meta.setattr(f, length=50)
    assert attr.length == 50
    assert meta.read_chunk(f, 0) == [s1, Slice(50, 0, 0, 0, CHUNK_SIZE - 50)]
    assert meta.read_chunk(f, 1) == []
    trash = meta.trash_batch()
    assert len(trash) == 1 and trash[0][1] == 5
    meta.trash_done(trash)
    assert meta.trash_batch() == []


def test_fallocate(meta):
    f = mkfile(meta, ROOT_INODE, b"f")
    assert meta.fallocate(f, 0, 0, 1000).length == 1000
    assert meta.fallocate(f, 1, 0, 5000).length == 1000  # keep size
    meta.fallocate(f, 3, 100, 50)  # punch hole where nothing is stored: nothing to record
    assert meta.read_chunk(f, 0) == []
    meta.write(f, [(0, Slice(0, meta.new_slice_id(), 1000, 0, 1000))])
    meta.fallocate(f, 3, 100, 50)  # punch hole in data
    assert meta.read_chunk(f, 0)[-1] == Slice(100, 0, 0, 0, 50)
    assert err(meta.fallocate, f, 2, 0, 10) == errno.EINVAL  # punch without keep size
    assert err(meta.fallocate, f, 0x8, 0, 10) == errno.EOPNOTSUPP


def test_compact_swap_checks_prefix(meta):
    f = mkfile(meta, ROOT_INODE, b"f")
    a, b = Slice(0, 10, 10, 0, 10), Slice(5, 11, 10, 0, 10)
    meta.write(f, [(0, a), (0, b)])
    c = Slice(0, 12, 15, 0, 15)
    assert not meta.compact_chunk(f, 0, [b], [c])
    assert meta.compact_chunk(f, 0, [a, b], [c])
    assert meta.read_chunk(f, 0) == [c]
    assert sorted(meta.trash_batch()) == [(10, 10), (11, 10)]


def test_xattrs(meta):
    f = mkfile(meta, ROOT_INODE, b"f")
    meta.setxattr(f, b"user.a", b"1")
    assert meta.getxattr(f, b"user.a") == b"1"
    assert err(meta.setxattr, f, b"user.a", b"2", XATTR_CREATE) == errno.EEXIST
    assert err(meta.setxattr, f, b"user.b", b"2", XATTR_REPLACE) == errno.ENODATA
    meta.setxattr(f, b"user.a", b"3", XATTR_REPLACE)
    assert meta.listxattr(f) == [b"user.a"]
    meta.removexattr(f, b"user.a")
    assert err(meta.getxattr, f, b"user.a") == errno.ENODATA
    assert err(meta.removexattr, f, b"user.a") == errno.ENODATA


def test_unlinked_open_file_is_sustained_until_close(meta):
    f = mkfile(meta, ROOT_INODE, b"f")
    meta.write(f, [(0, Slice(0, 99, 10, 0, 10))])
    meta.is_open = lambda ino: ino == f
    meta.unlink(ROOT_INODE, b"f")
    assert meta.getattr(f).nlink == 0
    assert meta.read_chunk(f, 0)
    assert meta._sustained(meta.sid) == [f]
    meta.close(f)
    assert err(meta.getattr, f) == errno.ENOENT
    assert meta.deleted_files() == [(f, 10)]
    meta.delete_file_data(f, 10)
    assert meta.deleted_files() == []
    assert meta.trash_batch() == [(99, 10)]


def test_dead_session_is_cleaned(meta, meta_url):
    other = open_meta(meta_url)
    other.load()
    other.new_session({})
    f = mkfile(other, ROOT_INODE, b"f")
    other.is_open = lambda ino: True
    other.unlink(ROOT_INODE, b"f")
    other._session_put(other.sid, 0.0, {})  # last heartbeat long ago
    assert meta.clean_stale_sessions(10) == [other.sid]
    assert err(meta.getattr, f) == errno.ENOENT
    assert [s.sid for s in meta.sessions()] == [meta.sid]


def test_no_session_is_taken_for_dead_by_a_listing_that_waited_out_an_outage(meta, meta_url):
    """A cleaner that had seen no outage before it listed the sessions, but whose listing waited
    one out, must not take the others for dead: their heartbeats could not land either."""
    other = open_meta(meta_url)
    other.load()
    other.new_session({})
    other._session_put(other.sid, 0.0, {})  # silent, as every session is during an outage
    real = meta._session_list

    def through_an_outage():
        meta.retry._failed(time.monotonic(), Exception("connection refused"))
        meta.retry._recovered()  # the engine answers again: the listing returns
        return real()

    meta._session_list = through_an_outage
    assert meta.clean_stale_sessions(10) == []
    meta._session_list = real
    meta.retry.connected_since -= 10  # once connected for a session timeout, it may clean
    assert meta.clean_stale_sessions(10) == [other.sid]


def test_pending_slices_recorded_with_commit_and_kept_past_session(meta, meta_url):
    f = mkfile(meta, ROOT_INODE, b"f")
    s1, s2 = (Slice(0, meta.new_slice_id(), 10, 0, 10), Slice(10, meta.new_slice_id(), 7, 0, 7))
    meta.write(f, [(0, s1)], pending=[s1.id])
    meta.write(f, [(0, s2)])  # write-through: not pending
    assert meta.pending_slices() == [PendingSlice(s1.id, meta.sid, f, 10)]
    other = open_meta(meta_url)
    other.load()
    other.new_session({})
    s3 = Slice(17, other.new_slice_id(), 3, 0, 3)
    other.write(f, [(0, s3)], pending={s3.id})
    other._session_put(other.sid, 0.0, {})
    assert meta.clean_stale_sessions(10) == [other.sid]
    # a dead writer's pending slices stay listed: its node may come back and upload them
    assert [(p.id, p.sid) for p in meta.pending_slices()] == [(s1.id, meta.sid), (s3.id, other.sid)]
    meta.pending_done([s1.id, s3.id])
    meta.pending_done([s1.id])  # twice is harmless (a re-upload after a crash)
    assert meta.pending_slices() == []
    other.close_engine()


def test_readdir_snapshot_large(meta):
    d = mkdir(meta, ROOT_INODE, b"d")
    for i in range(3000):
        mkfile(meta, d, b"f%05d" % i)
    entries = meta.readdir(d)
    assert len(entries) == 3000
    assert all(a.type == TYPE_FILE for _, _, a in entries)


def test_listing_gives_readdir_entries_up_to_a_limit(meta):
    d = mkdir(meta, ROOT_INODE, b"d")
    inos = {b"f%d" % i: mkfile(meta, d, b"f%d" % i) for i in range(30)}
    got = meta.listing(d, 30)
    assert {n: i for n, i, _ in got} == inos
    assert all(a.type == TYPE_FILE and a.mode & 0o777 == 0o644 for _, _, a in got)
    assert meta.listing(d, 29) is None  # too many to fetch for lookups
    assert meta.listing(mkdir(meta, ROOT_INODE, b"empty"), 0) == []


def test_concurrent_creates_lose_nothing(meta, meta_url):
    d = mkdir(meta, ROOT_INODE, b"d")
    clients = [open_meta(meta_url) for _ in range(4)]
    for c in clients:
        c.load()
    errors = []

    def work(c, k):
        try:
            for i in range(100):
                c.mknod(d, b"c%d-%d" % (k, i), TYPE_FILE, 0o644, 0, 0)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c, k)) for k, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(meta.readdir(d)) == 400
    assert meta.statfs()[3] == 402


def test_concurrent_renames_keep_tree_consistent(meta, meta_url):
    a = mkdir(meta, ROOT_INODE, b"a")
    b = mkdir(meta, ROOT_INODE, b"b")
    for i in range(20):
        mkfile(meta, a, b"f%d" % i)
    c1, c2 = open_meta(meta_url), open_meta(meta_url)
    c1.load()
    c2.load()

    def mover(c, src, dst):
        for i in range(20):
            try:
                c.rename(src, b"f%d" % i, dst, b"f%d" % i)
            except FSError:
                pass

    t1 = threading.Thread(target=mover, args=(c1, a, b))
    t2 = threading.Thread(target=mover, args=(c2, b, a))
    t1.start()
    t2.start()
    t1.join()
    t2.join()
    assert len(names(meta, a)) + len(names(meta, b)) == 20


def test_symlink(meta):
    s, attr = meta.symlink(ROOT_INODE, b"l", b"target/x", 0, 0)
    assert meta.readlink(s) == b"target/x"
    assert attr.length == 8


def test_clone_shares_slices_with_reference_counts(meta):
    f = mkfile(meta, ROOT_INODE, b"f")
    meta.write(f, [(0, Slice(0, 500, 10, 0, 10)), (1, Slice(0, 501, 10, 0, 10))])
    c, attr = meta.clone(f, ROOT_INODE, b"c", 0, 0)
    assert attr.length == CHUNK_SIZE + 10
    assert meta.read_chunk(c, 1) == meta.read_chunk(f, 1)
    assert err(meta.clone, f, ROOT_INODE, b"c", 0, 0) == errno.EEXIST
    assert err(meta.clone, ROOT_INODE, ROOT_INODE, b"d", 0, 0) == errno.EISDIR
    meta.unlink(ROOT_INODE, b"f")
    for ino, length in meta.deleted_files():
        meta.delete_file_data(ino, length)
    assert meta.trash_batch() == []  # the clone still references both slices
    meta.setattr(c, length=5)  # drops chunk 1: its last reference
    assert meta.trash_batch() == [(501, 10)]
    meta.unlink(ROOT_INODE, b"c")
    for ino, length in meta.deleted_files():
        meta.delete_file_data(ino, length)
    assert sorted(meta.trash_batch()) == [(500, 10), (501, 10)]


def test_commit_whose_answer_was_lost_is_not_applied_twice(volumes, monkeypatch):
    """The connection drops after EXEC reached Redis: the retry finds the commit's marker and
    answers what the commit did (a create reports its file, not EEXIST)."""
    import redis

    m = open_meta(volumes.meta_url("redis"))
    m.format(Settings(name="t", uuid=str(uuid.uuid4()), storage="mem", bucket="x"))
    real = redis.client.Pipeline.execute
    dropped = []

    def execute(self, *a, **kw):
        transaction = self.explicit_transaction
        out = real(self, *a, **kw)
        if not dropped and transaction:
            dropped.append(1)
            raise redis.ConnectionError("connection lost after EXEC")
        return out

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    ino = mkfile(m, ROOT_INODE, b"f")
    assert dropped and m.lookup(ROOT_INODE, b"f")[0] == ino
    assert names(m, ROOT_INODE) == [b"f"]
    m.close_engine()


def test_capped_retry_shortens_the_calls_riding_an_outage_already(tmp_path):
    from cachefs.errors import MetaError
    from cachefs.meta.retry import Outage, Retry

    r = Retry("engine", timeout=60.0)
    started, failed = threading.Event(), []

    def down():
        started.set()
        raise Outage("down")

    def call():
        try:
            r.call(down)
        except MetaError as e:
            failed.append((time.monotonic(), e))

    t = threading.Thread(target=call)
    t.start()
    started.wait(5)
    time.sleep(0.2)
    t0 = time.monotonic()
    with r.capped(0.5):
        t.join(10)
        with pytest.raises(MetaError, match="unreachable for 0.5 s"):
            r.call(down)
    assert failed and failed[0][0] - t0 < 3  # not the 60 s it began with
    assert r.timeout == 60.0  # restored after the block


def test_outage_waits_then_fails_with_eio_after_the_retry_timeout(tmp_path):
    from cachefs.errors import MetaError
    from cachefs.meta.retry import Outage, Retry
    from cachefs.metrics import Metrics

    metrics = Metrics()
    r = Retry("engine", timeout=0.3, metrics=metrics)
    calls = []

    def down():
        calls.append(1)
        raise Outage("down")

    with pytest.raises(MetaError, match="unreachable for 0.3 s"):
        r.call(down)
    assert len(calls) > 2 and metrics.value("cachefs_meta_retries_total") == len(calls) - 1
    state = iter([Outage("x"), Outage("x"), None])

    def flaky():
        e = next(state)
        if e:
            raise e
        return "ok"

    r.timeout = 10
    assert r.call(flaky) == "ok"
    assert metrics.value("cachefs_meta_outage_seconds_total") > 0
    assert not r.settled(60) and r.settled(0)


@pytest.mark.parametrize("offset", [1 << 50, 1 << 62])
def test_sparse_file_costs_what_its_data_costs(meta, offset):
    """One byte far out: truncate, fallocate, clone, listing the file's slices, unlink and the
    deletion of its data each touch the chunks that hold data, not the 2^24+ chunks before."""
    import time

    def quick(fn, *args, **kw):
        t0 = time.monotonic()
        out = fn(*args, **kw)
        assert time.monotonic() - t0 < 2.0, fn.__name__
        return out

    f = mkfile(meta, ROOT_INODE, b"sparse")
    indx, pos = divmod(offset, CHUNK_SIZE)
    head = Slice(0, meta.new_slice_id(), 10, 0, 10)
    tail = Slice(pos, meta.new_slice_id(), 1, 0, 1)
    assert quick(meta.write, f, [(0, head), (indx, tail)]).length == offset + 1
    assert quick(meta.chunk_indexes, f) == [0, indx]
    assert sorted(quick(meta.file_slices, f)) == sorted([(head.id, 10), (tail.id, 1)])
    _, used, _, _ = meta.statfs()
    assert used < 1 << 20  # allocated bytes, not the file's length
    g, _ = quick(meta.clone, f, ROOT_INODE, b"copy", 0, 0)
    assert quick(meta.chunk_indexes, g) == [0, indx]
    quick(meta.fallocate, f, 3, 5, offset)  # punch everything but the first 5 bytes
    quick(meta.setattr, f, length=offset // 2)  # drops the far chunk
    assert quick(meta.chunk_indexes, f) == [0]
    quick(meta.setattr, g, length=offset + offset // 2)  # grows: nothing to write
    assert err(meta.setattr, g, length=1 << 63) == errno.EFBIG
    meta.unlink(ROOT_INODE, b"copy")
    for ino, length in meta.deleted_files():
        quick(meta.delete_file_data, ino, length)
    assert meta.chunk_indexes(g) == []
    assert (tail.id, 1) in meta.trash_batch()
