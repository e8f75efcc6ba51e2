"""cachefs.Client: the file system inside the training process, over the same core, cache and
errors as a mount; fork, pickle and bad input."""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cachefs import Client
from cachefs.cacheview import CacheView
from cachefs.errors import CachefsError

from .conftest import run_cli
from .servers import RedisServer, free_port

pytestmark = pytest.mark.mount


def test_file_api_round_trip(volumes):
    url = volumes.create("sqlite", "file")
    data = os.urandom(5 << 20)  # more than one block of 4 MiB
    with Client(url) as c:
        c.makedirs("/a/b")
        with c.open("/a/b/f.bin", "wb") as f:
            assert f.write(data[:1000]) == 1000
            f.write(data[1000:])
        with c.open("/a/b/f.bin", "rb") as f:
            assert f.read(10) == data[:10]
            f.seek(4 << 20)
            buf = bytearray(100)
            assert f.readinto(buf) == 100 and bytes(buf) == data[4 << 20 : (4 << 20) + 100]
            f.seek(-5, os.SEEK_END)
            assert f.read() == data[-5:]
            assert f.read() == b""
        assert c.read_bytes("/a/b/f.bin") == data
        assert c.read_bytes("a/b/f.bin", 10, 20) == data[10:20]
        with c.open("/a/b/f.bin", "r+b") as f:
            f.seek(3)
            f.write(b"XYZ")
        assert c.read_bytes("/a/b/f.bin", 0, 8) == data[:3] + b"XYZ" + data[6:8]
        with c.open("/a/t.txt", "w") as f:
            f.write("line one\nline two\n")
        with c.open("/a/t.txt", "a") as f:
            f.write("three\n")
        with c.open("/a/t.txt") as f:
            assert f.readlines() == ["line one\n", "line two\n", "three\n"]
        st = c.stat("/a/b/f.bin")
        assert st.st_size == len(data) and st.st_nlink == 1
        assert c.exists("/a/b") and c.isdir("/a/b") and c.isfile("/a/b/f.bin") and not c.exists("/nope")
        assert sorted(c.listdir("/a")) == ["b", "t.txt"]
        entries = {e.name: e for e in c.scandir("/a")}
        assert entries["b"].is_dir() and entries["t.txt"].is_file()
        assert entries["t.txt"].stat().st_size == len("line one\nline two\nthree\n")
        assert list(c.walk("/a")) == [("/a", ["b"], ["t.txt"]), ("/a/b", [], ["f.bin"])]
        c.clone("/a/b/f.bin", "/a/copy")
        assert c.read_bytes("/a/copy") == c.read_bytes("/a/b/f.bin")
        c.write_bytes("/a/other", b"old")
        c.rename("/a/copy", "/a/other")  # replaces, like os.replace
        assert not c.exists("/a/copy") and c.stat("/a/other").st_size == len(data)
        c.remove("/a/other")
        c.rename("/a/b", "/a/c")
        assert c.listdir("/a/c") == ["f.bin"]
        with pytest.raises(OSError) as e:
            c.rmdir("/a/c")
        assert e.value.errno == errno.ENOTEMPTY
        c.remove("/a/c/f.bin")
        c.rmdir("/a/c")
        assert sorted(c.listdir("/a")) == ["t.txt"]


def test_read_many_looks_up_a_batch_s_directories_together(volumes):
    """The directories a batch goes through that the metadata cache does not hold are looked
    up together, one round trip per depth (one per directory cost a round trip each for a
    dataset's class directories, every second, in every worker)."""
    url = volumes.create("redis", "s3")
    with Client(url) as c:
        for i in range(8):
            c.makedirs(f"/train/c{i}")
            c.write_bytes(f"/train/c{i}/img", b"%d" % i)
    with Client(url, attr_cache=60, entry_cache=60, dir_entry_cache=60) as c:
        meta, calls = c.volume.meta, []
        for name in ("lookup", "lookup_many", "lookup_open", "lookup_open_many", "getattr"):
            def counted(*a, _f=getattr(meta, name), _n=name):
                calls.append(_n)
                return _f(*a)
            setattr(meta, name, counted)
        paths = [f"/train/c{i}/img" for i in range(8)]
        assert c.read_many(paths) == [b"%d" % i for i in range(8)]
        # /train, then the eight class directories (their entries only), then the files opened:
        # three round trips
        assert calls == ["lookup_many", "lookup_many", "lookup_open_many"], calls
        calls.clear()
        assert c.read_many(paths[::-1]) == [b"%d" % i for i in range(8)][::-1]
        assert calls == ["lookup_open_many"], calls  # the directories from the cache now
        with pytest.raises(FileNotFoundError):
            c.read_many(["/train/c1/img", "/train/nope/img"])
        with pytest.raises(NotADirectoryError):
            c.read_many(["/train/c1/img/x"])


