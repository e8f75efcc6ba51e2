"""`cachefs fsck META_URL`: name the files whose blocks the object store does not hold."""

from __future__ import annotations

import argparse

from cachefs.errors import CachefsError

from .common import opened


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fsck", help="find files whose data is missing from the object store",
                       description="Check every file's blocks against the object store (present, of the "
                       "right size; with --verify, their checksums); exit 1 and name the damaged files "
                       "(blocks a live writer is still uploading are listed apart).")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--verify", action="store_true", help="also fetch every block and check its checksum "
                   "(reads the whole volume)")


def run(a: argparse.Namespace) -> int:
    from cachefs.fsck import check
    from cachefs.metrics import Metrics
    from cachefs.objects import open_store

    with opened(a.meta_url) as (meta, settings):
        objects = open_store(settings, Metrics())
        objects.check()
        report = check(meta, objects, settings.name, settings.block_size, settings.compression, a.verify)
    for f in report.uploading:
        print(f"uploading {f.path}: {f.missing} of {f.total} blocks not uploaded yet by a live writer")
    for f in report.damaged:
        hint = ""
        if f.ended_sessions:
            ids = ", ".join(str(s) for s in sorted(f.ended_sessions))
            hint = f" (staged by ended session {ids}: mounting that node's cache dir again uploads them)"
        what = ", ".join(x for x in (f"{f.missing} missing" if f.missing else "",
                                     f"{f.bad} damaged (wrong size or checksum)" if f.bad else "") if x)
        print(f"damaged {f.path}: {what} of {f.total} blocks{hint}")
    print(f"checked {report.files} files, {report.blocks} blocks: {len(report.damaged)} damaged, "
          f"{len(report.uploading)} still uploading")
    if report.damaged:
        raise CachefsError(f"{len(report.damaged)} damaged file(s)")
    return 0
