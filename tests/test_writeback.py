"""Kernel-free write-back tests: SQLite metadata, the mem object store, real staging files."""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid

import pytest

from cachefs import writeback
from cachefs.errors import CachefsError, ConfigError, FSError, ObjectError, ObjectUnavailable, errno_of
from cachefs.meta import open_meta
from cachefs.meta.types import ROOT_INODE, Settings
from cachefs.options import Options
from cachefs.volume import Volume

BS = 64 << 10


class Gate:
    """Controls the object store's PUTs: open, failing (down or rejecting), or held."""

    def __init__(self, vol: Volume) -> None:
        self.store = vol.objects
        self.real = self.store.put
        self.mode = "open"
        self.released = threading.Event()
        self.store.put = self.put

    def put(self, key: str, data: bytes) -> None:
        if self.mode == "down":
            raise ObjectUnavailable("store down")
        if self.mode == "reject":
            raise ObjectError("access denied")
        if self.mode == "hold":
            self.released.wait(30)
        self.real(key, data)


@pytest.fixture
def url(tmp_path):
    url = f"sqlite3://{tmp_path}/m.db"
    meta = open_meta(url)
    meta.format(Settings(name="v", uuid="u", storage="mem", bucket=str(uuid.uuid4()), block_size=BS))
    meta.close_engine()
    return url


def open_volume(url: str, cache: str | None, **kw) -> Volume:
    opts = Options(cache_dir=cache or "", writeback=cache is not None and kw.pop("wb", True), **kw)
    v = Volume(url, opts)
    v.meta.new_session({})
    return v


def write_file(vol: Volume, name: bytes, data: bytes, close: bool = True) -> tuple[int, int]:
    fh, ino, _ = vol.vfs.create(ROOT_INODE, name, 0o644, os.O_RDWR)
    vol.vfs.write(fh, 0, data)
    if close:
        vol.vfs.release(fh)
    else:
        vol.vfs.flush(fh)
    return fh, ino


def read_file(vol: Volume, name: bytes) -> bytes:
    ino, attr = vol.vfs.lookup(ROOT_INODE, name)
    fh = vol.vfs.open(ino, os.O_RDONLY)
    try:
        return vol.vfs.read(fh, 0, attr.length + 1)
    finally:
        vol.vfs.release(fh)


def staged(vol: Volume) -> list[str]:
    """The staged block files (not the directory's lock file)."""
    return [n for n in os.listdir(vol.writeback.staging.path) if not n.startswith(".")]


def block_objects(vol: Volume) -> list[str]:
    return [k for k, _ in vol.objects.list("v/chunks/")]


def test_close_returns_before_upload_and_staging_serves_reads(url, tmp_path):
    vol = open_volume(url, str(tmp_path / "c"))
    gate = Gate(vol)
    gate.mode = "hold"
    data = os.urandom(5 * BS + 123)
    t0 = time.monotonic()
    write_file(vol, b"f", data)
    assert time.monotonic() - t0 < 10  # returned while every PUT is held
    pending = vol.meta.pending_slices()
    assert len(pending) == 1 and pending[0].sid == vol.meta.sid and pending[0].size == len(data)
    assert read_file(vol, b"f") == data  # from staging
    assert len(staged(vol)) == 6
    gate.released.set()
    assert vol.flush(timeout=20) == []
    assert vol.meta.pending_slices() == []
    assert staged(vol) == []
    assert len(block_objects(vol)) == 6
    other = open_volume(url, None)  # another client: reads the store
    assert read_file(other, b"f") == data
    other.close()
    vol.close()