def _counting_gets(c: Client) -> dict[str, list]:
    """The object GETs a client makes from now on: batched ones (keys per call) and single ones."""
    objects, seen = c.volume.objects, {"many": [], "one": []}
    get_many, get = objects.get_many, objects.get
    objects.get_many = lambda keys, width: seen["many"].append(list(keys)) or get_many(keys, width)
    objects.get = lambda key: seen["one"].append(key) or get(key)
    return seen


def test_read_many_fetches_a_cold_batch_of_small_files_together(volumes, tmp_path):
    """A batch's small files not cached here are fetched by the calling thread in one batched
    GET (the others read the usual way, on the pool), land in the disk cache, and every file
    reads byte-exact: one-block files, a large one, a fragmented one, an empty one, one being
    written by this client."""
    url = volumes.create("redis", "s3")
    small = {f"/d/s{i}": os.urandom(1000 + 997 * i) for i in range(12)}
    big = os.urandom(5 << 20)
    with Client(url) as c:
        c.makedirs("/d")
        for p, data in small.items():
            c.write_bytes(p, data)
        c.write_bytes("/d/big", big)
        c.write_bytes("/d/empty", b"")
        c.write_bytes("/d/frag", b"a" * 5000)
        with c.open("/d/frag", "r+b") as f:  # a second slice: not one block of one slice
            f.seek(1000)
            f.write(b"b" * 1000)
    paths = [*small, "/d/big", "/d/empty", "/d/frag"]
    want = [*small.values(), big, b"", b"a" * 1000 + b"b" * 1000 + b"a" * 3000]
    cache = str(tmp_path / "cache")
    with Client(url, cache_dir=cache, cache_size=1 << 30) as c, ThreadPoolExecutor(4) as pool:
        seen = _counting_gets(c)
        assert c.read_many(paths, pool) == want
        assert len(seen["many"]) == 1 and len(seen["many"][0]) == len(small)  # the one-block files
        assert len(seen["one"]) >= 2  # the big file's blocks and the fragmented file's, one by one
        with c.open("/d/s0", "r+b", buffering=0) as f:  # buffered here, not committed: read the usual way
            f.write(b"being written")
            assert c.read_many(["/d/s0", "/d/s1"], pool) == [b"being written" + small["/d/s0"][13:], small["/d/s1"]]
    with Client(url, cache_dir=cache, cache_size=1 << 30) as c, ThreadPoolExecutor(4) as pool:
        seen = _counting_gets(c)
        assert c.read_many(paths[1:len(small)], pool) == want[1:len(small)]
        assert seen == {"many": [], "one": []}  # all from the disk cache the batch filled


def test_read_many_batched_fetch_rides_through_faults_and_never_returns_wrong_bytes(volumes, proxied_s3, tmp_path):
    """A GET of the batch that fails (a reset, a flipped byte) is fetched again alone, with the
    retries; a block that stays damaged is EIO for the batch, never wrong bytes. (Each block
    fails its first two GETs: at random, a block could stay damaged through every refetch, and
    that run would rightly end in EIO.)"""
    from .conftest import s3_volume
    from .faultproxy import Fault

    url = s3_volume(volumes, proxied_s3)
    files = {f"/f{i}": os.urandom(20_000 + i) for i in range(10)}
    with Client(url) as c:
        for p, data in files.items():
            c.write_bytes(p, data)
    for kind in ("reset", "corrupt"):
        proxied_s3.set(Fault(kind, 1.0, {"GET"}, per_key=2))
        with Client(url, cache_dir=str(tmp_path / kind), cache_size=1 << 30) as c, ThreadPoolExecutor(4) as pool:
            assert c.read_many(list(files), pool) == list(files.values())
        assert proxied_s3.faulted(kind) >= 2 * len(files)  # (and the client's connection check)
    proxied_s3.set(Fault("corrupt", 1.0, {"GET"}))
    with Client(url, cache_dir=str(tmp_path / "always"), cache_size=1 << 30) as c, ThreadPoolExecutor(4) as pool:
        with pytest.raises(OSError) as e:
            c.read_many(list(files)[:3], pool)
        assert e.value.errno == errno.EIO
    proxied_s3.clear()


