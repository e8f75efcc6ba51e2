"""POSIX behaviour on a real FUSE mount (SQLite + file store unless a test says otherwise)."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import subprocess
import tempfile
import threading

import pytest

pytestmark = pytest.mark.mount

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(a: str, b: str, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory, request):
    """One mount for the module's many small tests (each test works in its own directory)."""
    from .conftest import Mounts, VolumeFactory

    tmp = tmp_path_factory.mktemp("posix")
    vols = VolumeFactory(tmp, request)
    m = Mounts(tmp)
    try:
        yield m.mount(vols.create("sqlite", "file"))
    finally:
        m.cleanup()


@pytest.fixture
def d(shared_mount, request):
    path = os.path.join(shared_mount, request.node.name.replace("[", "_").replace("]", ""))
    os.mkdir(path)
    return path


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def test_write_read_offsets_overwrite_append(d):
    p = os.path.join(d, "f")
    with open(p, "wb") as f:
        f.write(b"a" * 10_000)
        f.seek(5_000)
        f.write(b"b" * 10)
        f.seek(20_000)
        f.write(b"c")
    with open(p, "ab") as f:
        f.write(b"end")
    with open(p, "rb") as f:
        data = f.read()
    assert len(data) == 20_004
    assert data[4_999:5_011] == b"a" + b"b" * 10 + b"a"
    assert data[10_000:20_000] == b"\0" * 10_000
    assert data[-4:] == b"cend"
    with open(p, "r+b") as f:
        f.seek(3)
        f.write(b"XYZ")
        f.seek(0)
        assert f.read(8) == b"aaaXYZaa"


def test_o_trunc_and_truncate(d):
    p = os.path.join(d, "f")
    with open(p, "wb") as f:
        f.write(os.urandom(100_000))
    with open(p, "wb") as f:
        f.write(b"short")
    assert open(p, "rb").read() == b"short"
    os.truncate(p, 3)
    assert open(p, "rb").read() == b"sho"
    os.truncate(p, 10)
    assert open(p, "rb").read() == b"sho" + b"\0" * 7
    with open(p, "r+b") as f:
        f.truncate(1)
        f.seek(0, 2)
        f.write(b"z")
    assert open(p, "rb").read() == b"s" + b"z"


def test_sparse_file_beyond_chunk(d):
    p = os.path.join(d, "sparse")
    with open(p, "wb") as f:
        f.seek(70 << 20)
        f.write(b"x")
    assert os.path.getsize(p) == (70 << 20) + 1
    with open(p, "rb") as f:
        f.seek((64 << 20) - 2)
        assert f.read(4) == b"\0" * 4
        f.seek(70 << 20)
        assert f.read() == b"x"


def test_fallocate_extends(d):
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"data")
        os.posix_fallocate(fd, 0, 100_000)
        assert os.fstat(fd).st_size == 100_000
        assert os.pread(fd, 10, 0) == b"data" + b"\0" * 6
    finally:
        os.close(fd)


def test_directories(d):
    os.mkdir(os.path.join(d, "sub"))
    open(os.path.join(d, "sub", "f"), "w").close()
    assert errno_of(os.rmdir, os.path.join(d, "sub")) == errno.ENOTEMPTY
    assert errno_of(os.mkdir, os.path.join(d, "sub")) == errno.EEXIST
    assert errno_of(os.rmdir, os.path.join(d, "sub", "f")) == errno.ENOTDIR
    os.unlink(os.path.join(d, "sub", "f"))
    os.rmdir(os.path.join(d, "sub"))
    assert os.listdir(d) == []
    assert os.stat(d).st_nlink == 2


def test_readdir_large_and_stable_under_churn(d):
    stable = [f"s{i:05d}" for i in range(10_500)]
    for name in stable:
        os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644))
    for i in range(200):
        open(os.path.join(d, f"churn{i}"), "w").close()
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            try:
                os.unlink(os.path.join(d, f"churn{i % 200}"))
            except FileNotFoundError:
                pass
            open(os.path.join(d, f"new{i}"), "w").close()
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(2):
            seen = [e.name for e in os.scandir(d)]
            names = [n for n in seen if n.startswith("s")]
            assert len(names) == len(set(names)) == len(stable)
            assert len(seen) == len(set(seen))
    finally:
        stop.set()
        t.join()


