"""The FUSE shell's event-loop Redis path (cachefs/loopredis.py) against real redis-servers:
it answers what the engine answers, speaks AUTH, SELECT and unix sockets, and steps aside (the
engine's thread path takes over) when the server is gone."""

from __future__ import annotations

import errno
import os

import pytest
import redis
import trio

from cachefs import loopredis
from cachefs.errors import FSError
from cachefs.loopredis import LoopOpen, LoopRedis, Unavailable
from cachefs.meta.redis_engine import Endpoint
from cachefs.meta.types import ROOT_INODE
from cachefs.options import Options
from cachefs.volume import Volume

from .servers import RedisServer


def _endpoint(server: RedisServer, db: int = 0, password: str | None = None, path: str | None = None) -> Endpoint:
    return Endpoint(None if path else server.host, server.port, path, db, None, password, 2.0)


def test_loop_open_answers_what_the_engine_answers(volumes):
    url = volumes.create("redis", "file")
    vol = Volume(url, Options(cache_dir=""))
    try:
        vol.meta.new_session({})
        fh, ino, _ = vol.vfs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR)
        vol.vfs.write(fh, 0, b"x" * 70_000)
        vol.vfs.release(fh)
        lo = LoopOpen.of(vol.meta)
        assert lo is not None
        assert trio.run(lo.fetch, ino) == vol.meta.open_file(ino)
        attr, slices = trio.run(lo.fetch, ROOT_INODE)
        assert attr.type == 2 and slices is None
        with pytest.raises(FSError) as e:
            trio.run(lo.fetch, 987654)
        assert e.value.errno == errno.ENOENT
        lo.close()
    finally:
        vol.close()
    sqlite = Volume(volumes.create("sqlite", "file"), Options(cache_dir=""))
    try:
        assert LoopOpen.of(sqlite.meta) is None  # only the engine's own connections there
    finally:
        sqlite.close()


def test_password_database_and_unix_socket(tmp_path):
    sock = str(tmp_path / "r.sock")
    server = RedisServer(extra=["--requirepass", "pw", "--unixsocket", sock, "--unixsocketperm", "700"])
    try:
        redis.Redis(host=server.host, port=server.port, db=5, password="pw").set("k", b"v5")

        async def ask(ep: Endpoint) -> object:
            lr = LoopRedis(ep)
            try:
                return await lr.call(["GET", "k"])
            finally:
                lr.close()

        assert trio.run(ask, _endpoint(server, 5, "pw")) == b"v5"
        assert trio.run(ask, _endpoint(server, 5, "pw", path=sock)) == b"v5"
        assert trio.run(ask, _endpoint(server, 0, "pw")) is None  # another database
        with pytest.raises(Unavailable):
            trio.run(ask, _endpoint(server, 5, "wrong"))
    finally:
        server.stop()


def test_a_lost_server_makes_the_loop_path_step_aside(monkeypatch):
    monkeypatch.setattr(loopredis, "PAUSE", 0.5)
    server = RedisServer()
    try:
        redis.Redis(host=server.host, port=server.port).set("k", b"v")
        lr = LoopRedis(_endpoint(server))

        async def get() -> object:
            return await lr.call(["GET", "k"])

        assert trio.run(get) == b"v"
        server.kill()  # the pooled connection dies with it
        with pytest.raises(Unavailable):
            trio.run(get)
        assert not lr.up()
        with pytest.raises(Unavailable):  # paused: not even tried
            trio.run(get)
        server.start()
        redis.Redis(host=server.host, port=server.port).set("k", b"back")
        trio.run(trio.sleep, 0.6)
        assert lr.up()
        assert trio.run(get) == b"back"
        lr.close()
    finally:
        server.stop()