def test_recovery_uploads_pending_and_drops_uncommitted(url, tmp_path):
    cache = str(tmp_path / "c")
    vol = open_volume(url, cache)
    gate = Gate(vol)
    gate.mode = "down"
    done = os.urandom(3 * BS + 5)
    write_file(vol, b"done", done)  # close returned: must survive
    write_file(vol, b"open", os.urandom(4 * BS), close=False)  # committed by flush: survives too
    fh, _ino, _ = vol.vfs.create(ROOT_INODE, b"never", 0o644, os.O_RDWR)
    vol.vfs.write(fh, 0, os.urandom(2 * BS))  # staged, never committed: dropped at recovery
    wait = time.monotonic() + 10
    while len(staged(vol)) < 4 + 4 + 2 and time.monotonic() < wait:
        time.sleep(0.05)
    # the process dies here: no flush, no close, uploads stopped
    vol.writeback.close()
    gate.mode = "open"
    assert len(vol.meta.pending_slices()) == 2
    assert block_objects(vol) == []

    again = open_volume(url, cache)
    slices, blocks = again.recover(timeout=30)
    assert (slices, blocks) == (2, 4 + 4)
    assert again.meta.pending_slices() == []
    assert staged(again) == []
    reader = open_volume(url, None)
    assert read_file(reader, b"done") == done
    assert len(read_file(reader, b"open")) == 4 * BS
    assert read_file(reader, b"never") == b""
    reader.close()
    again.close()


def test_rejected_upload_fails_fsync_then_recovers(url, tmp_path, monkeypatch):
    monkeypatch.setattr(writeback, "PERMANENT_RETRY", 0.2)
    vol = open_volume(url, str(tmp_path / "c"))
    gate = Gate(vol)
    gate.mode = "reject"
    data = os.urandom(2 * BS)
    fh, ino, _ = vol.vfs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR)
    vol.vfs.write(fh, 0, data)
    try:
        vol.vfs.flush(fh)  # commits (the rejection may already show here)
    except FSError as e:
        assert e.errno == errno.EIO
    deadline = time.monotonic() + 10
    while vol.writeback.error_of(ino) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(FSError) as e:
        vol.vfs.fsync(fh)
    assert e.value.errno == errno.EIO
    assert vol.metrics.value("cachefs_writeback_upload_failures_total", kind="permanent") >= 1
    assert vol.flush(timeout=1) == [(ino, 2 * BS)]  # rejected: flush reports it
    gate.mode = "open"
    assert vol.flush(timeout=20) == []
    vol.vfs.fsync(fh)  # the error is gone with the upload
    assert vol.writeback._failing == 0  # (error_of looks through pending slices only while one failed)
    vol.vfs.release(fh)
    assert read_file(open_volume(url, None), b"f") == data
    vol.close()


def test_store_down_writes_continue_and_upload_later(url, tmp_path):
    vol = open_volume(url, str(tmp_path / "c"))
    gate = Gate(vol)
    gate.mode = "down"
    files = {f"f{i}".encode(): os.urandom(BS * 2 + i) for i in range(5)}
    for name, data in files.items():
        write_file(vol, name, data)
    assert vol.flush(timeout=0.5) != []
    assert vol.metrics.value("cachefs_writeback_upload_failures_total", kind="transient") >= 1
    gate.mode = "open"
    assert vol.flush(timeout=30) == []
    reader = open_volume(url, None)
    for name, data in files.items():
        assert read_file(reader, name) == data
    reader.close()
    vol.close()


def test_full_staging_writes_through(url, tmp_path):
    # room for two blocks: the rest is written through, nothing fails
    vol = open_volume(url, str(tmp_path / "c"), cache_size=2 * BS + 100, free_space_ratio=0.0)
    data = os.urandom(10 * BS)
    write_file(vol, b"f", data)
    assert vol.metrics.value("cachefs_staging_fallbacks_total") >= 8
    assert vol.flush(timeout=20) == []
    assert read_file(open_volume(url, None), b"f") == data
    vol.close()


def test_fsync_remote_waits_for_upload(url, tmp_path):
    vol = open_volume(url, str(tmp_path / "c"), fsync="remote")
    gate = Gate(vol)
    gate.mode = "hold"
    fh, _ino = write_file(vol, b"f", os.urandom(3 * BS), close=False)
    done = threading.Event()
    t = threading.Thread(target=lambda: (vol.vfs.fsync(fh), done.set()))
    t.start()
    assert not done.wait(0.5)  # waiting for the held uploads
    gate.released.set()
    assert done.wait(20)
    t.join()
    assert vol.meta.pending_slices() == []
    vol.vfs.release(fh)
    vol.close()