def test_read_many_opens_a_batch_together_with_close_to_open(volumes):
    """A DataLoader batch's files, opened in one metadata round trip: each revalidated (a
    change by another client is seen), errors in their place, nothing left open."""
    url = volumes.create("redis", "s3")
    big = os.urandom(5 << 20)
    with Client(url) as c, Client(url) as other:
        c.makedirs("/d/sub")
        for i in range(10):
            c.write_bytes(f"/d/f{i}", b"%d" % i * (i + 1))
        c.write_bytes("/d/sub/big", big)
        paths = [f"/d/f{i}" for i in range(10)] + ["/d/sub/big", "d/f3"]
        assert c.read_many(paths) == [b"%d" % i * (i + 1) for i in range(10)] + [big, b"3333"]
        other.write_bytes("/d/f1", b"changed elsewhere")  # c holds f1's entry and attributes
        other.write_bytes("/d/new", b"new")
        with ThreadPoolExecutor(4) as pool:
            assert c.read_many(["/d/f1", "/d/new", "/d/sub/big"], pool) == [b"changed elsewhere", b"new", big]
        for bad, exc in ((["/d/f0", "/d/nope", "/d/f2"], FileNotFoundError), (["/d/f0", "/d/sub"], IsADirectoryError),
                         (["/d/f0/x"], NotADirectoryError), (["/"], IsADirectoryError), (["/../x"], ValueError)):
            with pytest.raises(exc):
                c.read_many(bad)
        assert not any(c.volume.vfs.files.is_open(c.stat(p).st_ino) for p in paths)
        assert c.read_many([]) == []


