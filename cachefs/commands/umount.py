"""`cachefs umount MOUNTPOINT`: flush a write-back mount, unmount, wait for its process."""

from __future__ import annotations

import argparse
import os
import sys

from cachefs.errors import ConfigError
from cachefs.progress import human

from .flush import flush_mount


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("umount", help="unmount a volume", description="Unmount; waits for the mount process "
                       "to finish. Also cleans up after a killed mount process.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--force", "-f", action="store_true", help="detach even if busy")
    p.add_argument("--flush-timeout", type=float, default=300.0,
                   help="write-back: seconds to wait for uploads before unmounting (default 300); what "
                        "is left stays staged and is uploaded at the next mount")


def run(a: argparse.Namespace) -> int:
    from cachefs.daemon import read_state, umount
    from cachefs.mountinfo import is_mounted

    real = os.path.realpath(a.mountpoint)
    state = read_state(real)
    if state and state.get("writeback") and is_mounted(real):
        try:
            left = flush_mount(real, a.flush_timeout, final=True)
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