def test_reader_waits_for_pending_blocks_then_eio_when_writer_is_gone(url, tmp_path):
    writer = open_volume(url, str(tmp_path / "c"))
    gate = Gate(writer)
    gate.mode = "hold"
    data = os.urandom(3 * BS)
    write_file(writer, b"f", data)
    reader = open_volume(url, None, pending_timeout=20)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("data", read_file(reader, b"f")))
    t.start()
    time.sleep(0.5)
    assert t.is_alive()  # waiting, not reading zeros
    gate.released.set()
    t.join(30)
    assert result["data"] == data
    reader.close()

    # a writer whose staging is lost: the reader gives up after the bound with EIO
    gate.released.clear()
    write_file(writer, b"g", os.urandom(2 * BS))
    writer.writeback.close()
    short = open_volume(url, None, pending_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(CachefsError) as e:
        read_file(short, b"g")
    assert errno_of(e.value) == errno.EIO
    assert 0.9 <= time.monotonic() - t0 < 10
    short.close()
    gate.released.set()


def test_uploads_racing_the_commit_leave_no_pending_record(url, tmp_path):
    # uploads finishing between "which slices are outstanding" and the commit must still clear
    # the record the commit wrote (a lost clear leaves the file pending forever)
    vol = open_volume(url, str(tmp_path / "c"))
    for i in range(60):
        write_file(vol, f"f{i}".encode(), os.urandom(BS + i * 97))
    assert vol.flush(timeout=30) == []
    wait = time.monotonic() + 10
    while vol.meta.pending_slices() and time.monotonic() < wait:
        time.sleep(0.05)
    assert vol.meta.pending_slices() == []
    assert staged(vol) == []
    vol.close()


def test_uploads_give_way_to_an_active_writer_within_bounds(url, tmp_path):
    vol = open_volume(url, str(tmp_path / "c"), upload_defer=30.0)
    puts: list[float] = []
    real = vol.objects.put
    vol.objects.put = lambda key, data: (puts.append(time.monotonic()), real(key, data))
    stop = threading.Event()

    def writer(name: bytes) -> None:
        fh, _ino, _ = vol.vfs.create(ROOT_INODE, name, 0o644, os.O_RDWR)
        off = 0
        while not stop.is_set():
            vol.vfs.write(fh, off, os.urandom(BS))  # one full block staged every 20 ms
            off += BS
            time.sleep(0.02)
        vol.vfs.release(fh)

    t = threading.Thread(target=writer, args=(b"a",))
    t.start()
    time.sleep(1.0)
    assert puts == []  # the writer is busy: uploads wait
    stop.set()
    t.join()
    paused = time.monotonic()
    assert vol.flush(timeout=20) == []
    assert puts and min(puts) >= paused - 0.05

    # someone waiting for durability does not wait for the writer to pause
    stop.clear()
    puts.clear()
    t = threading.Thread(target=writer, args=(b"b",))
    t.start()
    time.sleep(0.3)
    vol.vfs.flush_all()
    assert vol.flush(timeout=20) == []
    assert t.is_alive() and puts
    stop.set()
    t.join()
    vol.close()

    # and the wait is bounded: after `defer` seconds uploads go ahead under a busy writer
    vol = open_volume(url, str(tmp_path / "c2"), upload_defer=0.5)
    puts2: list[float] = []
    real2 = vol.objects.put
    vol.objects.put = lambda key, data: (puts2.append(time.monotonic()), real2(key, data))
    stop.clear()
    started = time.monotonic()
    t = threading.Thread(target=writer, args=(b"c",))
    t.start()
    time.sleep(1.5)
    assert puts2 and min(puts2) - started < 1.4
    stop.set()
    t.join()
    vol.close()


def test_one_mount_process_owns_a_staging_directory(url, tmp_path):
    cache = str(tmp_path / "c")
    vol = open_volume(url, cache)
    with pytest.raises(ConfigError, match="in use by another mount"):
        open_volume(url, cache)
    write_file(vol, b"f", os.urandom(BS))
    reader = open_volume(url, cache, wb=False)  # no write-back: leaves the owner's staging alone
    assert reader.writeback is None
    reader.close()
    vol.close()
    again = open_volume(url, cache)  # the owner is gone: the next one takes it over
    again.close()
