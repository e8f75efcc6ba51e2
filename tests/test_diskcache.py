"""The disk cache on its own: entries, partial reads, corruption, index rebuild, eviction."""

from __future__ import annotations

import errno
import os
import time

import pytest

from cachefs import directio
from cachefs.diskcache import CacheBusy, DiskCache
from cachefs.errors import ChecksumError


def files(root) -> list[str]:
    """The cache's entry files (not its owner lock)."""
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f != ".owner"]


def test_put_get_and_partial_reads(tmp_path):
    c = DiskCache([str(tmp_path)], "u", 1 << 30)
    data = os.urandom(300_000)
    c.put("v/chunks/0/0/1_0_300000", data)
    assert c.contains("v/chunks/0/0/1_0_300000")
    assert c.get("v/chunks/0/0/1_0_300000") == data
    for off, n in ((0, 1), (65_530, 20), (200_000, 100_000), (299_999, 1)):
        assert c.read_range("v/chunks/0/0/1_0_300000", off, n) == data[off : off + n]
    assert c.get("missing") is None and c.read_range("missing", 0, 1) is None


@pytest.mark.parametrize("refused", [False, True])
def test_direct_io_and_its_fallback(tmp_path, monkeypatch, refused):
    """Entries are written around the page cache where the file system allows O_DIRECT, and
    through it where it answers EINVAL (older tmpfs, some network file systems); both read back
    every range, whole and in parts, and are cut back to their length."""
    if refused:
        def refuse(*_a, **_k):
            raise OSError(errno.EINVAL, "Invalid argument")

        monkeypatch.setattr(directio, "write_atomic_direct", refuse)
    c = DiskCache([str(tmp_path)], "u", 1 << 30)
    for size in (1, 4095, 4096, 65_536 * 3 + 7, 4 << 20):
        data = os.urandom(size)
        c.put(f"k{size}", data)
        assert c.get(f"k{size}") == data
        assert c.read_range(f"k{size}", size // 2, (size + 1) // 2) == data[size // 2 :]
    assert c.dirs[0].writer.direct is not refused
    assert c.metrics.cache_errors._value.get() == 0
    assert sorted(os.path.getsize(f) for f in files(tmp_path))[0] < 4096  # cut back to length
    assert os.path.getsize(max(files(tmp_path), key=os.path.getsize)) == (4 << 20) + 12 + 8 * 64


def test_corruption_is_detected_where_it_is(tmp_path):
    c = DiskCache([str(tmp_path)], "u", 1 << 30)
    data = os.urandom(200_000)
    c.put("k", data)
    (path,) = files(tmp_path)
    raw = bytearray(open(path, "rb").read())
    raw[-10] ^= 1  # last segment
    open(path, "wb").write(raw)
    assert c.read_range("k", 0, 1000) == data[:1000]  # untouched segment still verifies
    with pytest.raises(ChecksumError):
        c.read_range("k", 199_000, 100)
    with pytest.raises(ChecksumError):
        c.get("k")


def test_an_entry_whose_table_is_not_in_memory_is_read_in_one_pread_and_still_verified(tmp_path, monkeypatch):
    """A warm small file's first read: the key gives the table's size, so table and data come in
    one pread; a flipped byte in either, a cut entry, or an entry laid out with another segment
    size than today's is still read right or refused, never wrong bytes."""
    import struct

    import xxhash

    from cachefs.cacheview import CacheView
    from cachefs.diskcache import HEADER, MAGIC

    key, data = "v/chunks/0/0/7_0_200000", os.urandom(200_000)
    first = DiskCache([str(tmp_path)], "u", 1 << 30)
    first.put(key, data)
    first.close()
    (path,) = files(tmp_path)
    reads = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append((n, off)) or real(fd, n, off))
    c = DiskCache([str(tmp_path)], "u", 1 << 30)
    view = CacheView([str(tmp_path)], "u")
    for reader in (c, view):
        reads.clear()
        assert reader.read_range(key, 1000, 5000) == data[1000:6000]
        assert len(reads) == 1
    assert c.read_range(key, 0, 10) == data[:10] and len(reads) == 2  # the table now known: data only
    good = open(path, "rb").read()

    def damaged(at: int | None = None, cut: int = 0) -> None:
        raw = bytearray(good)
        if at is not None:
            raw[at] ^= 1
        open(path, "wb").write(raw[: len(raw) - cut])

    for at, cut in ((60, 0), (14, 0), (None, 1)):  # first segment's data, its checksum, cut short
        damaged(at, cut)
        assert view.get(key) is None
        c._tables.clear()
        with pytest.raises(ChecksumError):
            c.get(key)
    seg = 32 << 10  # written by a version with smaller segments: the header's layout wins
    sums = b"".join(struct.pack("<Q", xxhash.xxh64_intdigest(data[i : i + seg])) for i in range(0, len(data), seg))
    open(path, "wb").write(HEADER.pack(MAGIC, len(data), seg) + sums + data)
    c._tables.clear()
    assert c.read_range(key, 100, 70_000) == data[100:70_100]
    assert view.get(key) == data


