"""Kernel-free vfs tests: SQLite metadata and the mem object store, no FUSE."""

from __future__ import annotations

import errno
import os
import random
import time
import uuid

import pytest

from cachefs import vfs as vfs_module
from cachefs.background import Background
from cachefs.compact import COMPACT_THRESHOLD
from cachefs.errors import CachefsError, FSError, errno_of
from cachefs.meta import open_meta
from cachefs.meta.types import CHUNK_SIZE, ROOT_INODE, Settings
from cachefs.metacache import SCAN_MISSES
from cachefs.options import Options
from cachefs.volume import Volume


def formatted(tmp_path, **settings) -> str:
    """The URL of a new SQLite volume over the mem object store (settings: Settings fields)."""
    url = f"sqlite3://{tmp_path}/m.db"
    meta = open_meta(url)
    meta.format(Settings(name="v", uuid="u", storage="mem", bucket=str(uuid.uuid4()), **settings))
    meta.close_engine()
    return url


@pytest.fixture(params=["none", "lz4"])
def vol(request, tmp_path):
    url = formatted(tmp_path, block_size=64 << 10, compression=request.param)
    v = Volume(url, Options(cache_dir=""))
    v.meta.new_session({})
    yield v
    v.close()


def create(vol, name=b"f"):
    fh, ino, _ = vol.vfs.create(ROOT_INODE, name, 0o644, os.O_RDWR)
    return fh, ino


def test_random_io_matches_reference(vol):
    rng = random.Random(7)
    fh, ino = create(vol)
    ref = bytearray()
    for _ in range(400):
        op = rng.random()
        if op < 0.5:
            off = rng.randint(0, 300_000)
            data = rng.randbytes(rng.randint(1, 150_000))
            vol.vfs.write(fh, off, data)
            if off > len(ref):
                ref.extend(b"\0" * (off - len(ref)))
            ref[off : off + len(data)] = data
        elif op < 0.6:
            n = rng.randint(0, 400_000)
            vol.vfs.setattr(ino, length=n)
            del ref[n:]
            ref.extend(b"\0" * (n - len(ref)))
        elif op < 0.65:
            vol.vfs.release(fh)
            fh = vol.vfs.open(ino, os.O_RDWR)
        else:
            off = rng.randint(0, 450_000)
            n = rng.randint(0, 200_000)
            assert vol.vfs.read(fh, off, n) == bytes(ref[off : off + n])
        assert vol.vfs.getattr(ino).length == len(ref)
    vol.vfs.release(fh)


def test_append_and_sparse(vol):
    fh, ino = create(vol)
    vol.vfs.write(fh, CHUNK_SIZE + 10, b"tail")
    assert vol.vfs.read(fh, 0, 10) == b"\0" * 10
    assert vol.vfs.read(fh, CHUNK_SIZE + 8, 10) == b"\0\0tail"
    fh2 = vol.vfs.open(ino, os.O_WRONLY | os.O_APPEND)
    vol.vfs.write(fh2, 0, b"!!")
    vol.vfs.release(fh2)
    assert vol.vfs.read(fh, CHUNK_SIZE + 10, 10) == b"tail!!"


def test_checksum_mismatch_is_eio(vol):
    fh, ino = create(vol)
    vol.vfs.write(fh, 0, b"x" * 100_000)
    vol.vfs.release(fh)
    store = vol.objects
    key = sorted(store.objects)[0]
    raw = bytearray(store.objects[key])
    raw[-1] ^= 1
    store.objects[key] = bytes(raw)
    vol.chunks.buffer = type(vol.chunks.buffer)(vol.chunks.buffer.capacity)
    fh = vol.vfs.open(ino, os.O_RDONLY)
    with pytest.raises(CachefsError) as e:
        vol.vfs.read(fh, 0, 100)
    assert errno_of(e.value) == errno.EIO
    assert vol.chunks.metrics.value("cachefs_checksum_errors_total", source="object") >= 1


def test_unlinked_open_file_readable_until_close(vol):
    fh, ino = create(vol)
    vol.vfs.write(fh, 0, b"hello")
    vol.vfs.flush(fh)
    vol.vfs.unlink(ROOT_INODE, b"f")
    vol.vfs.write(fh, 5, b" world")
    assert vol.vfs.read(fh, 0, 100) == b"hello world"
    bg = Background(vol.meta, vol.chunks, vol.compactions)
    bg.run_once(trash_delay=0)
    assert vol.objects.objects  # still there
    vol.vfs.release(fh)
    with pytest.raises(FSError):
        vol.meta.getattr(ino)
    bg.run_once(trash_delay=0, chores=False)  # a client's copy (a DataLoader worker) leaves it
    assert vol.objects.objects
    bg.run_once(trash_delay=0)
    assert vol.objects.objects == {}


