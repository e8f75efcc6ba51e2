"""`cachefs gc META_URL`: find (and with --delete remove) objects no file references."""

from __future__ import annotations

import argparse

from cachefs.errors import ConfigError
from cachefs.progress import human

from .common import opened


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gc", help="find and remove objects no file references",
                       description="List the volume's objects and report those no file references (left by "
                       "writers killed mid-write, or by a failed deletion); --delete removes them. Objects a "
                       "live mount may still commit, and objects younger than --min-age, are left alone.")
    p.add_argument("meta_url", metavar="META_URL")
    p.add_argument("--delete", action="store_true", help="remove the leaked objects (default: only report)")
    p.add_argument("--min-age", type=float, default=3600.0,
                   help="only objects written at least this many seconds ago count (default 3600)")


def run(a: argparse.Namespace) -> int:
    from cachefs.gc import find_leaks
    from cachefs.metrics import Metrics
    from cachefs.objects import open_store

    if a.min_age < 0:
        raise ConfigError("--min-age must be >= 0")
    with opened(a.meta_url) as (meta, settings):
        objects = open_store(settings, Metrics())
        objects.check()
        report = find_leaks(meta, objects, settings.name, a.min_age)
    print(f"{report.objects} objects: {report.referenced} referenced, {len(report.leaked)} leaked "
          f"({human(report.leaked_bytes)}), {report.in_flight} still in flight on live mounts, "
          f"{report.young} younger than {a.min_age:g} s, {report.foreign} not block objects")
    if a.delete:
        for info in report.leaked:
            objects.delete(info.key)
        print(f"removed {len(report.leaked)} leaked objects ({human(report.leaked_bytes)})")
    return 0
