"""The life of a mount process: check the mountpoint, go to the background when asked, open the
volume, register a session, serve FUSE, and flush and clean up when unmounted."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import __version__
from .errors import CachefsError, ConfigError
from .fileutil import private_dirs, tighten
from .mountinfo import is_mounted, mount_device
from .options import Options

log = logging.getLogger("cachefs")

RUN_DIR = "/run/cachefs"
EXIT_RETRY = 5.0  # seconds an exiting mount rides through an engine outage to close its session


@dataclass
class MountRequest:
    """One mount: where, of what, and how (the options and any extra FUSE options)."""

    meta_url: str
    mountpoint: str
    options: Options = field(default_factory=Options)
    fuse_options: list[str] = field(default_factory=list)


def check_mountpoint(path: str) -> str:
    """The absolute mountpoint, or a ConfigError saying what is wrong with it."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ConfigError(f"mountpoint {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise ConfigError(f"mountpoint {path} is a dead mount; run `cachefs umount {path}` first") from None
        raise ConfigError(f"mountpoint {path}: {e.strerror}") from None
    import stat as _stat

    if not _stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"mountpoint {path} is not a directory")
    if is_mounted(real):
        try:
            os.statvfs(real)  # answered by the mount process itself, never from a cache
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                raise ConfigError(f"mountpoint {path} is a dead mount; run `cachefs umount {path}` first") from None
        raise ConfigError(f"{path} is already mounted")
    return real


def state_file(mountpoint: str) -> str:
    """Where a mount records its pid and URL; takes a resolved path, because resolving a path
    inside our own mount from the mount process would wait on ourselves."""
    digest = hashlib.sha1(mountpoint.encode()).hexdigest()[:16]
    return os.path.join(RUN_DIR, f"mount-{digest}.json")


def read_state(mountpoint: str) -> dict | None:
    try:
        with open(state_file(mountpoint)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_state(req: MountRequest) -> None:
    """The state file holds the metadata URL (perhaps with a password): root's alone."""
    private_dirs(RUN_DIR)
    tighten(RUN_DIR)
    path = state_file(req.mountpoint)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "mountpoint": req.mountpoint, "meta_url": req.meta_url,
                   "writeback": req.options.writeback}, f)
    os.rename(path + ".tmp", path)


def _remove_state(req: MountRequest) -> None:
    try:
        st = read_state(req.mountpoint)
        if st and st.get("pid") == os.getpid():
            os.unlink(state_file(req.mountpoint))
    except OSError:
        pass