def test_compaction_keeps_content_and_frees_objects(vol):
    fh, ino = create(vol)
    rng = random.Random(3)
    ref = bytearray(200_000)
    for _ in range(COMPACT_THRESHOLD + 5):
        off = rng.randint(0, 190_000)
        data = rng.randbytes(rng.randint(1, 10_000))
        vol.vfs.write(fh, off, data)
        ref[off : off + len(data)] = data
        vol.vfs.flush(fh)
    vol.vfs.write(fh, 199_999, ref[199_999:])
    vol.vfs.release(fh)
    before = len(vol.meta.read_chunk(ino, 0))
    assert before > COMPACT_THRESHOLD
    # a process that leaves the volume's chores to others still compacts what it wrote
    Background(vol.meta, vol.chunks, vol.compactions).run_once(trash_delay=0, chores=False)
    assert len(vol.meta.read_chunk(ino, 0)) == 1
    fh = vol.vfs.open(ino, os.O_RDONLY)
    assert vol.vfs.read(fh, 0, 300_000) == bytes(ref)
    Background(vol.meta, vol.chunks, vol.compactions).run_once(trash_delay=0)  # the trash's chore
    slice_ids = {k.rsplit("/", 1)[1].split("_")[0] for k in vol.objects.objects}
    assert len(slice_ids) == 1  # the old slices' objects are gone


def test_fallocate_and_punch(vol):
    fh, ino = create(vol)
    vol.vfs.write(fh, 0, b"a" * 1000)
    vol.vfs.fallocate(fh, 0, 0, 5000)
    assert vol.vfs.getattr(ino).length == 5000
    vol.vfs.fallocate(fh, 3, 10, 20)
    assert vol.vfs.read(fh, 0, 40) == b"a" * 10 + b"\0" * 20 + b"a" * 10


def test_read_only(tmp_path):
    url = formatted(tmp_path)
    v = Volume(url, Options(read_only=True, cache_dir=""))
    with pytest.raises(FSError) as e:
        v.vfs.mkdir(ROOT_INODE, b"d", 0o755)
    assert e.value.errno == errno.EROFS
    v.close()


