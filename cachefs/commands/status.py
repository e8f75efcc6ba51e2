"""`cachefs status META_URL`: a volume's settings (secrets masked), sessions and usage."""

from __future__ import annotations

import argparse
import json
import time

from .common import opened


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show settings and sessions", description="Show a volume's settings "
                       "(secrets masked) and its live sessions.")
    p.add_argument("meta_url", metavar="META_URL")


def run(a: argparse.Namespace) -> int:
    with opened(a.meta_url) as (meta, settings):
        now = time.time()
        pending: dict[int, list[int]] = {}
        for p in meta.pending_slices():
            pending.setdefault(p.sid, []).append(p.size)
        bs = settings.block_size

        def staged(sid: int) -> dict:
            sizes = pending.pop(sid, [])
            return {"pending_blocks": sum((n + bs - 1) // bs for n in sizes), "pending_bytes": sum(sizes)}

        sessions = [{"sid": s.sid, "heartbeat_age": round(now - s.heartbeat, 1), **s.info, **staged(s.sid)}
                    for s in meta.sessions()]
        # pending slices of sessions that are gone: uploaded when their node mounts again
        gone = [{"sid": sid, **staged(sid)} for sid in sorted(pending)]
        _total, used, _itotal, inodes = meta.statfs()
        out = {"setting": settings.masked(), "sessions": sessions,
               "usage": {"used_bytes": used, "inodes": inodes}}
        groups: dict[str, list[dict]] = {}
        for s in sessions:
            if s.get("group"):
                groups.setdefault(s["group"], []).append({
                    "sid": s["sid"], "address": s.get("group_address") or "(reads only: --no-sharing)",
                    "weight": s.get("group_weight", 1.0), "heartbeat_age": s["heartbeat_age"],
                    "cached_bytes": s.get("cached_bytes", 0)})
        if groups:
            out["cache_groups"] = groups
        if gone:
            out["pending_of_ended_sessions"] = gone
    print(json.dumps(out, indent=2))
    return 0
