"""Hostile input, local security and leaks: what an unprivileged or careless user of a shared
node can (not) do, writers killed mid-write leaving nothing behind, gc and fsck finding what is
wrong, and bad input answered with one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from .conftest import run_cli, wait_for

pytestmark = pytest.mark.mount
NOBODY = 65534


@pytest.fixture
def public_dir():
    """A directory every local user may enter (pytest's own tmp dirs are root's alone)."""
    d = tempfile.mkdtemp(prefix="cachefs-public-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", *[os.path.join(d, n) for n in os.listdir(d)]], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), user=NOBODY, group=NOBODY, capture_output=True, text=True, timeout=30)


def py_nobody(code: str) -> str:
    """Run Python code as nobody; its stdout (an errno name, or OK)."""
    res = as_nobody("python3", "-c", code)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def try_open(path: str) -> str:
    return py_nobody(f"""
import errno
try:
    open({path!r}, 'rb').read(); print('OK')
except OSError as e:
    print(errno.errorcode[e.errno])
""")


def test_node_cache_staging_and_state_files_are_root_only(volumes, mounts, public_dir):
    url = volumes.create("sqlite", "file")
    mp, cache = os.path.join(public_dir, "mnt"), os.path.join(public_dir, "cache")
    a = mounts.mount(url, "--writeback", "--cache-dir", cache, "--cache-large-write", path=mp)
    for name, mode in (("public", 0o644), ("secret", 0o600)):
        with open(os.path.join(a, name), "wb") as f:
            f.write(name.encode() * 100_000)
        os.chmod(os.path.join(a, name), mode)
    with open(os.path.join(a, "secret"), "rb") as f:
        f.read()  # fills the cache
    assert try_open(os.path.join(a, "public")) == "OK"  # the mount's own permissions hold
    assert try_open(os.path.join(a, "secret")) == "EACCES"
    entries = [os.path.join(d, n) for d, _, files in os.walk(cache) for n in files if n != ".lock"]
    assert any("/staging/" in p or "/raw/" in p for p in entries), entries  # blocks, staged or cached
    for path in entries:
        try:
            assert os.stat(path).st_mode & 0o077 == 0, path
        except FileNotFoundError:  # a staged block uploaded (and removed) since the walk
            assert "/staging/" in path, path
            continue
        assert try_open(path) == "EACCES", path  # (a vanished one too: nobody cannot see into the cache)
    volume_dir = next(os.path.join(cache, n) for n in os.listdir(cache))
    assert os.stat(volume_dir).st_mode & 0o777 == 0o700
    assert as_nobody("ls", volume_dir).returncode != 0
    from cachefs.daemon import RUN_DIR, state_file

    state = state_file(os.path.realpath(a))
    assert os.stat(state).st_mode & 0o077 == 0 and os.stat(RUN_DIR).st_mode & 0o077 == 0
    assert try_open(state) == "EACCES"
    run_cli("flush", a)
    mounts.umount(a)
    # a cache left world-readable by an older version is tightened at mount
    os.chmod(volume_dir, 0o755)
    for path in entries:
        if os.path.exists(path):
            os.chmod(path, 0o644)
    a = mounts.mount(url, "--cache-dir", cache, path=mp)
    assert os.stat(volume_dir).st_mode & 0o777 == 0o700
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in entries if os.path.exists(p))


def test_reserved_names_cannot_be_taken(volumes, mounts, public_dir):
    url = volumes.create("sqlite", "file")
    a = mounts.mount(url, path=os.path.join(public_dir, "mnt"))
    os.chmod(a, 0o777)
    shared = os.path.join(a, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)  # no sticky bit
    out = py_nobody(f"""
import errno, os
def e(fn, *a):
    try:
        fn(*a); return 'OK'
    except OSError as x:
        return errno.errorcode[x.errno]
d = {shared!r}
open(os.path.join(d, 'mine'), 'w').write('x')
print(e(os.rename, os.path.join(d, 'mine'), os.path.join(d, '.control')),
      e(os.link, os.path.join(d, 'mine'), os.path.join(d, '.control')),
      e(os.symlink, 'mine', os.path.join(d, '.control')),
      e(os.mkdir, os.path.join(d, '.control')),
      e(os.unlink, os.path.join(d, '.control')),
      e(os.rename, os.path.join(d, '.control'), os.path.join(d, 'stolen')),
      e(os.rename, os.path.join(d, 'mine'), os.path.join({a!r}, '.stats')),
      e(lambda: os.close(os.open(os.path.join(d, '.control'), os.O_CREAT | os.O_EXCL | os.O_WRONLY))))