def test_index_rebuilt_and_torn_files_removed(tmp_path):
    c = DiskCache([str(tmp_path)], "u", 1 << 30)
    c.put("a/b", b"x" * 1000)
    torn = os.path.join(os.path.dirname(files(tmp_path)[0]), "b.tmp.1234")
    open(torn, "wb").write(b"partial")
    with pytest.raises(CacheBusy):  # one keeper per directory
        DiskCache([str(tmp_path)], "u", 1 << 30)
    c.close()
    again = DiskCache([str(tmp_path)], "u", 1 << 30)
    assert again.get("a/b") == b"x" * 1000
    assert not os.path.exists(torn)
    assert again.used == c.used


def test_a_reader_of_anothers_cache_reads_verified_entries_and_writes_nothing(tmp_path):
    from cachefs.cacheview import CacheView

    keeper = DiskCache([str(tmp_path / "a"), str(tmp_path / "b")], "u", 1 << 30)
    blocks = {f"v/chunks/0/0/{i}_0_200000": os.urandom(200_000) for i in range(8)}
    for k, v in blocks.items():
        keeper.put(k, v)
    view = CacheView.open([str(tmp_path / "a"), str(tmp_path / "b")], "u")
    for k, v in blocks.items():
        assert view.contains(k)
        assert view.get(k) == v
        assert view.read_range(k, 70_000, 1000) == v[70_000:71_000]
    assert view.get("v/chunks/0/0/99_0_1") is None
    view.put("v/chunks/0/0/99_0_1", b"x")  # the keeper's to keep
    assert not keeper.contains("v/chunks/0/0/99_0_1") and len(files(tmp_path)) == 8
    k = next(iter(blocks))
    path = keeper.entry_path(k)
    with open(path, "r+b") as f:  # a flipped byte: a miss for the reader, never wrong bytes
        f.seek(-10, os.SEEK_END)
        b = f.read(1)
        f.seek(-10, os.SEEK_END)
        f.write(bytes([b[0] ^ 1]))
    assert view.get(k) is None
    assert CacheView.open([str(tmp_path / "nope")], "u") is None


def test_eviction_by_size_keeps_the_newest_and_survives_a_cyclic_scan(tmp_path):
    c = DiskCache([str(tmp_path / "s")], "u", 3 * 110_000)
    for k in "abcdefgh":
        c.put(k, os.urandom(100_000))
        assert c.contains(k)  # the entry just used is never the one evicted
        assert c.used <= 3 * 110_000
    # an epoch-style scan over 25 entries with room for 20: LRU would evict each entry just
    # before its next read and hit nothing; the older of two random ones keeps most of them
    scan = DiskCache([str(tmp_path / "scan")], "u", 20 * 1100)
    data = {f"k{i}": os.urandom(1000) for i in range(25)}
    hits = 0
    for epoch in range(8):
        for k, v in data.items():
            got = scan.get(k)
            if got is None:
                scan.put(k, v)
            else:
                assert bytes(got) == v
                hits += epoch >= 3
    assert hits > 0.4 * 5 * 25, hits
    full = DiskCache([str(tmp_path / "f")], "u", 1 << 30, free_ratio=0.99999)
    full.put("x", b"1" * 1000)
    assert not full.contains("x")  # the disk never has that much free space


