"""The `cachefs` command: every subcommand prints a one-line error and exits non-zero on
failure, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import __version__
from .errors import CachefsError, ConfigError, FSError
from .progress import human

if TYPE_CHECKING:
    from cachefs.meta import BaseMeta
    from cachefs.meta.types import Settings

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"bad size {text!r} (examples: 4M, 512K, 1048576)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_format(sub) -> None:
    p = sub.add_parser("format", help="create a volume", description="Create (format) a volume: store its "
                       "settings in the metadata engine and check the object store.")
    p.add_argument("meta_url", metavar="META_URL", help="redis://[[user]:password@]host:port/db or sqlite3://PATH")
    p.add_argument("name", metavar="NAME", help="volume name (letters, digits, . _ -)")
    p.add_argument("--storage", choices=["file", "s3"], default="file", help="object store kind (default file)")
    p.add_argument("--bucket", default="", help="s3: http(s)://host:port/BUCKET or s3://BUCKET; file: a directory "
                   "(default /var/lib/cachefs/objects)")
    p.add_argument("--endpoint", default="", help="S3 endpoint URL, with --bucket s3://BUCKET")
    p.add_argument("--region", default="", help="S3 region")
    p.add_argument("--access-key", default="", help="S3 access key (default $AWS_ACCESS_KEY_ID)")
    p.add_argument("--secret-key", default="", help="S3 secret key (default $AWS_SECRET_ACCESS_KEY)")
    p.add_argument("--block-size", default="4M", help="block size, 64K to 16M (default 4M)")
    p.add_argument("--compress", choices=["lz4", "none"], default="none", help="block compression")
    p.add_argument("--force", action="store_true", help="replace an existing volume's settings")


def cmd_format(a: argparse.Namespace) -> int:
    from cachefs.meta import open_meta
    from cachefs.meta.types import Settings

    from .objects import open_store

    if not NAME_RE.match(a.name):
        raise ConfigError(f"bad volume name {a.name!r}: use letters, digits, '.', '_' and '-' (up to 63)")
    bs = parse_size(a.block_size)
    if bs < 64 << 10 or bs > 16 << 20:
        raise ConfigError("--block-size must be between 64K and 16M")
    bucket = a.bucket
    if a.storage == "file":
        bucket = os.path.abspath(bucket or "/var/lib/cachefs/objects")
    elif not bucket:
        raise ConfigError("--storage s3 needs --bucket http(s)://host:port/BUCKET or s3://BUCKET")
    if a.storage == "s3":
        from .objects.s3 import parse_bucket

        parse_bucket(bucket, a.endpoint)
    settings = Settings(name=a.name, uuid=str(uuid.uuid4()), storage=a.storage, bucket=bucket,
                        endpoint=a.endpoint, access_key=a.access_key, secret_key=a.secret_key,
                        region=a.region, block_size=bs, compression=a.compress)
    meta = open_meta(a.meta_url)
    try:
        old = meta._load_settings()
        if old is not None and not a.force:
            raise ConfigError(f"volume {old.name!r} is already formatted here (use --force to replace it)")
        open_store(settings).create()
        meta.format(settings, force=a.force)
    finally:
        meta.close_engine()
    print(f"cachefs: formatted volume {a.name!r} (uuid {settings.uuid}, {a.storage} storage, "
          f"block size {bs >> 10} KiB, compression {a.compress})")
    return 0


def _add_mount(sub) -> None:
    p = sub.add_parser("mount", help="mount a volume", description="Mount a volume with FUSE. Runs in the "
                       "foreground unless --background is given.")
    p.add_argument("meta_url", metavar="META_URL", help="or - to read it from $CACHEFS_META_URL (keeps a "
                   "password out of the process list)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--background", "-d", action="store_true",
                   help="return once the mount is ready (or failed, with the reason)")
    p.add_argument("--log", default="", help="log file (background default /var/log/cachefs.log)")
    p.add_argument("--read-only", action="store_true", help="mount read-only")
    p.add_argument("-o", dest="options", action="append", default=[], help="extra FUSE mount options")
    p.add_argument("--attr-cache", type=float, default=1.0, help="attribute cache seconds (default 1)")
    p.add_argument("--entry-cache", type=float, default=1.0, help="file entry cache seconds (default 1)")
    p.add_argument("--dir-entry-cache", type=float, default=1.0, help="dir entry cache seconds (default 1)")
    p.add_argument("--heartbeat", type=float, default=12.0, help="session heartbeat seconds (default 12)")
    p.add_argument("--session-timeout", type=float, default=60.0,
                   help="seconds without heartbeat before a session counts as dead (default 60)")
    p.add_argument("--trash-delay", type=float, default=30.0,
                   help="seconds before removed data is deleted from the object store (default 30)")
    p.add_argument("--max-uploads", type=int, default=16, help="parallel block uploads (default 16)")
    p.add_argument("--max-downloads", type=int, default=16, help="parallel block downloads (default 16)")
    p.add_argument("--buffer-size", type=int, default=300, help="memory for blocks in MiB (default 300)")
    p.add_argument("--threads", type=int, default=32, help="worker threads serving FUSE (default 32)")
    p.add_argument("--cache-dir", default="/var/cache/cachefs",
                   help="local block cache directories, separated by ':' (default /var/cache/cachefs)")
    p.add_argument("--cache-size", type=int, default=100 << 10,
                   help="disk cache size limit in MiB, 0 disables it (default 102400)")
    p.add_argument("--free-space-ratio", type=float, default=0.1,
                   help="keep at least this share of each cache disk free (default 0.1)")
    p.add_argument("--cache-large-write", action="store_true",
                   help="also cache full blocks just written (default: only partial blocks)")
    p.add_argument("--metrics", default="", metavar="HOST:PORT", help="serve Prometheus metrics here")
    p.add_argument("--writeback", action="store_true",
                   help="close/fsync return once blocks are durable in the local staging directory "
                        "(under the first cache dir); uploads run in the background")
    p.add_argument("--fsync", choices=["local", "remote"], default="local",
                   help="with --writeback: remote makes fsync wait for the upload (default local)")
    p.add_argument("--upload-defer", type=float, default=30.0,
                   help="with --writeback: while a writer keeps staging blocks, uploads wait for it to "
                        "pause, at most this many seconds, so close returns at disk speed (0: upload at "
                        "once; default 30)")
    p.add_argument("--flush-timeout", type=float, default=60.0,
                   help="with --writeback: after a plain umount, keep uploading this many seconds before "
                        "exiting (default 60; `cachefs umount` flushes first and takes its own limit)")
    p.add_argument("--pending-timeout", type=float, default=60.0,
                   help="seconds a read waits for blocks another node has not uploaded yet (default 60)")


def cmd_mount(a: argparse.Namespace) -> int:
    from .daemon import MountConfig, mount

    for flag in ("max_uploads", "max_downloads", "buffer_size", "threads"):
        if getattr(a, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    if a.heartbeat <= 0 or a.session_timeout <= a.heartbeat:
        raise ConfigError("--session-timeout must be longer than --heartbeat (both positive)")
    if a.cache_size < 0 or not 0 <= a.free_space_ratio < 1:
        raise ConfigError("--cache-size must be >= 0 and --free-space-ratio in [0, 1)")
    if a.metrics and not re.fullmatch(r"[\w.\-]*:\d+", a.metrics):
        raise ConfigError(f"bad --metrics address {a.metrics!r} (expected HOST:PORT)")
    if a.pending_timeout <= 0 or a.upload_defer < 0 or a.flush_timeout < 0:
        raise ConfigError("--pending-timeout must be positive, --upload-defer and --flush-timeout >= 0")
    dirs = [d for d in a.cache_dir.split(":") if d]
    cfg = MountConfig(a.meta_url, a.mountpoint, a.read_only, a.options, a.attr_cache, a.entry_cache,
                      a.dir_entry_cache, a.heartbeat, a.session_timeout, a.trash_delay, a.max_uploads,
                      a.max_downloads, a.buffer_size, a.threads, a.log, dirs, a.cache_size,
                      a.free_space_ratio, a.metrics, a.cache_large_write, writeback=a.writeback,
                      fsync_remote=a.fsync == "remote", pending_timeout=a.pending_timeout,
                      upload_defer=a.upload_defer, flush_timeout=a.flush_timeout)
    return mount(cfg, a.background)


def _add_umount(sub) -> None:
    p = sub.add_parser("umount", help="unmount a volume", description="Unmount; waits for the mount process "
                       "to finish. Also cleans up after a killed mount process.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--force", "-f", action="store_true", help="detach even if busy")
    p.add_argument("--flush-timeout", type=float, default=300.0,
                   help="write-back: seconds to wait for uploads before unmounting (default 300); what "
                        "is left stays staged and is uploaded at the next mount")


def cmd_umount(a: argparse.Namespace) -> int:
    from .daemon import read_state, umount
    from .fuse import is_mounted

    real = os.path.realpath(a.mountpoint)
    state = read_state(real)
    if state and state.get("writeback") and is_mounted(real):
        try:
            left = _flush(real, a.flush_timeout, final=True)
        except ConfigError as e:
            left = []
            print(f"cachefs umount: could not flush before unmounting: {e}", file=sys.stderr)
        if left:
            total = sum(p["bytes"] for p in left)
            print(f"cachefs umount: gave up waiting after {a.flush_timeout:g} s; {human(total)} of {len(left)} "
                  f"file(s) stay staged and upload at the next mount: "
                  + ", ".join(p["path"] or f"inode {p['inode']}" for p in left), file=sys.stderr)
    umount(a.mountpoint, a.force)
    return 0


def _flush(mountpoint: str, timeout: float | None, final: bool = False) -> list[dict]:
    """Ask a mount to commit and upload everything written so far: what is left pending.
    final: we unmount next, so the exiting process need not wait for uploads again."""
    request: dict = {"cmd": "flush", "final": final}
    if timeout is not None:
        request["timeout"] = timeout
    return _control(mountpoint, request)["pending"]


def _add_flush(sub) -> None:
    p = sub.add_parser("flush", help="wait until written data is in the object store",
                       description="Exit 0 once everything written on the mount holding PATH before this "
                       "command is in the object store; otherwise exit 1 and list what is still pending.")
    p.add_argument("path", metavar="MOUNTPOINT|PATH")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")


def cmd_flush(a: argparse.Namespace) -> int:
    if a.timeout is not None and a.timeout < 0:
        raise ConfigError("--timeout must be >= 0")
    mountpoint = _mount_of(a.path)["mountpoint"]
    left = _flush(mountpoint, a.timeout)
    if not left:
        return 0
    for p in left:
        print(f"{p['path'] or 'inode ' + str(p['inode'])}\t{human(p['bytes'])} pending")
    total = sum(p["bytes"] for p in left)
    raise CachefsError(f"{human(total)} of {len(left)} file(s) still not in the object store after "
                       f"{a.timeout:g} s")


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="show settings and sessions", description="Show a volume's settings "
                       "(secrets masked) and its live sessions.")
    p.add_argument("meta_url", metavar="META_URL")


def cmd_status(a: argparse.Namespace) -> int:
    with _opened(a.meta_url) as (meta, settings):
        now = time.time()
        pending: dict[int, list[int]] = {}
        for p in meta.pending_slices():
            pending.setdefault(p.sid, []).append(p.size)
        bs = settings.block_size

        def staged(sid: int) -> dict:
            sizes = pending.pop(sid, [])
            return {"pending_blocks": sum((n + bs - 1) // bs for n in sizes), "pending_bytes": sum(sizes)}

        sessions = [{"sid": s.sid, "heartbeat_age": round(now - s.heartbeat, 1), **s.info, **staged(s.sid)}
                    for s in meta.sessions()]
        # pending slices of sessions that are gone: uploaded when their node mounts again
        gone = [{"sid": sid, **staged(sid)} for sid in sorted(pending)]
        _total, used, _itotal, inodes = meta.statfs()
        out = {"setting": settings.masked(), "sessions": sessions,
               "usage": {"used_bytes": used, "inodes": inodes}}
        if gone:
            out["pending_of_ended_sessions"] = gone
    print(json.dumps(out, indent=2))
    return 0


def _add_fsck(sub) -> None:
    p = sub.add_parser("fsck", help="find files whose data is missing from the object store",
                       description="Check every file's blocks against the object store; exit 1 and name "
                       "the damaged files if any block is missing (blocks a live writer is still "
                       "uploading are listed apart).")
    p.add_argument("meta_url", metavar="META_URL")


def cmd_fsck(a: argparse.Namespace) -> int:
    from .fsck import check
    from .objects import open_store

    with _opened(a.meta_url) as (meta, settings):
        store = open_store(settings)
        store.check()
        report = check(meta, store, settings.name, settings.block_size)
    for f in report.uploading:
        print(f"uploading {f.path}: {f.missing} of {f.total} blocks not uploaded yet by a live writer")
    for f in report.damaged:
        hint = ""
        if f.ended_sessions:
            ids = ", ".join(str(s) for s in sorted(f.ended_sessions))
            hint = f" (staged by ended session {ids}: mounting that node's cache dir again uploads them)"
        print(f"damaged {f.path}: {f.missing} of {f.total} blocks missing{hint}")
    print(f"checked {report.files} files, {report.blocks} blocks: {len(report.damaged)} damaged, "
          f"{len(report.uploading)} still uploading")
    if report.damaged:
        raise CachefsError(f"{len(report.damaged)} damaged file(s)")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="show how a file is stored", description="Show a file's inode, size, "
                       "chunks, slices and block object keys (PATH on a mounted volume).")
    p.add_argument("paths", metavar="PATH", nargs="+")


def cmd_info(a: argparse.Namespace) -> int:
    from cachefs.meta.types import CHUNK_SIZE, TYPE_FILE

    from .block import block_key, block_lengths

    for path in a.paths:
        try:
            st = os.lstat(path)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        with _opened(_mount_of(path, need_meta=True)["meta_url"]) as (meta, settings):
            attr = meta.getattr(st.st_ino)
            print(f"{path}:\n  inode: {st.st_ino}\n  size: {attr.length}")
            nchunks = (attr.length + CHUNK_SIZE - 1) // CHUNK_SIZE if attr.type == TYPE_FILE else 0
            print(f"  chunks: {nchunks}")
            for indx in range(nchunks):
                slices = meta.read_chunk(st.st_ino, indx)
                print(f"  chunk {indx}: {len(slices)} slices")
                for s in slices:
                    print(f"    slice {s.id}: pos {s.pos} len {s.len} off {s.off} size {s.size}")
                    if s.id:
                        for i, n in enumerate(block_lengths(s.size, settings.block_size)):
                            print(f"      {block_key(settings.name, s.id, i, n)}")
    return 0


def _add_clone(sub) -> None:
    p = sub.add_parser("clone", help="copy a file without copying its data", description="Make DST a copy "
                       "of SRC that shares SRC's blocks (metadata only; both on one mounted volume). "
                       "SRC's content as of its last close is what is copied.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")


def cmd_clone(a: argparse.Namespace) -> int:
    try:
        src = os.lstat(a.src)
        parent_dir = os.path.dirname(os.path.abspath(a.dst))
        parent = os.stat(parent_dir)
    except OSError as e:
        raise ConfigError(f"{e.filename}: {e.strerror}") from None
    state = _mount_of(a.src, need_meta=True)
    if _mount_of(parent_dir)["mountpoint"] != state["mountpoint"]:
        raise ConfigError("SRC and DST must be on the same mounted volume")
    with _opened(state["meta_url"]) as (meta, _settings):
        try:
            meta.clone(src.st_ino, parent.st_ino, os.path.basename(a.dst).encode(), os.getuid(), os.getgid())
        except FSError as e:
            raise ConfigError(f"cannot clone {a.src} to {a.dst}: {os.strerror(e.errno)}") from None
    return 0


def _control(mountpoint: str, request: dict) -> dict:
    """Ask the mount process through its `.control` file."""
    try:
        fd = os.open(os.path.join(mountpoint, ".control"), os.O_RDWR)
    except OSError as e:
        raise ConfigError(f"{mountpoint}: cannot reach the mount process ({e.strerror})") from None
    try:
        os.write(fd, json.dumps(request).encode())
        chunks = []
        while data := os.pread(fd, 1 << 20, sum(map(len, chunks))):
            chunks.append(data)
    except OSError as e:
        raise ConfigError(f"{mountpoint}: the mount process failed the request ({e.strerror})") from None
    finally:
        os.close(fd)
    answer = json.loads(b"".join(chunks) or b"{}")
    if "error" in answer:
        raise ConfigError(answer["error"])
    return answer


def _files(paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, inode, size) of every regular file under the paths."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        if os.path.isdir(path):
            for d, _dirs, names in os.walk(path):
                for n in sorted(names):
                    full = os.path.join(d, n)
                    try:
                        st = os.lstat(full)
                    except OSError:
                        continue
                    if os.path.isfile(full) and not os.path.islink(full):
                        out.append((full, st.st_ino, st.st_size))
        elif os.path.isfile(path):
            out.append((path, st.st_ino, st.st_size))
    return out


def _add_warmup(sub) -> None:
    p = sub.add_parser("warmup", help="fill the local cache with files", description="Fetch files (or whole "
                       "directories) into the mount's local disk cache, so reading them makes no object-store "
                       "request; --check reports how much is cached, --evict drops it.")
    p.add_argument("paths", metavar="PATH", nargs="+")
    p.add_argument("--threads", type=int, default=16, help="parallel downloads (default 16)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only report how much of each path is cached")
    mode.add_argument("--evict", action="store_true", help="drop the paths from the cache")


def cmd_warmup(a: argparse.Namespace) -> int:
    from .progress import Progress

    if a.threads < 1:
        raise ConfigError("--threads must be at least 1")
    mountpoint = _mount_of(a.paths[0])["mountpoint"]
    for p in a.paths[1:]:
        if _mount_of(p)["mountpoint"] != mountpoint:
            raise ConfigError("all paths must be on one mounted volume")
    files = _files(a.paths)
    if a.check:
        answer = _control(mountpoint, {"cmd": "check", "inodes": [ino for _, ino, _ in files]})["files"]
        total = cached = 0
        for path in a.paths:
            prefix = os.path.abspath(path)
            t = c = 0
            for f, ino, _ in files:
                if os.path.abspath(f) == prefix or os.path.abspath(f).startswith(prefix.rstrip("/") + "/"):
                    t += answer[str(ino)]["bytes"]
                    c += answer[str(ino)]["cached"]
            total, cached = total + t, cached + c
            print(f"{path}: {human(c)} of {human(t)} cached ({100 * c / t if t else 100:.1f}%)")
        return 0
    cmd = "evict" if a.evict else "warmup"
    progress = Progress(sum(size for _, _, size in files), "evicting" if a.evict else "warming up")
    done = fetched = cached = 0
    batch: list[tuple[str, int, int]] = []

    def send() -> None:
        nonlocal fetched, cached
        if batch:
            answer = _control(mountpoint, {"cmd": cmd, "inodes": [i for _, i, _ in batch], "threads": a.threads})
            fetched += answer.get("fetched", 0)
            cached += answer["cached"]
            progress.add(sum(s for _, _, s in batch))
            batch.clear()

    for item in files:
        batch.append(item)
        done += item[2]
        if len(batch) >= 64 or sum(s for _, _, s in batch) >= 256 << 20:
            send()
    send()
    progress.close()
    if a.evict:
        print(f"evicted {len(files)} files ({human(done)}); {human(cached)} still cached")
    else:
        print(f"warmed up {len(files)} files ({human(done)}, {human(fetched)} fetched); {human(cached)} cached")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="quick performance check of a directory", description="Write and read a "
                       "big file, write and read small files, stat them, and print a result table.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--big-file-size", type=int, default=1024, help="MiB per big file (default 1024)")
    p.add_argument("--small-file-size", type=int, default=128, help="KiB per small file (default 128)")
    p.add_argument("--small-file-count", type=int, default=100, help="small files per thread (default 100)")
    p.add_argument("--threads", "-p", type=int, default=1, help="parallel workers (default 1)")


def cmd_bench(a: argparse.Namespace) -> int:
    from .benchcmd import run, table

    print(table(run(a.path, a.big_file_size, a.small_file_size, a.small_file_count, a.threads)))
    return 0


FUSE_READ = 'cachefs_fuse_bytes_total{op="read"}'
FUSE_WRITE = 'cachefs_fuse_bytes_total{op="write"}'
OBJ_GET = 'cachefs_object_requests_total{op="get"}'
OBJ_PUT = 'cachefs_object_requests_total{op="put"}'
OBJ_IN = 'cachefs_object_bytes_total{op="get"}'
STAT_KEYS = ("cachefs_fuse_op_seconds_count", FUSE_READ, FUSE_WRITE, OBJ_GET, OBJ_PUT, OBJ_IN,
             "cachefs_cache_hits_total", "cachefs_cache_misses_total")


def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="live per-second view of a mount", description="Show a mount's activity "
                       "every second: FUSE throughput, cache hits, object store requests, buffers.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between lines (default 1)")
    p.add_argument("--count", type=int, default=0, help="stop after this many lines (default: run until ^C)")


def cmd_stats(a: argparse.Namespace) -> int:
    from .metrics import parse_text

    path = os.path.join(a.mountpoint, ".stats")

    def sample() -> dict[str, float]:
        try:
            with open(path) as f:
                return parse_text(f.read())
        except OSError as e:
            raise ConfigError(f"{a.mountpoint} is not a mounted cachefs volume ({e.strerror})") from None

    def total(s: dict[str, float], prefix: str) -> float:
        return sum(v for k, v in s.items() if k.startswith(prefix))

    prev = sample()
    print(f"{'fuse ops':>9} {'read/s':>11} {'write/s':>11} {'cache hit':>9} {'GET/s':>7} {'PUT/s':>7} "
          f"{'obj in/s':>11} {'buffer':>10} {'uploads':>7}")
    n = 0
    while a.count <= 0 or n < a.count:
        time.sleep(a.interval)
        cur = sample()
        r = {key: (total(cur, key) - total(prev, key)) / a.interval for key in STAT_KEYS}
        hits, misses = r["cachefs_cache_hits_total"], r["cachefs_cache_misses_total"]
        ratio = f"{100 * hits / (hits + misses):.0f}%" if hits + misses else "-"
        print(f"{r['cachefs_fuse_op_seconds_count']:9.0f} {human(r[FUSE_READ]):>11} {human(r[FUSE_WRITE]):>11} "
              f"{ratio:>9} {r[OBJ_GET]:7.0f} {r[OBJ_PUT]:7.0f} {human(r[OBJ_IN]):>11} "
              f"{human(cur.get('cachefs_buffer_used_bytes', 0)):>10} {cur.get('cachefs_pending_uploads', 0):7.0f}",
              flush=True)
        prev = cur
        n += 1
    return 0


@contextlib.contextmanager
def _opened(meta_url: str) -> Iterator[tuple[BaseMeta, Settings]]:
    """A formatted volume's engine and settings, closed again on the way out."""
    from cachefs.meta import open_meta

    meta = open_meta(meta_url)
    try:
        yield meta, meta.load()
    finally:
        meta.close_engine()