def test_read_many_reads_cached_files_here_and_fetches_the_rest(volumes, tmp_path):
    """A batch whose files are partly in the disk cache: the cached ones are advised and read by
    the calling thread, the others fetched by the executor; every answer in its place, in the
    keeper and in a forked DataLoader-like worker reading the keeper's cache."""
    url = volumes.create("sqlite", "file")
    data = {f"/b/f{i}": os.urandom(50_000 + i) for i in range(12)}
    with Client(url) as w:
        w.makedirs("/b")
        for p, d in data.items():
            w.write_bytes(p, d)
    paths = list(data)
    with Client(url, cache_dir=str(tmp_path / "cache"), cache_size=1 << 30) as c:
        for p in paths[::2]:
            assert c.read_bytes(p) == data[p]  # half of them cached
        with ThreadPoolExecutor(4) as pool:
            assert c.read_many(paths, pool) == [data[p] for p in paths]
            opened = c.open_many(paths)
            assert all(f.advise() for f in opened)  # all cached now
            for f in opened:
                f.close()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with ThreadPoolExecutor(4) as pool:
                    assert isinstance(c.volume.cache, CacheView)
                    assert c.read_many(paths[::-1], pool) == [data[p] for p in paths[::-1]]
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_read_many_answers_cached_small_files_in_one_pass(volumes, tmp_path):
    """A batch's small files held in the disk cache are read in one pass (vfs.read_cached_many),
    not one read each through the read path; a larger file still goes that way; a flipped byte
    in an entry is caught on that pass too (dropped by the keeper, a miss for a forked worker)
    and the file fetched again: right bytes, always."""
    url = volumes.create("sqlite", "file")
    data = {f"/b/f{i}": os.urandom(50_000 + i) for i in range(10)}
    data["/b/big"] = os.urandom(5 << 20)  # two blocks: the usual read path
    with Client(url) as w:
        w.makedirs("/b")
        for p, d in data.items():
            w.write_bytes(p, d)
    small, paths = [p for p in data if p != "/b/big"], list(data)
    cache = tmp_path / "cache"
    with Client(url, cache_dir=str(cache), cache_size=1 << 30) as c:
        for p in paths:
            assert c.read_bytes(p) == data[p]
    with Client(url, cache_dir=str(cache), cache_size=1 << 30) as c:  # nothing in memory
        vfs = c.volume.vfs
        reads: list[int] = []
        real_read = vfs.read
        vfs.read = lambda fh, off, n: reads.append(fh) or real_read(fh, off, n)
        assert c.read_many(small) == [data[p] for p in small] and reads == []
        assert c.read_many(paths[::-1]) == [data[p] for p in paths[::-1]] and reads  # the big one only
        entries = sorted(e for e in cache.rglob("*_*") if e.is_file() and e.stat().st_size < 100_000)
        assert len(entries) == len(small)

        def flip(entry) -> None:
            raw = bytearray(entry.read_bytes())
            raw[-5] ^= 0x01
            entry.write_bytes(raw)

        flip(entries[0])
        assert c.read_many(small) == [data[p] for p in small]
        assert c.volume.metrics.value("cachefs_checksum_errors_total", source="cache") == 1
        assert not entries[0].exists() or entries[0].read_bytes() != b""  # dropped, then cached again
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                assert isinstance(c.volume.cache, CacheView)
                flip(entries[1])
                assert c.read_many(small[::-1]) == [data[p] for p in small[::-1]]
                assert c.volume.metrics.value("cachefs_cache_errors_total") >= 1  # a miss (the keeper drops it)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_errors_are_the_os_errors_of_the_one_mapping(volumes):
    url = volumes.create("sqlite", "file")
    with Client(url) as c:
        c.mkdir("/d")
        c.write_bytes("/d/f", b"x")
        with pytest.raises(FileNotFoundError):
            c.open("/missing")
        with pytest.raises(FileNotFoundError):
            c.stat("/d/missing")
        with pytest.raises(FileNotFoundError):
            c.open("/nodir/f", "wb")
        with pytest.raises(IsADirectoryError):
            c.open("/d")
        with pytest.raises(NotADirectoryError):
            c.listdir("/d/f")
        with pytest.raises(NotADirectoryError):
            c.open("/d/f/g")
        with pytest.raises(FileExistsError):
            c.mkdir("/d")
        c.mkdir("/d", exist_ok=True)
        with pytest.raises(FileExistsError):
            c.open("/d/f", "xb")
        with pytest.raises(ValueError, match="outside the volume"):
            c.stat("/../etc/passwd")
        with pytest.raises(ValueError, match="invalid mode"):
            c.open("/d/f", "rw")
        for act in (lambda: c.mkdir("/.stats"), lambda: c.rename("/d/f", "/d/.control")):
            with pytest.raises(PermissionError):  # names reserved for the mount's internal files
                act()
        assert b"cachefs_" in c.read_bytes("/.stats")  # this client's own metrics
        with c.open("/d/f", "rb") as f, pytest.raises(OSError):
            f.write(b"y")
        with pytest.raises(TypeError, match="unknown option"):
            Client(url, cache_sise=1)
    with Client(url, read_only=True) as ro:
        assert ro.read_bytes("/d/f") == b"x"
        for act in (lambda: ro.open("/d/f", "wb"), lambda: ro.write_bytes("/d/new", b"z"),
                    lambda: ro.mkdir("/e"), lambda: ro.remove("/d/f")):
            with pytest.raises(OSError) as e:
                act()
            assert e.value.errno == errno.EROFS


def test_unreachable_engine_and_object_store_fail_within_seconds(tmp_path, volumes):
    t0 = time.monotonic()
    with pytest.raises(CachefsError, match="cannot reach Redis"):
        Client(f"redis://127.0.0.1:{free_port()}/1")
    assert time.monotonic() - t0 < 10
    with socket.socket() as s:  # accepts connections, never answers
        s.bind(("127.0.0.1", 0))
        s.listen(10)
        t0 = time.monotonic()
        with pytest.raises(CachefsError, match="cannot reach Redis"):
            Client(f"redis://127.0.0.1:{s.getsockname()[1]}/1")
        assert time.monotonic() - t0 < 15
    with pytest.raises(ValueError, match="no metadata URL"):
        Client("")
    port = free_port()
    from cachefs.meta import open_meta

    # a volume whose object store is gone: format it against a live one, then point it away
    url = volumes.create("sqlite", "s3")
    meta = open_meta(url)
    settings = meta.load()
    settings.bucket = f"http://127.0.0.1:{port}/gone"
    meta.update_settings(settings)
    meta.close_engine()
    t0 = time.monotonic()
    with pytest.raises(CachefsError, match="cannot reach S3"):
        Client(url)
    assert time.monotonic() - t0 < 15


