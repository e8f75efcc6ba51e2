"""`cachefs mount META_URL MOUNTPOINT`: mount a volume with FUSE (its options: cachefs/options.py)."""

from __future__ import annotations

import argparse
import sys

from cachefs import options


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount", help="mount a volume", description="Mount a volume with FUSE. Runs in the "
                       "foreground unless --background is given.")
    p.add_argument("meta_url", metavar="META_URL", help="or - to read it from $CACHEFS_META_URL (keeps a "
                   "password out of the process list)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--background", "-d", action="store_true",
                   help="return once the mount is ready (or failed, with the reason)")
    p.add_argument("-o", dest="fuse_options", action="append", default=[], help="extra FUSE mount options")
    options.add_flags(p)


def run(a: argparse.Namespace) -> int:
    from cachefs.daemon import MountRequest, mount

    if a.meta_url != "-" and _has_password(a.meta_url):
        print("cachefs mount: warning: the password in META_URL shows in the process list (`ps`) to every "
              "local user; give the URL as `-` with CACHEFS_META_URL in the environment, or the password "
              "in META_PASSWORD (or a file named by META_PASSWORD_FILE)", file=sys.stderr)
    return mount(MountRequest(a.meta_url, a.mountpoint, options.from_args(a), a.fuse_options), a.background)


def _has_password(url: str) -> bool:
    cred = url.partition("://")[2].split("/", 1)[0].rpartition("@")[0]
    return bool(cred.partition(":")[2])
