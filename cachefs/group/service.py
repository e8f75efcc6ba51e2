"""A member's block service: HTTP/1.1 with keep-alive, every request signed (auth.py).

- GET /block/KEY: the block from the local cache, as its cache entry file (sent with
  sendfile, not through Python buffers); on a miss the member fetches it from the object store
  once (concurrent requests, local or from peers, share that fetch), keeps it, and answers.
  A peer's request is never passed on to a third member.
- GET /staged/KEY: a block still staged here by write-back (not uploaded yet), as stored.
- GET /warm/KEY: fetch and keep the block, answer 204 without it (distributed warmup).
- POST /cached: which of the keys in the body (one per line) are cached here.
- POST /adopt: count the entries of these keys, which a reader of this node's cache wrote
  into it (cacheview.py); answered 204.
"""

from __future__ import annotations

import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..block import parse_block_key
from ..chunkstore import ChunkStore
from ..diskcache import DiskCache
from ..metrics import Metrics
from .auth import HEADER, Verifier

log = logging.getLogger("cachefs.group")


class BlockService:
    def __init__(self, chunks: ChunkStore, secret: bytes, listen: str, metrics: Metrics) -> None:
        self.chunks = chunks
        self.verifier = Verifier(secret)
        self.metrics = metrics
        self.listen = listen
        host, _, port = listen.rpartition(":")
        service = self

        class Handler(_Handler):
            owner = service

        self.server = _Server((host or "0.0.0.0", int(port)), Handler)
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="group-service", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve_forever that must be running
            self.server.shutdown()
            self._thread = None
        self.server.server_close()

    def block_of(self, key: str) -> tuple[int, int, int] | None:
        """(slice id, index, length) of a key of this volume's blocks, else None."""
        ident = parse_block_key(key) if key.startswith(f"{self.chunks.volume}/chunks/") else None
        # only the canonical spelling: a key names a file under the cache's directories
        return ident if ident is not None and self.chunks.key(*ident) == key else None


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 dropped the connects of a DataLoader's workers
    # opening their pools at once (each waited out a SYN retry, past the peer timeout)
    request_queue_size = 512
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    owner: BlockService

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("peer %s: " + format, self.client_address[0], *args)

    def _refuse(self, status: int, why: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        if status in (401, 403):
            self.owner.metrics.peer_refused.inc()
            log.warning("refused a request from %s: %s", self.client_address[0], why)

    def _authorized(self) -> bool:
        why = self.owner.verifier.check(self.command, self.path, self.headers.get(HEADER))
        if why:
            self._refuse(401, why)
        return not why

    def do_POST(self) -> None:  # noqa: N802 - http.server's names
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self._authorized():
            return
        keys = body.decode(errors="replace").split("\n") if body else []
        cache = self.owner.chunks.cache
        if self.path == "/adopt":
            if isinstance(cache, DiskCache):
                cache.adopt([k for k in keys if self.owner.block_of(k) is not None])
            return self._refuse(204, "")
        if self.path != "/cached":
            return self._refuse(404, "unknown path")
        answer = "\n".join("1" if cache is not None and cache.contains(k) else "0" for k in keys).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        kind, _, key = self.path.lstrip("/").partition("/")
        ident = self.owner.block_of(key)
        if ident is None or kind not in ("block", "staged", "warm"):
            return self._refuse(404, "unknown path")
        chunks = self.owner.chunks
        slice_id, index, length = ident
        try:
            if kind == "staged":
                path = chunks.staged_path(slice_id, index, length)
                if path is None:
                    return self._refuse(404, "not staged here")
                return self._send_file(path, "stored", key, length)
            path = chunks.keep_for_peer(slice_id, index, length)
        except Exception as e:
            log.warning("peer request for %s failed: %s", key, e)
            return self._refuse(503, str(e))
        if kind == "warm":
            return self._refuse(204, "")
        if path is not None:
            return self._send_file(path, "entry", key, length)
        data = chunks.entry_bytes(slice_id, index, length)  # no disk cache here: from memory
        self._send_headers(len(data), "entry")
        self.wfile.write(data)
        self._served(length)

    def _send_headers(self, size: int, form: str) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("X-Cachefs-Form", form)
        self.end_headers()
        self.wfile.flush()

    def _send_file(self, path: str, form: str, key: str, length: int) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return self._refuse(404, "gone")
        try:
            size = os.fstat(fd).st_size
            self._send_headers(size, form)
            sock, offset = self.connection.fileno(), 0
            while offset < size:
                sent = os.sendfile(sock, fd, offset, size - offset)
                if sent == 0:
                    raise ConnectionError("peer closed")
                offset += sent
        finally:
            os.close(fd)
        self._served(length)

    def _served(self, length: int) -> None:
        peer = self.client_address[0]
        self.owner.metrics.peer_blocks.labels(peer, "out").inc()
        self.owner.metrics.peer_bytes.labels(peer, "out").inc(length)
