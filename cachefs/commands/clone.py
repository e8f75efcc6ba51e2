"""`cachefs clone SRC DST`: a copy that shares SRC's blocks (metadata only)."""

from __future__ import annotations

import argparse
import os

from cachefs.cli import mount_of
from cachefs.errors import ConfigError, FSError

from .common import opened


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clone", help="copy a file without copying its data", description="Make DST a copy "
                       "of SRC that shares SRC's blocks (metadata only; both on one mounted volume). "
                       "SRC's content as of its last close is what is copied.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")


def run(a: argparse.Namespace) -> int:
    try:
        src = os.lstat(a.src)
        parent_dir = os.path.dirname(os.path.abspath(a.dst))
        parent = os.stat(parent_dir)
    except OSError as e:
        raise ConfigError(f"{e.filename}: {e.strerror}") from None
    state = mount_of(a.src, need_meta=True)
    if mount_of(parent_dir)["mountpoint"] != state["mountpoint"]:
        raise ConfigError("SRC and DST must be on the same mounted volume")
    with opened(state["meta_url"]) as (meta, _settings):
        try:
            meta.clone(src.st_ino, parent.st_ino, os.path.basename(a.dst).encode(), os.getuid(), os.getgid())
        except FSError as e:
            raise ConfigError(f"cannot clone {a.src} to {a.dst}: {os.strerror(e.errno)}") from None
    return 0
