"""A small HTTP/1.1 client for the block path: keep-alive connections to one endpoint, a
request written in one send, the answer's head parsed once and its body read straight into its
buffer.

Why not urllib3 (which the proxy case and everything else still use): for a 110 KB block GET
from a gateway on loopback its request and response machinery (http.client's header parsing,
the pool's checks, a read through a buffered socket file) cost ~0.35 ms of CPU out of ~0.5 ms,
three times what the request needs; a DataLoader's cold epoch is bound by that CPU.

What it speaks: requests with a body of known length (or none); answers with Content-Length,
chunked, or a body to the connection's close. A reused connection the server closed while it
was idle (nothing of the answer read yet) is retried once on a new one, as browsers and urllib3
do; any other failure is the caller's (the object store's retry).
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

HEAD_LIMIT = 64 << 10  # an answer's status line and headers: more is not an S3 endpoint
RECV = 64 << 10


class ProtocolError(OSError):
    """The server's answer is not HTTP/1.x as this client reads it."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    data: bytes | bytearray


class _Conn:
    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, connect_timeout: float,
                 read_timeout: float) -> None:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(read_timeout)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.extra = b""  # bytes read past the last answer (none, from a well-behaved server)
        self.used = False  # has answered a request (so the server may have closed it since)
        self.scratch = bytearray(HEAD_LIMIT)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class NotAnswered(OSError):
    """The connection closed before any byte of the answer: the request may be sent again."""


