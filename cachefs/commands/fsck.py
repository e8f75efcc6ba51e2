"""`cachefs fsck META_URL`: name the files whose blocks the object store does not hold."""

from __future__ import annotations

import argparse

from cachefs.errors import CachefsError

from .common import opened


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fsck", help="find files whose data is missing from the object store",
                       description="Check every file's blocks against the object store; exit 1 and name "
                       "the damaged files if any block is missing (blocks a live writer is still "
                       "uploading are listed apart).")
    p.add_argument("meta_url", metavar="META_URL")


def run(a: argparse.Namespace) -> int:
    from cachefs.fsck import check
    from cachefs.metrics import Metrics
    from cachefs.objects import open_store

    with opened(a.meta_url) as (meta, settings):
        objects = open_store(settings, Metrics())
        objects.check()
        report = check(meta, objects, settings.name, settings.block_size)
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
