"""A fault-injecting HTTP proxy to put in front of the tests' S3 server.

Requests are forwarded one by one (keep-alive towards the client, a fresh connection towards
the server, which closes after each answer); a fault can hit any request, chosen by operation
and by fraction:

- "error": answer 503 SlowDown (or `status`) without asking the server;
- "reset": forward, then cut the connection halfway through the answer's body;
- "truncate": forward, then send the headers and only part of the body, and close;
- "corrupt": forward, then flip one byte of a successful answer's body;
- "stall": hold the request (no answer at all) until `until`, then forward it.

Operations: GET, PUT, DELETE, HEAD (of an object or the bucket) and LIST (a GET of a bucket).
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SLOWDOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>")


@dataclass
class Fault:
    kind: str  # error | reset | truncate | corrupt | stall
    fraction: float = 1.0
    ops: set[str] = field(default_factory=lambda: {"GET", "PUT", "DELETE", "HEAD", "LIST"})
    status: int = 503
    until: float = 0.0  # stall: time.monotonic() until which requests are held
    per_key: int = 0  # at most this many faults for each object key (0: no bound)


@dataclass
class Counts:
    faults: dict[str, int] = field(default_factory=dict)


def _read_until(sock: socket.socket, buf: bytearray, marker: bytes) -> int:
    while True:
        i = buf.find(marker)
        if i >= 0:
            return i
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        buf += data


def _read_exact(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = sock.recv(max(65536, n - len(buf)))
        if not data:
            raise ConnectionError("closed")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _read_message(sock: socket.socket, buf: bytearray, is_response: bool = False,
                  method: str = "") -> tuple[bytes, list[tuple[str, str]], bytes]:
    """(start line, headers, body) of one HTTP/1.1 message."""
    end = _read_until(sock, buf, b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    start, headers = head[0].encode("latin-1"), []
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    h = {k.lower(): v for k, v in headers}
    if not is_response and h.get("expect", "").lower() == "100-continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        headers = [(k, v) for k, v in headers if k.lower() != "expect"]
    if is_response and (method == "HEAD" or start.split()[1] in (b"204", b"304")):
        return start, headers, b""
    if "content-length" in h:
        return start, headers, _read_exact(sock, buf, int(h["content-length"]))
    if h.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            i = _read_until(sock, buf, b"\r\n")
            size = int(bytes(buf[:i]).split(b";")[0], 16)
            del buf[: i + 2]
            if size == 0:
                _read_until(sock, buf, b"\r\n")
                del buf[:2]
                return start, headers, bytes(body)
            body += _read_exact(sock, buf, size)
            _read_exact(sock, buf, 2)
    if is_response:  # to the end of the connection
        while data := sock.recv(65536):
            buf += data
        body = bytes(buf)
        buf.clear()
        return start, headers, body
    return start, headers, b""


def _message(start: bytes, headers: list[tuple[str, str]], body: bytes, extra: tuple[str, ...] = (),
             head_of: bool = False) -> bytes:
    """A message's head, with the length of body (head_of: the answer to a HEAD, whose length
    header tells the object's size and stays)."""
    drop = {"transfer-encoding", "connection", "keep-alive"} | (set() if head_of else {"content-length"})
    lines = [start] + [f"{k}: {v}".encode("latin-1") for k, v in headers if k.lower() not in drop]
    lines += [e.encode() for e in extra]
    if not head_of:
        lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


class FaultProxy:
    """Listens on 127.0.0.1; `endpoint` is what volumes are formatted with."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: list[Fault] = []
        self.counts = Counts()
        self.log: list[tuple[str, str]] = []  # (op, object key) of every request, in order
        self._per_key: dict[tuple[int, str], int] = {}  # (fault's place in faults, key) -> faults sent
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = False
        self._conns: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="faultproxy", daemon=True).start()

    def bucket_url(self, bucket: str) -> str:
        return f"{self.endpoint}/{bucket}"

    def set(self, *faults: Fault) -> None:
        with self._lock:
            self.faults = list(faults)
            self._per_key.clear()

    def clear(self) -> None:
        self.set()

    def faulted(self, kind: str) -> int:
        with self._lock:
            return self.counts.faults.get(kind, 0)

    def count(self, op: str) -> int:
        """Requests of one kind (GET, PUT, ...) seen so far."""
        return len(self.keys(op))

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for c in list(self._conns):
            try:
                c.close()
            except OSError:
                pass

    # ---- serving ---------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def keys(self, op: str) -> list[str]:
        """The object keys of the requests of one kind seen so far, in order."""
        with self._lock:
            return [key for o, key in self.log if o == op]

    def _pick(self, op: str, path: str) -> Fault | None:
        with self._lock:
            self.log.append((op, path))
            for i, f in enumerate(self.faults):
                if f.per_key and self._per_key.get((i, path), 0) >= f.per_key:
                    continue
                if op in f.ops and (f.kind == "stall" and time.monotonic() < f.until
                                    or f.kind != "stall" and random.random() < f.fraction):
                    self.counts.faults[f.kind] = self.counts.faults.get(f.kind, 0) + 1
                    if f.per_key:
                        self._per_key[(i, path)] = self._per_key.get((i, path), 0) + 1
                    return f
        return None

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while True:
                start, headers, body = _read_message(conn, buf)
                method, target = start.decode("latin-1").split()[:2]
                path = urlsplit(target).path.strip("/")
                op = method if "/" in path else ("LIST" if method == "GET" else method)
                fault = self._pick(op, path)
                if fault is not None and fault.kind == "stall":
                    while time.monotonic() < fault.until and not self._closed:
                        time.sleep(0.05)
                if fault is not None and fault.kind == "error":
                    err = SLOWDOWN if fault.status == 503 else b"<Error><Code>InternalError</Code></Error>"
                    status = f"HTTP/1.1 {fault.status} {'Slow Down' if fault.status == 503 else 'Error'}".encode()
                    conn.sendall(_message(status, [("Content-Type", "application/xml")], err) + err)
                    continue
                rstart, rheaders, rbody = self._forward(start, headers, body, method)
                if method == "HEAD":
                    conn.sendall(_message(rstart, rheaders, b"", head_of=True))
                    continue
                if fault is not None and fault.kind in ("reset", "truncate") and len(rbody) > 1:
                    cut = random.randrange(1, len(rbody))
                    conn.sendall(_message(rstart, rheaders, rbody) + rbody[:cut])
                    if fault.kind == "reset":
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    conn.close()
                    return
                if fault is not None and fault.kind == "corrupt" and rstart.split()[1] == b"200" and rbody:
                    i = random.randrange(len(rbody))
                    rbody = rbody[:i] + bytes([rbody[i] ^ 0x20]) + rbody[i + 1 :]
                conn.sendall(_message(rstart, rheaders, rbody) + rbody)
        except (OSError, ConnectionError, ValueError, IndexError):
            pass
        finally:
            self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _forward(self, start: bytes, headers: list[tuple[str, str]], body: bytes,
                 method: str) -> tuple[bytes, list[tuple[str, str]], bytes]:
        with socket.create_connection(self.upstream, timeout=60) as up:
            up.sendall(_message(start, headers, body, extra=("Connection: close",)) + body)
            return _read_message(up, bytearray(), is_response=True, method=method)