class HTTP1Pool:
    """Connections to one host (thread-safe; the pool of the process that made it: a forked
    child starts its own)."""

    def __init__(self, scheme: str, host: str, port: int | None, host_header: str, max_idle: int = 32,
                 connect_timeout: float = 3.0, read_timeout: float = 15.0, ca_file: str | None = None) -> None:
        self.host, self.port = host, port or (443 if scheme == "https" else 80)
        self.host_header = host_header
        self.tls = ssl.create_default_context(cafile=ca_file) if scheme == "https" else None
        self.max_idle = max_idle
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _take(self) -> _Conn:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connections are not ours
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        return _Conn(self.host, self.port, self.tls, self.connect_timeout, self.read_timeout)

    def _give(self, conn: _Conn) -> None:
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def _head(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> bytes:
        head = [f"{method} {path} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        if body is not None or method in ("PUT", "POST"):
            head.append(f"Content-Length: {len(body or b'')}\r\n")
        head.append("\r\n")
        return "".join(head).encode("latin-1")

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> Response:
        raw = self._head(method, path, headers, body)
        for attempt in (1, 2):
            conn = self._take()
            try:
                answer, keep = self._exchange(conn, method, raw, body)
            except NotAnswered:
                conn.close()
                if conn.used and attempt == 1:
                    continue  # the server closed it while idle: once more on a new connection
                raise
            except BaseException:
                conn.close()
                raise
            if keep:
                conn.used = True
                self._give(conn)
            else:
                conn.close()
            return answer
        raise AssertionError("unreachable")

    def request_many(self, method: str, requests: Sequence[tuple[str, dict[str, str]]],
                     width: int) -> list[Response | BaseException]:
        """Body-less requests (path, headers) from this one thread, `width` of them in flight on
        as many connections; an answer or the failure in each one's place (the caller sends a
        failed one again its own way: nothing here is retried).

        Why: a cold DataLoader batch fetched by a pool of threads spent ~90 futex calls per
        110 KB object handing the GIL and its futures around; one thread waiting on all its
        sockets at once spends none of that. A response is read whole once its first bytes are
        in (the server writes it at once), so one selector wait per request is all it costs."""
        out: list[Response | BaseException | None] = [None] * len(requests)
        todo = deque(range(len(requests)))
        busy: dict[_Conn, int] = {}
        again: set[int] = set()  # sent once more: the server had closed the idle connection
        sel = selectors.DefaultSelector()
        try:
            while todo or busy:
                while todo and len(busy) < width:
                    i = todo.popleft()
                    try:
                        conn = self._take()
                    except OSError as e:
                        out[i] = e
                        continue
                    try:
                        self._send(conn, self._head(method, *requests[i]), None)
                    except BaseException as e:
                        conn.close()
                        out[i] = e
                        continue
                    busy[conn] = i
                    sel.register(conn.sock, selectors.EVENT_READ, conn)
                if not busy:
                    continue
                ready = sel.select(self.read_timeout)
                if not ready:  # none answered in time: those in flight fail
                    for conn, i in busy.items():
                        sel.unregister(conn.sock)
                        conn.close()
                        out[i] = TimeoutError(f"no answer in {self.read_timeout:.0f} s")
                    busy.clear()
                    continue
                for key, _ in ready:
                    conn = key.data
                    i = busy.pop(conn)
                    sel.unregister(conn.sock)
                    try:
                        answer, keep = self._receive(conn, method)
                    except NotAnswered as e:
                        conn.close()
                        if conn.used and i not in again:
                            again.add(i)
                            todo.appendleft(i)
                        else:
                            out[i] = e
                        continue
                    except BaseException as e:
                        conn.close()
                        out[i] = e
                        continue
                    out[i] = answer
                    if keep:
                        conn.used = True
                        self._give(conn)
                    else:
                        conn.close()
        finally:
            for conn in busy:
                conn.close()
            sel.close()
        return out  # type: ignore[return-value]

    def _exchange(self, conn: _Conn, method: str, raw: bytes, body: bytes | None) -> tuple[Response, bool]:
        self._send(conn, raw, body)
        return self._receive(conn, method)

    def _send(self, conn: _Conn, raw: bytes, body: bytes | None) -> None:
        sock = conn.sock
        try:
            if body and len(body) <= 64 << 10:
                sock.sendall(raw + body)  # one segment for a small PUT
            else:
                sock.sendall(raw)
                if body:
                    sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise NotAnswered(e.errno, f"connection closed before the answer: {e}") from None

    def _receive(self, conn: _Conn, method: str) -> tuple[Response, bool]:
        sock = conn.sock
        # the head (and what of the body came with it) into the connection's scratch buffer
        buf, have = conn.scratch, len(conn.extra)
        buf[:have] = conn.extra
        conn.extra = b""
        end = buf.find(b"\r\n\r\n", 0, have)
        while end < 0:
            if have >= len(buf):
                raise ProtocolError("answer head too long")
            try:
                k = sock.recv_into(memoryview(buf)[have:])
            except ConnectionResetError as e:
                if not have:
                    raise NotAnswered(e.errno, "connection reset before the answer") from None
                raise
            if not k:
                if not have:
                    raise NotAnswered(0, "connection closed before the answer")
                raise ProtocolError("connection closed inside the answer's head")
            end = buf.find(b"\r\n\r\n", max(0, have - 3), have + k)
            have += k
        status, headers, version = _parse_head(bytes(buf[:end]))
        rest = memoryview(buf)[end + 4 : have]
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            conn.extra = bytes(rest)
            return Response(status, headers, b""), keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            data, extra = _read_chunked(sock, bytes(rest))
            conn.extra = extra
            return Response(status, headers, data), keep
        length = headers.get("content-length")
        if length is None:  # to the close
            parts = [bytes(rest)]
            while chunk := sock.recv(RECV):
                parts.append(chunk)
            return Response(status, headers, b"".join(parts)), False
        try:
            n = int(length)
        except ValueError:
            raise ProtocolError(f"bad Content-Length {length!r}") from None
        if n < 0:
            raise ProtocolError(f"bad Content-Length {length!r}")
        if len(rest) >= n:
            conn.extra = bytes(rest[n:])
            return Response(status, headers, bytes(rest[:n])), keep
        data = bytearray(n)
        got = len(rest)
        data[:got] = rest
        view = memoryview(data)
        while got < n:
            k = sock.recv_into(view[got:])
            if k == 0:
                raise ProtocolError(f"connection closed after {got} of {n} bytes")
            got += k
        return Response(status, headers, data), keep


def _parse_head(head: bytes) -> tuple[int, dict[str, str], str]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(parts[1]), headers, parts[0]


def _read_chunked(sock: socket.socket, have: bytes) -> tuple[bytes, bytes]:
    """(body, bytes past it) of a chunked answer whose first bytes are `have`."""
    buf = bytearray(have)
    out = bytearray()
    pos = 0

    def need(n: int) -> None:
        while len(buf) - pos < n:
            chunk = sock.recv(RECV)
            if not chunk:
                raise ProtocolError("connection closed inside a chunked answer")
            buf.extend(chunk)

    def line() -> bytes:
        nonlocal pos
        while (i := buf.find(b"\r\n", pos)) < 0:
            if len(buf) - pos > HEAD_LIMIT:
                raise ProtocolError("chunk size line too long")
            need(len(buf) - pos + 1)
        text, pos = bytes(buf[pos:i]), i + 2
        return text

    while True:
        size_text = line().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while line():  # trailers, up to the empty line
                pass
            return bytes(out), bytes(buf[pos:])
        need(size + 2)
        out += buf[pos : pos + size]
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")
        pos += size + 2