def _mount_of(path: str, need_meta: bool = False) -> dict:
    """The state record of the mount that holds path (its mountpoint and metadata URL). Where
    no record is at hand (a pod that sees a CSI bind mount of a subdirectory), the nearest mount
    point above path that serves `.control` stands in, without the URL."""
    from .daemon import read_state

    cur = os.path.realpath(path)
    fallback = None
    while True:
        state = read_state(cur)
        if state:
            return state
        if fallback is None and os.path.ismount(cur) and os.path.exists(os.path.join(cur, ".control")):
            fallback = {"mountpoint": cur}
        if cur == "/":
            break
        cur = os.path.dirname(cur)
    if fallback is None:
        raise ConfigError(f"{path} is not on a mounted cachefs volume")
    if need_meta:
        raise ConfigError(f"{path}: the mount's metadata URL is not known here (run this where the volume "
                          "was mounted)")
    return fallback


def _add_csi(sub) -> None:
    p = sub.add_parser("csi", help="run the Kubernetes CSI driver", description="Serve the CSI driver "
                       "csi.cachefs.io (Identity, Node, Controller) over gRPC on a unix socket.")
    p.add_argument("--endpoint", required=True, metavar="unix:///PATH/csi.sock")
    p.add_argument("--node-id", default=socket.gethostname(), help="this node's name (default: hostname)")
    p.add_argument("--mode", choices=["all", "node", "controller"], default="all",
                   help="services to offer: node (DaemonSet), controller (Deployment) or all (default)")
    p.add_argument("--state-dir", default="/var/lib/cachefs/csi", help="volume mounts and the targets "
                   "published from them (default /var/lib/cachefs/csi)")
    p.add_argument("--cache-dir", default="/var/cache/cachefs", help="cache dir for volume mounts "
                   "(default /var/cache/cachefs; a cache-dir mount option overrides it)")
    p.add_argument("--max-volumes", type=int, default=64, help="volumes per node (default 64)")
    p.add_argument("--flush-timeout", type=float, default=300.0,
                   help="seconds a write-back volume mount may flush when its last pod leaves (default 300)")
    p.add_argument("--log", default="", help="log file (default: stderr)")