""")
    assert all(r in ("EPERM", "EEXIST", "EACCES") for r in out.split()), out
    assert "OK" not in out.split()
    # root's commands still reach the mount's own control file
    assert run_cli("flush", shared).returncode == 0
    run_cli("warmup", "--check", shared)
    assert sorted(os.listdir(shared)) == ["mine"]


def test_cli_refuses_a_control_file_that_is_not_the_mounts(tmp_path):
    from cachefs.cli import control
    from cachefs.errors import ConfigError

    (tmp_path / ".control").write_text("{}")
    with pytest.raises(ConfigError, match="not the mount's control file"):
        control(str(tmp_path), {"cmd": "flush"})


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
@pytest.mark.parametrize("mode", ["write-through", "write-back"])
def test_killed_writer_leaves_exactly_the_committed_blocks(engine, mode, volumes, mounts, tmp_path):
    url = volumes.create(engine, "file")
    bucket = json.loads(run_cli("status", url).stdout)["setting"]["bucket"]
    flags = ("--upload-defer", "0", "--buffer-size", "64") + (("--writeback",) if mode == "write-back" else ())
    keeper = mounts.mount(url)
    a = mounts.mount(url, *flags)
    with open(os.path.join(a, "kept"), "wb") as f:
        f.write(os.urandom(9 << 20))
    run_cli("flush", a)

    def objects() -> set[str]:
        return {os.path.relpath(os.path.join(d, n), bucket) for d, _, files in os.walk(bucket) for n in files
                if ".tmp." not in n}

    before = len(objects())
    stop = threading.Event()

    def writer() -> None:
        try:
            with open(os.path.join(a, "half"), "wb") as f:
                while not stop.is_set():
                    f.write(os.urandom(1 << 20))
        except OSError:
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    wait_for(lambda: len(objects()) >= before + 6, 60)  # blocks of the uncommitted slice uploaded
    os.kill(mounts.pid(a), signal.SIGKILL)
    stop.set()
    subprocess.run(["umount", "-l", a], capture_output=True)
    mounts.active.remove(a)
    # the keeper mount takes the silent session for dead and removes its uncommitted objects
    from cachefs.block import block_keys
    from cachefs.meta import open_meta

    def committed() -> set[str]:
        meta = open_meta(url)
        try:
            s = meta.load()
            return {k for ino in (meta.lookup(1, n)[0] for n, _, _ in meta.readdir(1))
                    for sid, size in meta.file_slices(ino) for _, k, _ in block_keys(s.name, sid, size, s.block_size)}
        finally:
            meta.close_engine()

    wait_for(lambda: objects() == committed(), 60, interval=0.5)
    assert len(json.loads(run_cli("status", url).stdout)["sessions"]) == 1
    with open(os.path.join(keeper, "kept"), "rb") as f:
        assert len(f.read()) == 9 << 20
    res = run_cli("gc", url, "--min-age", "0")
    assert " 0 leaked" in res.stdout, res.stdout
    assert " 0 damaged" in run_cli("fsck", url).stdout


def test_gc_and_fsck_find_leaked_and_damaged_objects(volumes, mounts):
    url = volumes.create("sqlite", "file")
    status = json.loads(run_cli("status", url).stdout)["setting"]
    bucket, name = status["bucket"], status["name"]
    a = mounts.mount(url)
    for n in ("f", "g"):
        with open(os.path.join(a, n), "wb") as f:
            f.write(os.urandom(5 << 20))
    mounts.umount(a)
    orphan = os.path.join(bucket, name, "chunks", "9", "9999", "9999999_0_100")
    os.makedirs(os.path.dirname(orphan))
    with open(orphan, "wb") as f:
        f.write(b"x" * 120)
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    young = orphan.replace("9999999_0_100", "9999998_0_100")
    with open(young, "wb") as f:
        f.write(b"y" * 120)
    res = run_cli("gc", url)
    assert " 1 leaked (120 B)" in res.stdout and "1 younger" in res.stdout, res.stdout
    run_cli("gc", url, "--delete")
    assert not os.path.exists(orphan) and os.path.exists(young)
    assert " 0 damaged" in run_cli("fsck", url).stdout
    # a truncated block is damage (size), a flipped byte too (with --verify)
    blocks = sorted(os.path.join(d, n) for d, _, files in os.walk(os.path.join(bucket, name)) for n in files
                    if n.endswith(f"_{4 << 20}"))
    with open(blocks[0], "r+b") as f:
        f.truncate(1000)
    res = run_cli("fsck", url, check=False)
    assert res.returncode == 1 and "damaged /" in res.stdout and "wrong size" in res.stdout, res.stdout
    with open(blocks[1], "r+b") as f:
        f.seek(500)
        byte = f.read(1)
        f.seek(500)
        f.write(bytes([byte[0] ^ 1]))
    assert run_cli("fsck", url, check=False).stdout.count("damaged /") == 1
    assert run_cli("fsck", url, "--verify", check=False).stdout.count("damaged /") == 2


def test_background_work_never_starves_the_heartbeat(volumes, mounts):
    """The largest job we can make (deleting a file of thousands of chunks, one slice each)
    runs on one mount while its heartbeat keeps time; an open unlinked file on another mount
    stays readable throughout."""
    url = volumes.create("redis", "file")
    a = mounts.mount(url)
    b = mounts.mount(url)
    from cachefs.meta import open_meta
    from cachefs.meta.types import ROOT_INODE, TYPE_FILE, Slice

    meta = open_meta(url)
    meta.load()
    ino, _ = meta.mknod(ROOT_INODE, b"huge", TYPE_FILE, 0o644, 0, 0)
    for i in range(0, 6000, 500):
        meta.write(ino, [(indx, Slice(0, meta.new_slice_id(), 1, 0, 1)) for indx in range(i, i + 500)])
    with open(os.path.join(b, "held"), "wb") as f:
        f.write(b"still here" * 1000)
    held = open(os.path.join(b, "held"), "rb")
    os.unlink(os.path.join(b, "held"))
    os.unlink(os.path.join(a, "huge"))  # a's background deletes 6000 chunks
    ages = []
    deadline = time.time() + 8
    while time.time() < deadline:
        now = meta.now()
        ages += [now - s.heartbeat for s in meta.sessions()]
        held.seek(0)
        assert held.read() == b"still here" * 1000
        time.sleep(0.2)
    held.close()
    meta.close_engine()
    assert max(ages) < 2.0  # heartbeat every 0.5 s (the tests' setting), session timeout 3 s
    assert len(json.loads(run_cli("status", url).stdout)["sessions"]) == 2


def test_bad_input_is_one_line(volumes, tmp_path):
    def fails(*args: str, match: str) -> None:
        res = run_cli(*args, check=False)
        assert res.returncode != 0, res
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr and match in res.stderr, res.stderr

    fails("status", "redis://127.0.0.1:notaport/1", match="not a number")
    fails("status", "redis://127.0.0.1:6379/notadb", match="database")
    url = volumes.create("sqlite", "file")
    (tmp_path / "afile").write_text("x")
    os.mkdir(tmp_path / "m")
    fails("mount", url, str(tmp_path / "m"), "--cache-dir", str(tmp_path / "afile"), match="not a directory")
    fails("format", "sqlite3:///tmp/x.db", "v", "--storage", "s3", "--bucket", "s3://b", "--endpoint", "not a url",
          match="endpoint")


def test_password_in_url_warns_and_meta_password_keeps_it_out(mounts, tmp_path):
    from .servers import RedisServer

    server = RedisServer(extra=["--requirepass", "s3cret"])
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/1"
        run_cli("format", url, "v", "--bucket", str(tmp_path / "objects"))
        os.mkdir(tmp_path / "m")
        res = run_cli("mount", url, str(tmp_path / "m"), "--background", "--log", str(tmp_path / "log"))
        mounts.active.append(str(tmp_path / "m"))
        assert "process list" in res.stderr and "s3cret" not in res.stderr
        mounts.umount(str(tmp_path / "m"))
        bare = f"redis://127.0.0.1:{server.port}/1"
        res = run_cli("mount", bare, str(tmp_path / "m"), "--background", "--log", str(tmp_path / "log"),
                      env={"META_PASSWORD": "s3cret"})
        mounts.active.append(str(tmp_path / "m"))
        assert "process list" not in res.stderr
        pid = mounts.pid(str(tmp_path / "m"))
        assert b"s3cret" not in open(f"/proc/{pid}/cmdline", "rb").read()
    finally:
        mounts.cleanup()
        server.stop()


def test_umount_cleans_up_after_a_killed_mount(volumes, mounts):
    from cachefs.daemon import state_file

    url = volumes.create("sqlite", "file")
    a = mounts.mount(url)
    state = state_file(os.path.realpath(a))
    assert os.path.exists(state)
    os.kill(mounts.pid(a), signal.SIGKILL)
    time.sleep(0.5)
    run_cli("umount", a)
    mounts.active.remove(a)
    assert not os.path.exists(state)