@pytest.mark.parametrize("refused", [False, True])
def test_atomic_writer_reads_back_what_it_wrote(tmp_path, monkeypatch, refused):
    """Staging's writer: whole files in and out, direct where allowed, fsynced on request."""
    if refused:
        real_open = os.open

        def no_direct(path, flags, *a):
            if flags & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(path, flags, *a)

        monkeypatch.setattr(os, "open", no_direct)
    w = directio.AtomicWriter("test", directio.AlignedBuffers(2))
    for size in (10, (1 << 20) + 5, 4 << 20):
        data = os.urandom(size)
        w.write(str(tmp_path / f"f{size}"), (data[:7], data[7:]), fsync=True)
        assert w.read(str(tmp_path / f"f{size}")) == data
        assert os.path.getsize(tmp_path / f"f{size}") == size
    assert w.direct is not refused
    assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]


class _Told:
    """Notices that only record what they would tell the keeper."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def add(self, key: str) -> None:
        self.keys.append(key)

    def flush(self) -> None: ...


def test_a_writing_reader_adds_entries_that_the_keeper_adopts(tmp_path):
    from cachefs.cacheview import CacheView

    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    keeper = DiskCache(dirs, "u", 1 << 30)
    view = CacheView.open(dirs, "u")
    assert view.writable
    view.notices = told = _Told()
    blocks = {f"v/chunks/0/0/{i}_0_100000": os.urandom(100_000) for i in range(6)}
    for k, v in blocks.items():
        view.put(k, v)
    view.put(next(iter(blocks)), b"ignored: the entry is there already")
    assert told.keys == list(blocks)
    assert keeper.used == 0 and not keeper.contains(next(iter(blocks)))  # not told yet
    assert all(view.get(k) == v for k, v in blocks.items())  # readable before
    assert keeper.adopt(told.keys + ["v/chunks/0/0/99_0_5"]) == 6  # a key with no entry: skipped
    assert keeper.adopt(told.keys) == 0  # told twice: counted once
    assert keeper.used == sum(os.path.getsize(f) for f in files(tmp_path)) and len(files(tmp_path)) == 6
    assert all(keeper.get(k) == v for k, v in blocks.items())
    keeper.capacity = keeper.used // 2
    keeper.adopt([])  # nothing new: no eviction pass
    assert len(files(tmp_path)) == 6
    view.put("v/chunks/0/0/7_0_100000", os.urandom(100_000))
    keeper.adopt(["v/chunks/0/0/7_0_100000"])  # counted, then evicted down to the limit
    assert keeper.used <= keeper.capacity and keeper.used == sum(os.path.getsize(f) for f in files(tmp_path))
    keeper.close()


def test_reader_killed_before_its_notice_entry_counted_at_the_keepers_next_start(tmp_path):
    """Crash state "an entry not yet adopted": the keeper is not told; its next start's scan
    counts the entry, which reads right meanwhile."""
    import signal
    import socket

    from cachefs.cacheview import CacheView, Notices

    dirs = [str(tmp_path / "c")]
    keeper = DiskCache(dirs, "u", 1 << 30)
    mute = socket.socket()  # a keeper's service that takes the connection and never answers
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    key, data = "v/chunks/0/0/5_0_150000", os.urandom(150_000)
    pid = os.fork()
    if pid == 0:
        try:
            view = CacheView.open(dirs, "u")
            view.notices = Notices(f"127.0.0.1:{mute.getsockname()[1]}", b"s")
            view.put(key, data)
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while not files(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the notice is on its way (and stuck)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        mute.close()
    assert keeper.used == 0 and not keeper.contains(key)
    assert CacheView.open(dirs, "u").get(key) == data
    keeper.close()
    again = DiskCache(dirs, "u", 1 << 30)
    assert again.contains(key) and again.used == sum(os.path.getsize(f) for f in files(tmp_path))
    assert again.get(key) == data
    again.close()


def test_notices_reach_the_keeper_in_a_batch_and_close_stops_their_thread():
    import http.server
    import threading

    from cachefs.cacheview import Notices
    from cachefs.group.auth import HEADER, Verifier

    got: list[list[str]] = []
    verifier = Verifier(b"secret")

    class Keeper(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if not verifier.check("POST", self.path, self.headers.get(HEADER)):
                got.append(body.decode().split("\n"))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keeper)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        n = Notices(f"127.0.0.1:{server.server_address[1]}", b"secret")
        keys = [f"v/chunks/0/0/{i}_0_10" for i in range(10)]
        for k in keys:
            n.add(k)
        n.close()  # sends what is left, then the thread ends
        assert [k for batch in got for k in batch] == keys and len(got) <= 2
        for _ in range(100):
            if not any(t.name == "cache-notices" for t in threading.enumerate()):
                break
            time.sleep(0.02)
        assert not any(t.name == "cache-notices" for t in threading.enumerate())
        n.add("v/chunks/0/0/99_0_10")  # after close: dropped, nothing sent
        assert len([k for batch in got for k in batch]) == 10
    finally:
        server.shutdown()
        server.server_close()


def test_a_forked_child_does_not_keep_the_owner_locks(tmp_path):
    """A DataLoader worker forked from the keeper of a cache (and of a write-back staging) may
    outlive it: the locks must end with the keeper, not with the last of its children, and the
    child must still find them held while the keeper lives."""
    import signal

    from cachefs.staging import Staging, StagingBusy

    dirs, staged = [str(tmp_path / "c")], str(tmp_path / "staging")
    keeper = DiskCache(dirs, "u", 1 << 30)
    staging = Staging(staged, 1 << 30, 0.0, keeper.metrics)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                DiskCache(dirs, "u", 1 << 30)
            except CacheBusy:
                try:
                    Staging(staged, 1 << 30, 0.0, keeper.metrics)
                except StagingBusy:
                    code = 0  # both still held by the parent
            os.write(ready_w, bytes([code]))
            time.sleep(60)
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"\0", "the child took a lock its parent holds"
        keeper.close()
        staging.close()
        again = DiskCache(dirs, "u", 1 << 30)  # the child lives on: the locks went with the keeper
        Staging(staged, 1 << 30, 0.0, again.metrics).close()
        again.close()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)


def test_advise_starts_a_read_that_the_next_read_range_finishes(tmp_path):
    """advise() is how a batch of small files is read by one thread with every read in flight:
    a miss says so, a hit's bytes read right after it (the keeper's and a reader's), an entry
    evicted in between still reads, and a damaged one is still caught."""
    from cachefs.cacheview import CacheView

    dirs = [str(tmp_path / "c")]
    keeper = DiskCache(dirs, "u", 1 << 30)
    view = CacheView.open(dirs, "u")
    blocks = {f"v/chunks/0/0/{i}_0_{100_000 + i}": os.urandom(100_000 + i) for i in range(1, 4)}
    for key, data in blocks.items():
        keeper.put(key, data)
    missing = "v/chunks/0/0/9_0_5000"
    assert not keeper.advise(missing, 0, 5000) and not view.advise(missing, 0, 5000)
    (k1, d1), (k2, d2), (k3, d3) = blocks.items()
    for cache in (keeper, view):
        assert cache.advise(k1, 0, len(d1)) and cache.advise(k2, 10, 500)
        assert bytes(cache.read_range(k1, 0, None)) == d1
        assert bytes(cache.read_range(k2, 10, 500)) == d2[10:510]
    assert not view._advised  # each descriptor went to its read
    assert view.advise(k3, 0, len(d3))
    os.unlink(next(f for f in files(tmp_path) if f.endswith(k3.rsplit("/", 1)[1])))  # evicted meanwhile
    assert bytes(view.read_range(k3, 0, None)) == d3  # (the open descriptor still reads it)
    path = next(f for f in files(tmp_path) if f.endswith(k1.rsplit("/", 1)[1]))
    with open(path, "r+b") as f:  # a flipped byte in the data
        f.seek(os.path.getsize(path) - 7)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    assert view.advise(k1, 0, len(d1))
    assert view.read_range(k1, 0, None) is None  # a reader's damaged entry is a miss
    keeper._tables.clear()
    assert keeper.advise(k1, 0, len(d1))
    with pytest.raises(ChecksumError):
        keeper.read_range(k1, 0, None)
    for i in range(300):  # advice never read is bounded, and closed with the view
        keeper.put(f"v/chunks/0/0/{100 + i}_0_10", b"x" * 10)
        assert view.advise(f"v/chunks/0/0/{100 + i}_0_10", 0, 10)
    assert len(view._advised) == 256
    view.close()
    keeper.close()


@pytest.mark.parametrize("size", [1, 110_000, (64 << 10) * 3])
def test_an_advised_whole_entry_is_read_apart_and_still_verified(tmp_path, size):
    """read_entry(advised=True) reads a whole block's table and bytes in two preads (the bytes an
    object of their own): the same bytes as one pread, and a flipped or missing byte is still
    a ChecksumError."""
    from cachefs.block import block_key
    from cachefs.diskcache import advise_entry, entry_header, read_entry

    key = block_key("vol", 7, 0, size)
    plain = os.urandom(size)
    path = tmp_path / "entry"
    path.write_bytes(entry_header(plain) + plain)
    fd = os.open(path, os.O_RDONLY)
    try:
        advise_entry(fd, key, 0, size)
        head, data = read_entry(fd, key, 0, None, advised=True)
        assert type(data) is bytes and data == plain
        assert read_entry(fd, key, 0, None)[1] == plain and head == read_entry(fd, key, 0, None)[0]
        assert bytes(read_entry(fd, key, size // 2, size - size // 2, advised=True)[1]) == plain[size // 2 :]
    finally:
        os.close(fd)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    for damaged, error in ((raw, "checksum mismatch"), (raw[:-1], "truncated")):
        path.write_bytes(bytes(damaged))
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(ChecksumError, match=error):
                read_entry(fd, key, 0, None, advised=True)
        finally:
            os.close(fd)


def test_a_read_of_pages_not_in_memory_is_handed_out_and_still_verified(tmp_path):
    """read_resident(pending=True): an open entry whose pages are not resident answers with the
    read to make (PendingRead); the bytes read there are verified when finished, a flipped byte
    is a ChecksumError, and the descriptor stays open until the read is finished or dropped,
    even when the entry is removed meanwhile."""
    c = DiskCache([str(tmp_path)], "u", 1 << 30)
    key = "v/chunks/0/0/1_0_300000"
    data = os.urandom(300_000)
    c.put(key, data)
    assert c.read_range(key, 0, 10) == data[:10]  # opened, table known
    (path,) = files(tmp_path)

    def evict_pages() -> None:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)  # (dirty pages are not dropped)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

    evict_pages()
    assert c.read_resident(key, 70_000, 4096) is None  # without pending: the thread path's
    p = c.read_resident(key, 70_000, 4096, pending=True)
    assert p is not None and not isinstance(p, bytes)
    assert p.finish(os.pread(p.fd, p.size, p.pos)) == data[70_000:74_096]
    p.drop()  # (a second time does nothing)
    # a flipped byte in the segment read: caught when finished
    with open(path, "r+b") as f:
        f.seek(-(300_000 - 70_100), os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 1]))
    evict_pages()
    p = c.read_resident(key, 70_000, 4096, pending=True)
    with pytest.raises(ChecksumError):
        p.finish(os.pread(p.fd, p.size, p.pos))
    with pytest.raises(ChecksumError):
        c.read_resident(key, 70_000, 4096, pending=True).finish(b"short")
    # removed while a read is pending: its descriptor closes once the read is dropped
    evict_pages()
    p = c.read_resident(key, 0, 100, pending=True)
    c.drop(key)
    os.fstat(p.fd)  # still open
    p.drop()
    with pytest.raises(OSError):
        os.fstat(p.fd)