def test_close_with_the_engine_gone_ends_in_seconds(tmp_path):
    """Fault: Redis killed under a client with nothing left to commit. close() (and so a
    training script's exit) leaves the session to be cleaned up as a dead one instead of
    waiting a minute for the engine; what was written is all there once it is back."""
    server = RedisServer(durable=True)
    try:
        url = server.url(1)
        run_cli("format", url, "gone", "--storage", "file", "--bucket", str(tmp_path / "objects"))
        c = Client(url)
        c.write_bytes("/before", b"b" * 300_000)
        server.kill()
        t0 = time.monotonic()
        c.close()
        took = time.monotonic() - t0
        assert took < 15, took  # was ~70 s: 10 for the background threads, 60 for the session
        server.start()
        again = Client(url)
        try:
            assert again.read_bytes("/before") == b"b" * 300_000
        finally:
            again.close()
    finally:
        server.stop()


def test_permissions_of_the_calling_process(volumes):
    """The kernel checks modes for a mount; the client checks them itself, as the process's uid."""
    url = volumes.create("redis", "s3")
    with Client(url) as c:
        c.write_bytes("/secret", b"root only")
        c.volume.vfs.setattr(c.stat("/secret").st_ino, mode=0o600)
        c.mkdir("/pub", 0o755)
        c.write_bytes("/pub/f", b"everyone")
        c.mkdir("/tmpd")
        c.volume.vfs.setattr(c.stat("/tmpd").st_ino, mode=0o1777)
        c.write_bytes("/tmpd/roots", b"r")
        c.makedirs("/locked/in")  # searchable by root only: nothing under it is reachable
        c.write_bytes("/locked/in/f", b"hidden")
        c.volume.vfs.setattr(c.stat("/locked").st_ino, mode=0o700)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody, with a client of its own, checked as its euid
        os.close(r)
        msg = b""
        try:
            c = Client(url)  # built as root: boto's data files under /root are not nobody's
            c.stat("/")
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            msg = _as_nobody(c).encode()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            msg = f"{type(e).__name__}: {e}".encode()
        finally:
            os.write(w, msg or b"ok")
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read().decode()
    os.waitpid(pid, 0)
    assert report == "ok", report


def _as_nobody(c: Client) -> str:
    try:
        for act, args in ((c.read_bytes, ("/secret",)), (c.read_many, (["/pub/f", "/secret"],)),
                          (c.write_bytes, ("/pub/new", b"x")),
                          (c.remove, ("/pub/f",)), (c.mkdir, ("/pub/d",)),
                          (c.remove, ("/tmpd/roots",)),  # sticky: not ours
                          (c.stat, ("/locked/in/f",)), (c.read_many, (["/pub/f", "/locked/in/f"],)),
                          (c.write_bytes, ("/locked/new", b"x")), (c.remove, ("/locked/in/f",))):
            try:
                act(*args)
            except PermissionError:
                continue
            return f"{act.__name__}{args} was allowed"
        assert c.read_bytes("/pub/f") == c.read_many(["/pub/f"])[0] == b"everyone"
        c.write_bytes("/tmpd/mine", b"m")  # world-writable: allowed, and owned by us
        assert c.stat("/tmpd/mine").st_uid == 65534
        c.remove("/tmpd/mine")
        return ""
    finally:
        c.close()


def test_fork_and_pickle_rebuild_the_client_in_the_child(volumes):
    url = volumes.create("redis", "s3")
    c = Client(url)
    try:
        c.write_bytes("/parent", b"p" * 100_000)
        assert c.read_bytes("/parent") == b"p" * 100_000
        pid = os.fork()
        if pid == 0:  # the child: its own connections and threads
            code = 1
            try:
                # what it inherited is out of its collections (a full one walked the parent's heap)
                assert gc.get_freeze_count() > 0
                assert c.read_bytes("/parent") == b"p" * 100_000
                assert not c.volume.background._chores  # the parent does the volume's chores
                c.write_bytes("/child", b"c" * 5000)
                c.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert gc.get_freeze_count() == 0  # the parent's collections are untouched
        # the parent's client still works after the child used (and closed) its own
        assert c.read_bytes("/child") == b"c" * 5000
        assert c.read_bytes("/parent") == b"p" * 100_000
        assert c.volume.background._chores
        clone = pickle.loads(pickle.dumps(c))
        assert clone.read_bytes("/child") == b"c" * 5000
        assert not clone.volume.background._chores
        clone.close()
        script = ("import pickle, sys; c = pickle.load(sys.stdin.buffer); "
                  "sys.stdout.write(c.read_bytes('/child').decode()); c.close()")
        res = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(c), capture_output=True,
                             timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout == b"c" * 5000
    finally:
        c.close()


