"""The `cachefs` command: every subcommand prints a one-line error and exits non-zero on
failure, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid

from . import __version__
from .errors import CachefsError, ConfigError, FSError

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
    p.add_argument("meta_url", metavar="META_URL")
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


def cmd_mount(a: argparse.Namespace) -> int:
    from .daemon import MountConfig, mount

    for flag in ("max_uploads", "max_downloads", "buffer_size", "threads"):
        if getattr(a, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    if a.heartbeat <= 0 or a.session_timeout <= a.heartbeat:
        raise ConfigError("--session-timeout must be longer than --heartbeat (both positive)")
    cfg = MountConfig(a.meta_url, a.mountpoint, a.read_only, a.options, a.attr_cache, a.entry_cache,
                      a.dir_entry_cache, a.heartbeat, a.session_timeout, a.trash_delay, a.max_uploads,
                      a.max_downloads, a.buffer_size, a.threads, a.log)
    return mount(cfg, a.background)


def _add_umount(sub) -> None:
    p = sub.add_parser("umount", help="unmount a volume", description="Unmount; waits for the mount process "
                       "to finish. Also cleans up after a killed mount process.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--force", "-f", action="store_true", help="detach even if busy")


def cmd_umount(a: argparse.Namespace) -> int:
    from .daemon import umount

    umount(a.mountpoint, a.force)
    return 0


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="show settings and sessions", description="Show a volume's settings "
                       "(secrets masked) and its live sessions.")
    p.add_argument("meta_url", metavar="META_URL")


def cmd_status(a: argparse.Namespace) -> int:
    from cachefs.meta import open_meta

    meta = open_meta(a.meta_url)
    try:
        settings = meta.load()
        now = time.time()
        sessions = [{"sid": s.sid, "heartbeat_age": round(now - s.heartbeat, 1), **s.info}
                    for s in meta.sessions()]
        total, used, _it, inodes = meta.statfs()
        out = {"setting": settings.masked(), "sessions": sessions,
               "usage": {"used_bytes": used, "inodes": inodes}}
    finally:
        meta.close_engine()
    print(json.dumps(out, indent=2))
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="show how a file is stored", description="Show a file's inode, size, "
                       "chunks, slices and block object keys (PATH on a mounted volume).")
    p.add_argument("paths", metavar="PATH", nargs="+")


def cmd_info(a: argparse.Namespace) -> int:
    from cachefs.meta import open_meta
    from cachefs.meta.types import CHUNK_SIZE

    from .block import block_key, block_lengths
    from .daemon import read_state

    code = 0
    for path in a.paths:
        try:
            st = os.lstat(path)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        state = _mount_of(os.path.realpath(path), read_state)
        meta = open_meta(state["meta_url"])
        try:
            settings = meta.load()
            attr = meta.getattr(st.st_ino)
            print(f"{path}:\n  inode: {st.st_ino}\n  size: {attr.length}")
            nchunks = (attr.length + CHUNK_SIZE - 1) // CHUNK_SIZE if attr.type == 1 else 0
            print(f"  chunks: {nchunks}")
            for indx in range(nchunks):
                slices = meta.read_chunk(st.st_ino, indx)
                print(f"  chunk {indx}: {len(slices)} slices")
                for s in slices:
                    print(f"    slice {s.id}: pos {s.pos} len {s.len} off {s.off} size {s.size}")
                    if s.id:
                        for i, n in enumerate(block_lengths(s.size, settings.block_size)):
                            print(f"      {block_key(settings.name, s.id, i, n)}")
        finally:
            meta.close_engine()
    return code


def _add_clone(sub) -> None:
    p = sub.add_parser("clone", help="copy a file without copying its data", description="Make DST a copy "
                       "of SRC that shares SRC's blocks (metadata only; both on one mounted volume). "
                       "SRC's content as of its last close is what is copied.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")


def cmd_clone(a: argparse.Namespace) -> int:
    from cachefs.meta import open_meta

    from .daemon import read_state

    try:
        src = os.lstat(a.src)
        parent_dir = os.path.dirname(os.path.abspath(a.dst))
        parent = os.stat(parent_dir)
    except OSError as e:
        raise ConfigError(f"{e.filename}: {e.strerror}") from None
    state = _mount_of(os.path.realpath(a.src), read_state)
    if _mount_of(os.path.realpath(parent_dir), read_state)["mountpoint"] != state["mountpoint"]:
        raise ConfigError("SRC and DST must be on the same mounted volume")
    meta = open_meta(state["meta_url"])
    try:
        meta.load()
        meta.clone(src.st_ino, parent.st_ino, os.path.basename(a.dst).encode(), os.getuid(), os.getgid())
    except FSError as e:
        raise ConfigError(f"cannot clone {a.src} to {a.dst}: {os.strerror(e.errno)}") from None
    finally:
        meta.close_engine()
    return 0


def _mount_of(path: str, read_state) -> dict:  # noqa: ANN001
    cur = path
    while True:
        state = read_state(cur)
        if state:
            return state
        if cur == "/":
            raise ConfigError(f"{path} is not on a mounted cachefs volume")
        cur = os.path.dirname(cur)


COMMANDS = {
    "format": (_add_format, cmd_format),
    "mount": (_add_mount, cmd_mount),
    "umount": (_add_umount, cmd_umount),
    "status": (_add_status, cmd_status),
    "info": (_add_info, cmd_info),
    "clone": (_add_clone, cmd_clone),
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
        return COMMANDS[args.command][1](args)
    except CachefsError as e:
        print(f"cachefs {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cachefs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