def _setup_logging(log_file: str) -> None:
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s cachefs[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("botocore").setLevel(logging.WARNING)


def mount(req: MountRequest, background: bool) -> int:
    """Mount and serve; with background, return once the mount is ready (0) or failed (1)."""
    req.mountpoint = check_mountpoint(req.mountpoint)
    if not background:
        _setup_logging(req.options.log)
        return _serve(req, notify=None)
    log_file = req.options.log or "/var/log/cachefs.log"
    try:
        os.close(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
    except OSError as e:
        raise ConfigError(f"cannot write log file {log_file}: {e.strerror}") from None
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.read().decode(errors="replace").strip()
        if msg == "ok":
            print(f"cachefs: mounted at {req.mountpoint} (pid {pid}; unmount with `cachefs umount "
                  f"{req.mountpoint}`, log in {log_file})")
            return 0
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        print(f"cachefs: {msg or 'mount process exited before it was ready (see ' + log_file + ')'}",
              file=sys.stderr)
        return 1
    # the mount process
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    logfd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    req.options.log = log_file
    _setup_logging(log_file)

    def notify(msg: str) -> None:
        nonlocal w
        if w >= 0:
            os.write(w, msg.encode())
            os.close(w)
            w = -1

    code = 1
    try:
        code = _serve(req, notify)
    except BaseException as e:
        log.exception("mount failed")
        notify(str(e))
    finally:
        notify("mount process exited")
        os._exit(code)


def _set_kernel_readahead(mountpoint: str, kib: int) -> None:
    """Let the kernel read ahead a block at a time: larger FUSE reads cost fewer round trips.
    Runs once the kernel's INIT handshake is done (it resets readahead); the device numbers come
    from mountinfo, because a stat of the mountpoint would wait on ourselves."""
    device = mount_device(mountpoint)
    if device is None:
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as ra:
            ra.write(str(kib))
    except OSError as e:
        log.info("kernel readahead left at its default: %s", e)


def _tune_malloc() -> None:
    """Keep 4 MiB block buffers in one malloc heap, where a freed one is reused as it is.

    Left alone, glibc serves the first large buffers with mmap and raises its threshold after
    the first free, so later ones land in per-thread arenas that cannot reuse each other's free
    space: RSS drifts far above --buffer-size. Serving every buffer with a fresh mmap (the fix
    until then) bounds RSS but costs a thousand page faults per 4 MiB, a fifth of a warm
    sequential read's CPU. One arena and a fixed threshold above the block size bound RSS by
    the peak of live buffers and reuse their pages; free memory above 64 MiB at the top of the
    heap goes back to the OS."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 1)  # M_ARENA_MAX: every thread allocates from the main heap (the GIL serialises us)
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD, fixed (which also stops its adjustment)
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _serve(req: MountRequest, notify: Callable[[str], None] | None) -> int:
    import pyfuse3
    import trio

    from . import fusewait
    from .fuse import Operations, fuse_options, serve
    from .loopredis import LoopOpen
    from .uring import Ring
    from .volume import Volume

    o = req.options

    def fail(msg: str) -> int:
        if notify or o.log:
            log.error("%s", msg)
        if notify:
            notify(msg)
        else:
            print(f"cachefs mount: {msg}", file=sys.stderr)
        return 1

    _tune_malloc()
    try:
        vol = Volume(req.meta_url, o)
    except CachefsError as e:
        return fail(str(e))
    try:
        # the session, what a killed write-back run left in staging (uploaded before we are
        # ready), the cache group
        vol.start({"mountpoint": req.mountpoint, "hostname": socket.gethostname(), "version": __version__,
                   "read_only": o.read_only, "writeback": o.writeback})
        ops = Operations(vol.vfs, vol.metrics, o.threads, o.attr_cache, o.entry_cache, o.dir_entry_cache,
                         on_init=lambda: _set_kernel_readahead(req.mountpoint,
                                                               max(128, vol.settings.block_size >> 10)),
                         loop_open=LoopOpen.of(vol.meta), ring=Ring.open())
        opts = fuse_options(f"cachefs:{vol.settings.name}", o.read_only, req.fuse_options)
        try:
            wait = fusewait.init(ops, req.mountpoint, opts, o.busy_poll, ops.waiting)
        except RuntimeError as e:
            return fail(f"cannot mount at {req.mountpoint}: {e}")
        if wait is not None:
            vol.metrics.fuse_at_once.labels("queued").set_function(lambda: wait.taken - wait.polled)
            vol.metrics.fuse_at_once.labels("polled").set_function(lambda: wait.polled)
        if o.metrics:
            try:
                vol.metrics.serve(o.metrics)
            except (OSError, ValueError) as e:
                return fail(f"cannot serve metrics on {o.metrics}: {e}")
        vol.background.start()
        ops.hop.start()  # ready for the first request: no thread starts on its path
        _write_state(req)
        log.info("mounted volume %s at %s (session %d)", vol.settings.name, req.mountpoint, vol.meta.sid)
        if notify:
            notify("ok")
        try:
            trio.run(serve, ops)
        finally:
            ops.close()
            pyfuse3.close(unmount=True)
        log.info("unmounted %s", req.mountpoint)
        return 0
    except CachefsError as e:
        return fail(str(e))
    finally:
        _remove_state(req)
        try:
            if vol.writeback is None or vol.flushed_for_exit:
                vol.writer.commit_all(vol.files)
            else:
                # a plain `umount` (cachefs umount has flushed already): upload what we can before
                # we go; the rest stays staged for the next mount of this cache dir
                left = vol.flush(o.flush_timeout)
                if left:
                    log.warning("exiting with %d byte(s) of %d file(s) still staged (uploaded at the next "
                                "mount of this cache dir)", sum(n for _, n in left), len(left))
        except Exception as e:
            log.error("flush at unmount failed: %s", e)
        vol.background.stop()  # (never started: nothing to stop)
        # the file system is gone already: closing the session is a courtesy to the other
        # clients (they clean it up after the session timeout otherwise), not worth a long wait
        vol.meta.retry.timeout = min(vol.meta.retry.timeout, EXIT_RETRY)
        try:
            vol.meta.close_session()
        except Exception as e:
            log.warning("closing session failed: %s", e)
        vol.close()


def umount(mountpoint: str, force: bool = False, wait: float = 60.0) -> None:
    """Unmount and wait for the mount process to finish (it flushes on the way out)."""
    import subprocess

    real = os.path.realpath(mountpoint)
    state = read_state(real)
    if not is_mounted(real):
        _forget_dead(real, state)
        raise ConfigError(f"{mountpoint} is not mounted")
    cmds = [["fusermount3", "-u", real]]
    if force:
        cmds = [["fusermount3", "-u", "-z", real], ["umount", "-l", real]]
    else:
        cmds.append(["umount", real])
    last = ""
    for cmd in cmds:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode == 0 or not is_mounted(real):
            break
        last = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
        last = last[0]
    else:
        if "busy" in last.lower():
            raise CachefsError(f"{mountpoint} is busy (files are open); use --force to detach it")
        raise CachefsError(f"cannot unmount {mountpoint}: {last}")
    pid = state.get("pid") if state else None
    if pid:
        deadline = time.time() + wait
        while time.time() < deadline and _alive(pid):
            time.sleep(0.05)
    _forget_dead(real, state)


def _forget_dead(mountpoint: str, state: dict | None) -> None:
    """Remove the state file of a mount whose process is gone (a killed mount leaves it)."""
    if state and not _alive(int(state.get("pid") or 0)):
        try:
            os.unlink(state_file(mountpoint))
        except OSError:
            pass


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