def cmd_csi(a: argparse.Namespace) -> int:
    import logging

    from cachefs.mount.csi import serve

    if a.max_volumes < 1 or a.flush_timeout < 0:
        raise ConfigError("--max-volumes must be at least 1 and --flush-timeout >= 0")
    handler = logging.FileHandler(a.log) if a.log else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    return serve(a.endpoint, a.node_id, a.state_dir, a.cache_dir, a.mode, a.max_volumes, a.flush_timeout)


COMMANDS = {
    "format": (_add_format, cmd_format),
    "mount": (_add_mount, cmd_mount),
    "umount": (_add_umount, cmd_umount),
    "status": (_add_status, cmd_status),
    "info": (_add_info, cmd_info),
    "clone": (_add_clone, cmd_clone),
    "warmup": (_add_warmup, cmd_warmup),
    "flush": (_add_flush, cmd_flush),
    "fsck": (_add_fsck, cmd_fsck),
    "csi": (_add_csi, cmd_csi),
    "stats": (_add_stats, cmd_stats),
    "bench": (_add_bench, cmd_bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cachefs", description="cachefs: a distributed cache file system for ML training data")
    parser.add_argument("--version", action="version", version=f"cachefs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "meta_url", None) == "-":
            # the URL may hold a password: `-` takes it from the environment, never from argv
            # (which every user can read in /proc/PID/cmdline)
            args.meta_url = os.environ.get("CACHEFS_META_URL") or ""
            if not args.meta_url:
                raise ConfigError("META_URL is '-' but CACHEFS_META_URL is not set")
        return COMMANDS[args.command][1](args)
    except CachefsError as e:
        print(f"cachefs {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cachefs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