def test_rename_variants(d):
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    open(a, "w").write("A")
    open(b, "w").write("B")
    os.rename(a, b)
    assert open(b).read() == "A" and not os.path.exists(a)
    open(a, "w").write("A2")
    assert errno_of(renameat2, a, b, RENAME_NOREPLACE) == errno.EEXIST
    renameat2(a, b, RENAME_EXCHANGE)
    assert open(a).read() == "A" and open(b).read() == "A2"
    # directories: into another dir, over an empty dir, not over a non-empty one
    os.makedirs(os.path.join(d, "x", "y"))
    os.mkdir(os.path.join(d, "empty"))
    os.mkdir(os.path.join(d, "full"))
    open(os.path.join(d, "full", "f"), "w").close()
    os.rename(os.path.join(d, "x"), os.path.join(d, "empty"))
    assert os.path.isdir(os.path.join(d, "empty", "y"))
    assert errno_of(os.rename, os.path.join(d, "empty"), os.path.join(d, "full")) == errno.ENOTEMPTY
    assert errno_of(os.rename, os.path.join(d, "empty"), os.path.join(d, "empty", "y", "z")) == errno.EINVAL
    os.rename(os.path.join(d, "empty"), os.path.join(d, "full", "moved"))
    assert os.listdir(os.path.join(d, "full", "moved")) == ["y"]


def test_links_and_symlinks(d):
    p = os.path.join(d, "f")
    open(p, "w").write("data")
    os.link(p, os.path.join(d, "h"))
    assert os.stat(p).st_nlink == 2
    assert os.stat(p).st_ino == os.stat(os.path.join(d, "h")).st_ino
    os.unlink(p)
    assert open(os.path.join(d, "h")).read() == "data"
    os.symlink("h", os.path.join(d, "s"))
    assert os.readlink(os.path.join(d, "s")) == "h"
    assert open(os.path.join(d, "s")).read() == "data"
    assert stat.S_ISLNK(os.lstat(os.path.join(d, "s")).st_mode)


def test_chmod_chown_utimens(d):
    p = os.path.join(d, "f")
    open(p, "w").close()
    os.chmod(p, 0o4751)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4751
    os.chown(p, 1234, 5678)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(p, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    st = os.stat(p)
    assert st.st_atime_ns == 1_600_000_000_123_456_789
    assert st.st_mtime_ns == 1_700_000_000_987_654_321


def test_xattrs(d):
    p = os.path.join(d, "f")
    open(p, "w").close()
    os.setxattr(p, "user.k", b"v1")
    assert os.getxattr(p, "user.k") == b"v1"
    assert errno_of(os.setxattr, p, "user.k", b"v2", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, p, "user.n", b"v2", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(p, "user.k", b"v2", os.XATTR_REPLACE)
    assert os.listxattr(p) == ["user.k"]
    os.removexattr(p, "user.k")
    assert errno_of(os.getxattr, p, "user.k") == errno.ENODATA


def test_statfs_and_fsync(d):
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR)
    os.write(fd, b"x" * 1000)
    os.fsync(fd)
    os.close(fd)
    st = os.statvfs(d)
    assert st.f_blocks > st.f_bfree > 0
    assert st.f_namemax == 255


def test_unlinked_file_usable_until_last_close(d):
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR)
    os.write(fd, b"hello")
    os.unlink(p)
    assert not os.path.exists(p)
    os.write(fd, b" world")
    assert os.pread(fd, 100, 0) == b"hello world"
    fd2 = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    os.close(fd)
    assert os.read(fd2, 100) == b"hello world"
    os.close(fd2)


def test_permissions_for_non_root(volumes, mounts):
    # a mountpoint that other users can reach (pytest's tmp dirs are private to root)
    base = tempfile.mkdtemp(prefix="cachefs-perm-")
    os.chmod(base, 0o755)
    try:
        _check_permissions(mounts.mount(volumes.create("sqlite", "file"), path=os.path.join(base, "m")))
    finally:
        mounts.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _check_permissions(root):
    d = os.path.join(root, "private")
    os.mkdir(d, 0o755)
    p = os.path.join(d, "rootfile")
    open(p, "w").write("secret")
    os.chmod(p, 0o600)
    open_dir = os.path.join(d, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    script = (
        "import os,sys\n"
        "def t(f):\n"
        "    try: f(); return 'ok'\n"
        "    except OSError as e: return str(e.errno)\n"
        f"print(t(lambda: open({p!r}).read()))\n"
        f"print(t(lambda: open({os.path.join(d, 'new')!r}, 'w')))\n"
        f"print(t(lambda: open({os.path.join(open_dir, 'mine')!r}, 'w').write('x')))\n"
        f"print(t(lambda: os.chmod({p!r}, 0o777)))\n"
    )

    def drop():
        os.setgid(65534)
        os.setuid(65534)

    out = subprocess.run(["python3", "-c", script], capture_output=True, text=True, preexec_fn=drop,
                         cwd="/")
    assert out.stdout.split() == [str(errno.EACCES), str(errno.EACCES), "ok", str(errno.EPERM)], out.stderr
    assert os.stat(os.path.join(open_dir, "mine")).st_uid == 65534
