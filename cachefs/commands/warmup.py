"""`cachefs warmup PATH...`: fill the mount's local cache with files (or check, or evict them)."""

from __future__ import annotations

import argparse
import os

from cachefs.cli import control, mount_of
from cachefs.errors import ConfigError
from cachefs.progress import Progress, human

from .common import files_under


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("warmup", help="fill the local cache with files", description="Fetch files (or whole "
                       "directories) into the mount's local disk cache, so reading them makes no object-store "
                       "request; --check reports how much is cached, --evict drops it.")
    p.add_argument("paths", metavar="PATH", nargs="+")
    p.add_argument("--threads", type=int, default=16, help="parallel downloads (default 16)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only report how much of each path is cached")
    mode.add_argument("--evict", action="store_true", help="drop the paths from the cache")


def run(a: argparse.Namespace) -> int:
    if a.threads < 1:
        raise ConfigError("--threads must be at least 1")
    mountpoint = mount_of(a.paths[0])["mountpoint"]
    for p in a.paths[1:]:
        if mount_of(p)["mountpoint"] != mountpoint:
            raise ConfigError("all paths must be on one mounted volume")
    files = files_under(a.paths)
    if a.check:
        return _check(mountpoint, a.paths, files)
    cmd = "evict" if a.evict else "warmup"
    progress = Progress(sum(size for _, _, size in files), "evicting" if a.evict else "warming up")
    done = fetched = cached = 0
    batch: list[tuple[str, int, int]] = []

    def send() -> None:
        nonlocal fetched, cached
        if batch:
            answer = control(mountpoint, {"cmd": cmd, "inodes": [i for _, i, _ in batch], "threads": a.threads})
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


def _check(mountpoint: str, paths: list[str], files: list[tuple[str, int, int]]) -> int:
    answer = control(mountpoint, {"cmd": "check", "inodes": [ino for _, ino, _ in files]})["files"]
    for path in paths:
        prefix = os.path.abspath(path)
        t = c = 0
        for f, ino, _ in files:
            if os.path.abspath(f) == prefix or os.path.abspath(f).startswith(prefix.rstrip("/") + "/"):
                t += answer[str(ino)]["bytes"]
                c += answer[str(ino)]["cached"]
        print(f"{path}: {human(c)} of {human(t)} cached ({100 * c / t if t else 100:.1f}%)")
    return 0
