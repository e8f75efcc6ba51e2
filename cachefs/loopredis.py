"""The FUSE shell's own Redis connections, used from the event loop for the one read every open
makes (close-to-open: the inode's attributes and first chunk's slices, RedisMeta.open_command).

Why not the engine's client on a worker thread: with many readers, handing an open to a thread
and back costs ~9 context switches and ~250 us of CPU (the trio thread and the worker pass the
GIL to each other at every system call either makes), several times what the round trip itself
costs; sent from the loop, the open costs one send and one receive while the loop serves other
requests. Only that read goes this way, and only to a plain Redis server (no Sentinel, Cluster
or TLS: there only the engine's clients know where to go). Anything unexpected (a refused
connection, a timeout, a reply that is not what the engine sent for) makes the caller fall back
to the engine on a worker thread, whose retries and errors are the ones that count; after a
failure the loop does not try again for a while, so an outage costs no more than before.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import hiredis
import trio

from cachefs.meta.redis_engine import Endpoint, RedisMeta
from cachefs.meta.types import Attr, Slice

log = logging.getLogger("cachefs.fuse")

PAUSE = 5.0  # seconds without the loop path after it failed once


class Unavailable(Exception):
    """The loop path cannot answer this time: use the engine's."""


def pack(args: list[str | bytes]) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Conn:
    """A non-blocking socket the loop waits on itself (a plain socket, not trio's: it can be
    closed from outside the loop, at unmount, and costs fewer calls per request)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = hiredis.Reader()

    @classmethod
    async def connect(cls, family: int, addr: Any) -> _Conn:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.connect(addr)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err)) from None
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def call(self, packed: bytes) -> Any:
        view = memoryview(packed)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
        while True:
            reply = self.reader.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise Unavailable(str(reply))
                return reply
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            if not data:
                raise Unavailable("connection closed")
            self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()


class LoopRedis:
    """Up to `size` connections to one Redis server, each used by one request at a time."""

    def __init__(self, endpoint: Endpoint, size: int = 16) -> None:
        self.ep = endpoint
        self._idle: list[_Conn] = []
        self.size = size
        self._open = 0
        self._paused_until = 0.0

    def up(self) -> bool:
        return time.monotonic() >= self._paused_until

    def inflight(self) -> int:
        """Commands sent (or connecting) and not yet answered."""
        return self._open - len(self._idle)

    async def _connect(self) -> _Conn:
        ep = self.ep
        if ep.path:
            conn = await _Conn.connect(socket.AF_UNIX, ep.path)
        else:
            info = await trio.socket.getaddrinfo(ep.host or "localhost", ep.port, type=socket.SOCK_STREAM)
            conn = await _Conn.connect(info[0][0], info[0][4])
        try:
            if ep.password:
                auth = ["AUTH", ep.username, ep.password] if ep.username else ["AUTH", ep.password]
                await conn.call(pack(auth))
            if ep.db:
                await conn.call(pack(["SELECT", str(ep.db)]))
        except BaseException:
            conn.close()
            raise
        return conn

    async def call(self, args: list[str | bytes]) -> Any:
        """The reply to one command, or Unavailable (the connection used is closed then, and
        the loop path pauses)."""
        if not self.up():
            raise Unavailable("paused after a failure")
        conn = self._idle.pop() if self._idle else None
        if conn is None and self._open >= self.size:
            raise Unavailable("every connection is busy")  # the thread path takes the overflow
        if conn is None:
            self._open += 1
        try:
            with trio.fail_after(self.ep.timeout):
                if conn is None:
                    conn = await self._connect()
                reply = await conn.call(pack(args))
        except (OSError, trio.TooSlowError, Unavailable, hiredis.ProtocolError) as e:
            self._open -= 1
            if conn is not None:
                conn.close()
            self._paused_until = time.monotonic() + PAUSE
            log.debug("event-loop Redis path paused: %r", e)
            raise Unavailable(str(e)) from None
        except BaseException:
            self._open -= 1  # cancelled halfway: the reply may still come, so not reused
            if conn is not None:
                conn.close()
            raise
        self._idle.append(conn)
        return reply

    def close(self) -> None:
        for c in self._idle:
            c.close()
        self._idle.clear()


class LoopOpen:
    """An open's close-to-open read sent from the event loop (RedisMeta.open_command)."""

    def __init__(self, meta: RedisMeta, redis: LoopRedis) -> None:
        self.meta = meta
        self.redis = redis

    @classmethod
    def of(cls, meta: object) -> LoopOpen | None:
        """The loop path for this engine, or None where it has none (see the module docstring)."""
        if not isinstance(meta, RedisMeta):
            return None
        ep = meta.endpoint()
        return cls(meta, LoopRedis(ep)) if ep is not None else None

    async def fetch(self, ino: int) -> tuple[Attr, list[Slice] | None] | None:
        """The engine's answer for an open of ino, None when the loop path cannot give it; an
        FSError (ENOENT) when the inode is gone."""
        try:
            reply = await self.redis.call(self.meta.open_command(ino))
        except Unavailable:
            return None
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        return self.meta.open_answer(ino, reply)

    def inflight(self) -> int:
        return self.redis.inflight()

    def close(self) -> None:
        self.redis.close()
