"""`cachefs stats MOUNTPOINT`: a live per-second view of a mount, from its `.stats` file."""

from __future__ import annotations

import argparse
import os
import time

from cachefs.errors import ConfigError
from cachefs.progress import human

FUSE_READ = 'cachefs_fuse_bytes_total{op="read"}'
FUSE_WRITE = 'cachefs_fuse_bytes_total{op="write"}'
OBJ_GET = 'cachefs_object_requests_total{op="get"}'
OBJ_PUT = 'cachefs_object_requests_total{op="put"}'
OBJ_IN = 'cachefs_object_bytes_total{op="get"}'
PEER_IN = "cachefs_peer_bytes_total{peer=*,direction=in}"
PEER_OUT = "cachefs_peer_bytes_total{peer=*,direction=out}"
STAT_KEYS = ("cachefs_fuse_op_seconds_count", FUSE_READ, FUSE_WRITE, OBJ_GET, OBJ_PUT, OBJ_IN,
             "cachefs_cache_hits_total", "cachefs_cache_misses_total", PEER_IN, PEER_OUT)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="live per-second view of a mount", description="Show a mount's activity "
                       "every second: FUSE throughput, cache hits, object store requests, cache group "
                       "traffic, buffers.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between lines (default 1)")
    p.add_argument("--count", type=int, default=0, help="stop after this many lines (default: run until ^C)")


def run(a: argparse.Namespace) -> int:
    from cachefs.metrics import parse_text

    path = os.path.join(a.mountpoint, ".stats")

    def sample() -> dict[str, float]:
        try:
            with open(path) as f:
                return parse_text(f.read())
        except OSError as e:
            raise ConfigError(f"{a.mountpoint} is not a mounted cachefs volume ({e.strerror})") from None

    def total(s: dict[str, float], prefix: str) -> float:
        if prefix.startswith("cachefs_peer_bytes_total"):  # every peer of one direction
            direction = prefix.rsplit("=", 1)[1].rstrip("}")
            return sum(v for k, v in s.items()
                       if k.startswith("cachefs_peer_bytes_total") and f'direction="{direction}"' in k)
        return sum(v for k, v in s.items() if k.startswith(prefix))

    prev = sample()
    print(f"{'fuse ops':>9} {'read/s':>11} {'write/s':>11} {'cache hit':>9} {'GET/s':>7} {'PUT/s':>7} "
          f"{'obj in/s':>11} {'peer in/s':>11} {'peer out/s':>11} {'buffer':>10} {'uploads':>7}")
    n = 0
    while a.count <= 0 or n < a.count:
        time.sleep(a.interval)
        cur = sample()
        r = {key: (total(cur, key) - total(prev, key)) / a.interval for key in STAT_KEYS}
        hits, misses = r["cachefs_cache_hits_total"], r["cachefs_cache_misses_total"]
        ratio = f"{100 * hits / (hits + misses):.0f}%" if hits + misses else "-"
        print(f"{r['cachefs_fuse_op_seconds_count']:9.0f} {human(r[FUSE_READ]):>11} {human(r[FUSE_WRITE]):>11} "
              f"{ratio:>9} {r[OBJ_GET]:7.0f} {r[OBJ_PUT]:7.0f} {human(r[OBJ_IN]):>11} "
              f"{human(r[PEER_IN]):>11} {human(r[PEER_OUT]):>11} "
              f"{human(cur.get('cachefs_buffer_used_bytes', 0)):>10} {cur.get('cachefs_pending_uploads', 0):7.0f}",
              flush=True)
        prev = cur
        n += 1
    return 0
