"""`cachefs flush PATH`: wait until what was written on a mount is in the object store."""

from __future__ import annotations

import argparse

from cachefs.cli import control, mount_of
from cachefs.errors import CachefsError, ConfigError
from cachefs.progress import human


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flush", help="wait until written data is in the object store",
                       description="Exit 0 once everything written on the mount holding PATH before this "
                       "command is in the object store; otherwise exit 1 and list what is still pending.")
    p.add_argument("path", metavar="MOUNTPOINT|PATH")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")


def flush_mount(mountpoint: str, timeout: float | None, final: bool = False) -> list[dict]:
    """Ask a mount to commit and upload everything written so far: what is left pending.
    final: we unmount next, so the exiting process need not wait for uploads again."""
    request: dict = {"cmd": "flush", "final": final}
    if timeout is not None:
        request["timeout"] = timeout
    pending = control(mountpoint, request).get("pending")
    if not isinstance(pending, list):
        raise ConfigError(f"{mountpoint}: the mount process did not say what is pending")
    return pending


def run(a: argparse.Namespace) -> int:
    if a.timeout is not None and a.timeout < 0:
        raise ConfigError("--timeout must be >= 0")
    mountpoint = mount_of(a.path)["mountpoint"]
    left = flush_mount(mountpoint, a.timeout)
    if not left:
        return 0
    for p in left:
        print(f"{p['path'] or 'inode ' + str(p['inode'])}\t{human(p['bytes'])} pending")
    total = sum(p["bytes"] for p in left)
    raise CachefsError(f"{human(total)} of {len(left)} file(s) still not in the object store after "
                       f"{a.timeout:g} s")
