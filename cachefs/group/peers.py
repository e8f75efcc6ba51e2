"""A member's view of its cache group: who the members are, who owns each block, and how to
get a block from the member that has it.

Members are sessions of the volume whose info names the group (the mount writes its group,
address, weight and cached bytes there, and its heartbeat keeps them fresh); one that stops
heartbeating for MEMBER_TIMEOUT drops out of the ring at the next refresh. A member mounted
with --no-sharing reads through the group but holds no ring positions and serves nothing.

Every block from a peer is verified (a cache entry against its segment checksums, a staged
block against its own); an unreachable, slow or wrong peer costs a bounded wait and a metric,
and the caller then reads the object store itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import urllib3

from cachefs.meta import BaseMeta

from ..block import Buffer, decode_block
from ..diskcache import decode_entry
from ..errors import CachefsError
from ..metrics import Metrics
from .auth import signed_request
from .ring import Member, Ring

log = logging.getLogger("cachefs.group")

CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 3.0  # a peer that takes longer for a block (twice) is skipped: the object store answers
DOWN_FOR = 3.0  # seconds a peer that could not be reached is skipped (then tried again)


class Peers:
    def __init__(self, meta: BaseMeta, name: str, secret: bytes, address: str, metrics: Metrics, *,
                 weight: float = 1.0, sharing: bool = True, refresh: float = 1.0, member_timeout: float = 10.0,
                 cached_bytes: Callable[[], int] = lambda: 0, fixed: Member | None = None) -> None:
        """fixed: read through this one member (this node's mount: client.py) instead of a
        group of the metadata engine's sessions."""
        self.meta = meta
        self.name = name
        self.secret = secret
        self.address = address  # ours, as the others reach it (also our id in the ring)
        self.weight = weight
        self.sharing = sharing
        self.metrics = metrics
        self.refresh_every = refresh
        self.member_timeout = member_timeout
        self.cached_bytes = cached_bytes
        self.fixed = fixed
        self.ring = Ring([fixed] if fixed is not None else [])
        # one retry on a fresh connection: a pooled keep-alive connection the peer has closed
        # is no reason to mark the peer down (and send its blocks to the object store) for
        # DOWN_FOR seconds
        retry = urllib3.Retry(total=1, connect=1, read=1, status=0, other=0, redirect=False)
        self.http = urllib3.PoolManager(num_pools=64, maxsize=8, retries=retry,
                                        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._members: dict[int, Member] = {}  # by session id (the writers of pending slices)
        self._down: dict[str, float] = {}  # address -> until when it is skipped

    # ---- membership ---------------------------------------------------------------------------
    def info(self) -> dict:
        """What this member publishes in its session info."""
        if self.fixed is not None:
            return {}
        return {"group": self.name, "group_address": self.address if self.sharing else "",
                "group_weight": self.weight, "sharing": self.sharing, "cached_bytes": self.cached_bytes()}

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="group", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_every):
            if self.fixed is not None:
                continue
            try:
                self.meta.update_session_info(**self.info())
                self.refresh()
            except Exception as e:  # the engine is away: keep the ring we have
                log.warning("cache group %s: refresh failed: %s", self.name, e)

    def refresh(self) -> None:
        """Rebuild the ring from the members alive now."""
        if self.fixed is not None:
            return
        now = self.meta.now()
        members, by_sid = [], {}
        for s in self.meta.sessions():
            info = s.info
            if info.get("group") != self.name or not info.get("group_address"):
                continue
            if now - s.heartbeat > self.member_timeout and s.sid != self.meta.sid:
                continue
            m = Member(info["group_address"], info["group_address"], float(info.get("group_weight") or 1.0))
            by_sid[s.sid] = m
            if info.get("sharing", True):
                members.append(m)
        self._members = by_sid
        if {m.id for m in members} != set(self.ring.members) or any(
                self.ring.members[m.id].weight != m.weight for m in members):
            old = len(self.ring)
            self.ring = Ring(members)
            log.info("cache group %s: %d member(s) (was %d)", self.name, len(members), old)
        self.metrics.group_members.set(len(self.ring))

    def owner(self, key: str) -> Member | None:
        """The member that owns key, or None when that is this node (or the ring is empty)."""
        m = self.ring.owner(key)
        return None if m is None or m.address == self.address else m

    def writer(self, sid: int) -> Member | None:
        """The member of session sid (the writer of a pending slice), unless it is us."""
        m = self._members.get(sid)
        return None if m is None or m.address == self.address else m

    # ---- asking peers -----------------------------------------------------------------------------
    def _get(self, m: Member, path: str, method: str = "GET", body: bytes | None = None) -> urllib3.BaseHTTPResponse:
        return signed_request(self.http, self.secret, m.address, method, path, body)

    def fetch(self, key: str, length: int, m: Member | None = None, staged: bool = False) -> Buffer | None:
        """A block's plain bytes from its owner (or from m), verified; None when the peer cannot
        give it (then the caller asks the object store)."""
        m = m or self.owner(key)
        if m is None:
            return None
        path = f"/{'staged' if staged else 'block'}/{key}"
        peer = m.address
        if self._down.get(peer, 0.0) > time.monotonic():
            self.metrics.peer_fallbacks.inc()
            return None
        try:
            r = self._get(m, path)
        except urllib3.exceptions.HTTPError as e:
            self._down[peer] = time.monotonic() + DOWN_FOR
            self._failed(peer, "unreachable", e)
            return None
        if r.status == 404 and staged:
            return None
        if r.status != 200:
            self._failed(peer, f"status {r.status}", r.data[:200])
            return None
        try:
            if r.headers.get("X-Cachefs-Form") == "stored":
                plain = decode_block(r.data, length, f"peer {peer}: {key}")
            else:
                plain = decode_entry(r.data, length, f"peer {peer}: {key}")
        except CachefsError as e:
            self.metrics.checksum_errors.labels("peer").inc()
            self._failed(peer, "checksum", e)
            return None
        self.metrics.peer_blocks.labels(peer, "in").inc()
        self.metrics.peer_bytes.labels(peer, "in").inc(length)
        return plain

    def warm(self, key: str) -> bool:
        """Ask the owner to fetch and keep a block (distributed warmup); False if it could not."""
        m = self.owner(key)
        if m is None:
            return False
        try:
            r = self._get(m, f"/warm/{key}")
        except urllib3.exceptions.HTTPError as e:
            self._failed(m.address, "unreachable", e)
            return False
        return r.status == 204

    def cached(self, keys: list[str]) -> dict[str, bool]:
        """Which of keys their owners hold (for warmup --check across the group)."""
        by_owner: dict[str, list[str]] = {}
        members: dict[str, Member] = {}
        for k in keys:
            m = self.ring.owner(k)
            if m is not None and m.address != self.address:
                by_owner.setdefault(m.address, []).append(k)
                members[m.address] = m
        out: dict[str, bool] = {}
        for addr, ks in by_owner.items():
            try:
                r = self._get(members[addr], "/cached", "POST", "\n".join(ks).encode())
                answers = r.data.decode().split("\n") if r.status == 200 else []
            except urllib3.exceptions.HTTPError:
                answers = []
            for k, a in zip(ks, answers + ["0"] * (len(ks) - len(answers)), strict=True):
                out[k] = a == "1"
        return out

    def _failed(self, peer: str, kind: str, detail: object) -> None:
        self.metrics.peer_errors.labels(peer, kind).inc()
        self.metrics.peer_fallbacks.inc()
        log.warning("cache group %s: peer %s: %s (%s); reading the object store", self.name, peer, kind,
                    str(detail)[:200])

    def members_now(self) -> list[Member]:
        return list(self.ring.members.values())

