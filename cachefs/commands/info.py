"""`cachefs info PATH...`: how a file is stored (inode, chunks, slices, block keys)."""

from __future__ import annotations

import argparse
import os

from cachefs.cli import mount_of
from cachefs.errors import ConfigError

from .common import opened


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show how a file is stored", description="Show a file's inode, size, "
                       "chunks, slices and block object keys (PATH on a mounted volume).")
    p.add_argument("paths", metavar="PATH", nargs="+")


def run(a: argparse.Namespace) -> int:
    from cachefs.block import block_keys
    from cachefs.meta.types import TYPE_FILE

    for path in a.paths:
        try:
            st = os.lstat(path)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        with opened(mount_of(path, need_meta=True)["meta_url"]) as (meta, settings):
            attr = meta.getattr(st.st_ino)
            print(f"{path}:\n  inode: {st.st_ino}\n  size: {attr.length}")
            indexes = meta.chunk_indexes(st.st_ino) if attr.type == TYPE_FILE else []
            print(f"  chunks: {len(indexes)} holding data")
            for indx in indexes:
                slices = meta.read_chunk(st.st_ino, indx)
                print(f"  chunk {indx}: {len(slices)} slices")
                for s in slices:
                    print(f"    slice {s.id}: pos {s.pos} len {s.len} off {s.off} size {s.size}")
                    if s.id:
                        for _i, key, _n in block_keys(settings.name, s.id, s.size, settings.block_size):
                            print(f"      {key}")
    return 0