def _stats(mp: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in open(os.path.join(mp, ".stats")):
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _cache_entries(cache_dir: str) -> tuple[int, int]:
    n = size = 0
    for d, _, files in os.walk(cache_dir):
        if "/raw" in d or d.endswith("/raw"):
            for f in files:
                n += 1
                size += os.path.getsize(os.path.join(d, f))
    return n, size


def test_mount_and_client_see_each_others_files_and_share_one_cache(volumes, mounts, tmp_path):
    url = volumes.create("redis", "s3")
    cache = str(tmp_path / "node-cache")
    mp = mounts.mount(url, "--cache-dir", cache)
    files = {f"/d/f{i}": os.urandom(3 << 20) for i in range(4)}  # 12 MiB, 4 blocks
    os.mkdir(os.path.join(mp, "d"))
    with Client(url) as c:
        # reads through this node's mount's cache, and writes what it fetches into it
        assert isinstance(c.volume.cache, CacheView) and c.volume.cache.notices is not None
        for path, data in files.items():
            c.write_bytes(path, data)
        for path, data in files.items():  # written by the client, read through the mount
            with open(mp + path, "rb") as f:
                assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
        with open(os.path.join(mp, "d/from-mount"), "wb") as f:
            f.write(b"m" * 777_777)
        assert c.read_bytes("/d/from-mount") == b"m" * 777_777  # and the other way round
    # a cold read by a fresh client lands in the mount's cache, once
    run_cli("umount", mp)
    mounts.active.remove(mp)
    shutil.rmtree(cache)  # cold
    mp = mounts.mount(url, "--cache-dir", cache, path=mp)
    before = _stats(mp)
    gets = 'cachefs_object_requests_total{op="get"}'
    with Client(url) as c:
        client_gets = c.volume.metrics.object_requests.labels("get")
        for path, data in files.items():
            assert c.read_bytes(path) == data
        fetched = client_gets._value.get()
        assert fetched >= len(files)
        for path, data in files.items():  # again: from the mount's cache, no object GET
            assert c.read_bytes(path) == data
        assert client_gets._value.get() == fetched
        assert isinstance(c.volume.cache, CacheView)  # a view of the mount's, no second cache
    for path, data in files.items():  # the mount finds what the client fetched
        with open(mp + path, "rb") as f:
            assert f.read() == data
    final = _stats(mp)
    assert final.get(gets, 0) == before.get(gets, 0)  # the mount fetched none of it again
    assert final["cachefs_cache_hits_total"] > before.get("cachefs_cache_hits_total", 0)
    n, size = _cache_entries(cache)
    assert n == final["cachefs_cache_blocks"]  # one entry per block, no double entries
    assert size == final["cachefs_cache_bytes"]  # and the accounting matches the disk (the client's entries adopted)


def test_a_client_beside_a_cache_group_member_asks_it_for_misses(volumes, mounts, tmp_path):
    """A keeper in a cache group takes no entries from its readers: its group may hold the
    block, so a miss is asked of it (and it asks the group)."""
    url = volumes.create("redis", "s3")
    mp = mounts.mount(url, "--cache-dir", str(tmp_path / "c"), "--cache-group", "g",
                      "--group-listen", f"127.0.0.2:{free_port()}")
    data = os.urandom(1 << 20)
    with Client(url) as c:
        c.write_bytes("/f", data)
    with Client(url) as c:
        assert isinstance(c.volume.cache, CacheView) and c.volume.cache.notices is None
        assert c.volume.peers is not None and c.read_bytes("/f") == data
    assert _stats(mp).get('cachefs_object_requests_total{op="get"}', 0) >= 1  # the mount fetched it