def test_concurrent_reads_of_one_block_share_one_fetch(vol):
    import threading
    import time

    fh, ino = create(vol)
    vol.vfs.write(fh, 0, os.urandom(200_000))
    vol.vfs.release(fh)
    store = vol.objects
    real_get = store._get

    def slow_get(key):
        time.sleep(0.2)
        return real_get(key)

    store._get = slow_get
    vol.chunks.buffer = type(vol.chunks.buffer)(vol.chunks.buffer.capacity)
    before = store.metrics.value("cachefs_object_requests_total", op="get")
    results = []
    threads = [threading.Thread(target=lambda: results.append(vol.chunks.get_block(1, 200_000, 0)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert store.metrics.value("cachefs_object_requests_total", op="get") - before == 1


def test_readahead_grows_for_sequential_and_stays_off_for_random(vol):
    fh, ino = create(vol)
    vol.vfs.write(fh, 0, os.urandom(3 << 20))  # 48 blocks of 64 KiB
    vol.vfs.release(fh)
    metrics = vol.chunks.metrics
    fh = vol.vfs.open(ino, os.O_RDONLY)
    rng = random.Random(1)
    for _ in range(20):
        vol.vfs.read(fh, rng.randrange(0, 3 << 20, 4096), 4096)
    assert metrics.value("cachefs_prefetch_blocks_total") == 0
    h = vol.files.handles[fh]
    windows = []
    for off in range(0, 1 << 20, 128 << 10):
        vol.vfs.read(fh, off, 128 << 10)
        windows.append(h.window)
    assert windows == sorted(windows) and windows[-1] > windows[0]
    import time

    deadline = time.time() + 5
    while metrics.value("cachefs_prefetch_blocks_total") == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert metrics.value("cachefs_prefetch_blocks_total") > 0


def test_capability_xattr_remembered_while_open(vol, monkeypatch):
    """The kernel asks for security.capability before each write: while the file is open the
    "none" is remembered, and a change through this client is seen at once."""
    fh, ino = create(vol)
    vol.vfs.release(fh)
    fh = vol.vfs.open(ino, os.O_RDWR)  # opened, not created: the engine is asked once
    calls = []
    real = vol.meta.getxattr
    monkeypatch.setattr(vol.meta, "getxattr", lambda i, n: calls.append(n) or real(i, n))
    for _ in range(3):
        with pytest.raises(FSError) as e:
            vol.vfs.getxattr(ino, b"security.capability")
        assert e.value.errno == errno.ENODATA
    assert calls == [b"security.capability"]
    vol.vfs.setxattr(ino, b"security.capability", b"caps")
    assert vol.vfs.getxattr(ino, b"security.capability") == b"caps"
    vol.vfs.removexattr(ino, b"security.capability")
    with pytest.raises(FSError):
        vol.vfs.getxattr(ino, b"security.capability")
    vol.vfs.release(fh)
    with pytest.raises(FSError):  # closed: asked again
        vol.vfs.getxattr(ino, b"security.capability")
    assert len(calls) == 4


def test_new_file_known_without_capability(vol, monkeypatch):
    fh, ino = create(vol, b"new")
    monkeypatch.setattr(vol.meta, "getxattr", lambda i, n: pytest.fail("asked the engine"))
    assert vol.vfs.known_without(ino, b"security.capability")
    assert not vol.vfs.known_without(ino, b"user.other")
    with pytest.raises(FSError):
        vol.vfs.getxattr(ino, b"security.capability")
    vol.vfs.release(fh)


def test_nothing_to_flush_only_without_buffered_writes(vol):
    fh, ino = create(vol, b"g")
    assert vol.vfs.nothing_to_flush(fh)
    vol.vfs.write(fh, 0, b"data")
    assert not vol.vfs.nothing_to_flush(fh)  # buffered: the flush must commit it
    vol.vfs.flush(fh)
    assert vol.vfs.nothing_to_flush(fh)
    vol.vfs.release(fh)
    assert not vol.vfs.nothing_to_flush(fh)  # unknown handle: the real flush answers EBADF


def test_sparse_file_far_out_is_cheap_end_to_end(vol):
    import time

    fh, ino = create(vol, b"far")
    t0 = time.monotonic()
    vol.vfs.write(fh, 1 << 50, b"x")
    vol.vfs.release(fh)
    fh = vol.vfs.open(ino, os.O_RDWR)
    assert vol.vfs.read(fh, (1 << 50) - 2, 10) == b"\0\0x"
    assert vol.vfs.read(fh, 0, 4) == b"\0" * 4
    vol.vfs.setattr(ino, length=1 << 40)
    vol.vfs.release(fh)
    vol.vfs.unlink(ROOT_INODE, b"far")
    Background(vol.meta, vol.chunks, vol.compactions).run_once(trash_delay=0)
    assert time.monotonic() - t0 < 5
    assert vol.objects.objects == {}
    assert vol.meta.statfs()[1] < 1 << 20


def test_random_read_of_a_cold_block_is_a_ranged_get(tmp_path):
    """A random 4 KiB read of a block no cache holds fetches the checksum table and one 64 KiB
    segment (verified), not the block; a damaged segment is fetched again, then EIO; the whole
    block follows in the background."""
    import time

    url = formatted(tmp_path, block_size=1 << 20, block_format=2)
    v = Volume(url, Options(cache_dir="", buffer_size=8 << 20))
    v.meta.new_session({})
    fh, ino, _ = v.vfs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR)
    data = os.urandom(3 << 20)
    v.vfs.write(fh, 0, data)
    v.vfs.release(fh)
    v.chunks.buffer = type(v.chunks.buffer)(v.chunks.buffer.capacity)
    ranged = []
    real = v.objects._get_range
    v.objects._get_range = lambda key, a, b: ranged.append(b - a) or real(key, a, b)
    fh = v.vfs.open(ino, os.O_RDONLY)
    off = (1 << 20) + 300_000
    v.vfs.read(fh, 5 << 20, 1)  # a first read elsewhere: the reader is not sequential
    assert bytes(v.vfs.read(fh, off, 4096)) == data[off : off + 4096]
    assert v.metrics.value("cachefs_ranged_reads_total") >= 1
    assert max(ranged) <= 128 << 10  # the table, and the one or two segments the bytes lie in
    deadline = time.time() + 5  # the whole block was fetched behind
    while v.metrics.value("cachefs_prefetch_blocks_total") == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert v.metrics.value("cachefs_prefetch_blocks_total") >= 1
    # a damaged segment: fetched again, then EIO, never wrong bytes
    v.chunks.buffer = type(v.chunks.buffer)(v.chunks.buffer.capacity)
    key = next(k for k in v.objects.objects if k.endswith(f"_2_{1 << 20}"))
    raw = bytearray(v.objects.objects[key])
    raw[-1000] ^= 1
    v.objects.objects[key] = bytes(raw)
    with pytest.raises(CachefsError) as e:
        v.vfs.read(fh, (3 << 20) - 2000, 100)
    assert errno_of(e.value) == errno.EIO
    assert v.metrics.value("cachefs_checksum_errors_total", source="object") >= 1
    v.vfs.release(fh)
    v.close()


def test_an_opened_small_file_is_preloaded_so_its_read_needs_no_thread(tmp_path):
    """VFS.preload (the FUSE open's second step): a small file's cached block comes into memory,
    so read_in_memory (the event loop's answer) has its bytes; a large file, a file open for
    writing and an uncached one are left to the read; a damaged entry is dropped, not served."""
    from .conftest import wait_for

    url = formatted(tmp_path)
    v = Volume(url, Options(cache_dir=str(tmp_path / "c")))
    v.meta.new_session({})
    small, large = os.urandom(100_000), os.urandom(1 << 20)
    inos = {}
    for name, data in ((b"small", small), (b"large", large)):
        fh, inos[name], _ = v.vfs.create(ROOT_INODE, name, 0o644, os.O_RDWR)
        v.vfs.write(fh, 0, data)
        v.vfs.release(fh)
    wait_for(lambda: v.metrics.value("cachefs_cache_blocks") >= 2)  # written small blocks are cached behind

    def emptied() -> None:  # memory as a fresh mount has it: nothing buffered, no entry open
        v.chunks.buffer = type(v.chunks.buffer)(v.chunks.buffer.capacity)

    emptied()
    fh = v.vfs.open(inos[b"small"], os.O_RDONLY)
    assert v.vfs.read_in_memory(fh, 0, 128 << 10) is None
    assert v.vfs.preload(fh)
    assert bytes(v.vfs.read_in_memory(fh, 0, 128 << 10)) == small
    v.vfs.release(fh)
    fh = v.vfs.open(inos[b"large"], os.O_RDONLY)
    assert not v.vfs.preload(fh)  # beyond a small read: a partial reader would pay for all of it
    v.vfs.release(fh)
    emptied()
    fh = v.vfs.open(inos[b"small"], os.O_RDWR)
    assert not v.vfs.preload(fh)
    v.vfs.release(fh)
    # a flipped byte in the entry: dropped and counted, and the read fetches good bytes
    h = v.vfs.open(inos[b"small"], os.O_RDONLY)
    g = v.vfs.files.handles[h].state.segments[0][0]
    path = v.chunks.cache.entry_path(v.chunks.key(g.id, 0, len(small)))
    raw = bytearray(open(path, "rb").read())
    raw[-10] ^= 1
    open(path, "wb").write(raw)
    assert not v.vfs.preload(h)
    assert v.metrics.value("cachefs_checksum_errors_total", source="cache") == 1
    assert not v.chunks.cache.contains(v.chunks.key(g.id, 0, len(small)))
    assert v.vfs.read_in_memory(h, 0, 128 << 10) is None
    assert bytes(v.vfs.read(h, 0, 128 << 10)) == small
    v.vfs.release(h)
    # not cached on this disk (dropped above, and the read's fetch is cached behind): no preload
    emptied()
    v.chunks.cache.drop(v.chunks.key(g.id, 0, len(small)))
    h = v.vfs.open(inos[b"small"], os.O_RDONLY)
    assert not v.vfs.preload(h)
    assert bytes(v.vfs.read(h, 0, 128 << 10)) == small
    v.vfs.release(h)
    v.close()


def test_a_directory_looked_up_name_by_name_is_fetched_whole(tmp_path):
    """After SCAN_MISSES lookups that had to ask the engine, a directory's entries come in one
    listing and the rest of its names are answered from memory; the listing lives no longer
    than the entry timeout, and this client's own changes show at once."""
    url = formatted(tmp_path)
    opts = Options(cache_dir="", attr_cache=0.5, entry_cache=0.5, dir_entry_cache=0.5)
    writer, reader = Volume(url, opts), Volume(url, opts)
    try:
        for v in (writer, reader):
            v.meta.new_session({})
        d = writer.vfs.mkdir(ROOT_INODE, b"d", 0o755)[0]
        names = [b"f%02d" % i for i in range(40)]
        for n in names:
            writer.vfs.release(writer.vfs.create(d, n, 0o644, os.O_WRONLY)[0])
        asked = []
        engine_lookup = reader.meta.lookup
        reader.meta.lookup = lambda p, n: asked.append(n) or engine_lookup(p, n)

        def lookup(name):
            return reader.vfs.cached_lookup(d, name) or reader.vfs.lookup(d, name)

        inos = [lookup(n)[0] for n in names]
        assert inos == [writer.vfs.lookup(d, n)[0] for n in names]
        assert asked == names[: SCAN_MISSES - 1]
        assert reader.metrics.listings._value.get() == 1
        # a name the listing did not have is asked for, not answered ENOENT from memory (another
        # node's file, closed after the listing, is found at once); one this client made is known
        writer.vfs.release(writer.vfs.create(d, b"new", 0o644, os.O_WRONLY)[0])
        assert lookup(b"new")[0] == writer.vfs.lookup(d, b"new")[0]
        reader.vfs.release(reader.vfs.create(d, b"mine", 0o644, os.O_WRONLY)[0])
        assert reader.vfs.cached_lookup(d, b"mine") is not None
        # another client's removal is seen once the entry timeout has passed
        writer.vfs.unlink(d, b"f39")
        assert reader.vfs.cached_lookup(d, b"f39") is not None
        time.sleep(0.6)
        assert reader.vfs.cached_lookup(d, b"f39") is None
        with pytest.raises(FSError) as e:
            reader.vfs.lookup(d, b"f39")
        assert e.value.errno == errno.ENOENT
        # this client's own changes at once
        for n in names[:SCAN_MISSES]:
            lookup(n)  # fetched whole again: a new window
        assert reader.metrics.listings._value.get() == 2
        reader.vfs.unlink(d, b"f30")
        assert reader.vfs.cached_lookup(d, b"f30") is None
        reader.vfs.setattr(inos[31], mode=0o600)
        assert reader.vfs.cached_lookup(d, b"f31")[1].mode & 0o777 == 0o600
    finally:
        writer.close()
        reader.close()


def test_a_directory_too_large_is_looked_up_name_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(vfs_module, "SCAN_LIMIT", 20)
    url = formatted(tmp_path)
    v = Volume(url, Options(cache_dir=""))
    try:
        v.meta.new_session({})
        for i in range(30):
            v.vfs.release(v.vfs.create(ROOT_INODE, b"f%d" % i, 0o644, os.O_WRONLY)[0])
        v.metacache._entries.clear()
        v.metacache._attrs.clear()
        for i in range(30):
            v.vfs.lookup(ROOT_INODE, b"f%d" % i)
        assert v.metrics.listings._value.get() == 0
    finally:
        v.close()


def test_open_in_memory_opens_read_only_with_an_answer_in_hand_and_never_waits(vol):
    """VFS.open_in_memory (the FUSE event loop's open): a read-only open with the engine's
    answer fetched by the caller is counted and sees that answer; a write, a truncation, an
    internal file or nothing in hand is left to open(); a file whose lock a writer holds is
    left to open() too, with nothing counted."""
    import threading

    from cachefs import internal

    fh, ino = create(vol)
    vol.vfs.write(fh, 0, b"one")
    vol.vfs.release(fh)
    v = vol.vfs
    assert v.open_in_memory(ino, os.O_RDONLY) is None  # nothing in hand, no --open-cache
    for flags in (os.O_RDWR, os.O_WRONLY, os.O_RDONLY | os.O_TRUNC):
        assert not v.loop_openable(ino, flags)
        assert v.open_in_memory(ino, flags, vol.meta.open_file(ino)) is None
    assert not v.loop_openable(internal.STATS_INODE, os.O_RDONLY)
    # the file changed since it was last open: the engine's answer in hand is what the open sees
    w = v.open(ino, os.O_WRONLY)
    v.write(w, 0, b"two!")
    v.release(w)
    h = v.open_in_memory(ino, os.O_RDONLY, vol.meta.open_file(ino))
    assert h is not None and v.files.is_open(ino)
    assert bytes(v.read(h, 0, 10)) == b"two!"
    v.release(h)
    assert not v.files.is_open(ino)
    with pytest.raises(FSError) as e:
        v.open_in_memory(ROOT_INODE, os.O_RDONLY, vol.meta.open_file(ROOT_INODE))
    assert e.value.errno == errno.EISDIR
    # a writer of this client holds the file's lock (a commit on its way): not waited for
    w = v.open(ino, os.O_WRONLY)
    fs = v.files.handles[w].state
    held, done = threading.Event(), threading.Event()

    def writer() -> None:
        with fs.lock:
            held.set()
            done.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    held.wait(10)
    assert v.open_in_memory(ino, os.O_RDONLY, vol.meta.open_file(ino)) is None
    assert fs.opens == 1
    done.set()
    t.join()
    v.release(w)
    assert not v.files.is_open(ino)
