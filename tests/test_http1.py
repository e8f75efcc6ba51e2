"""The block path's HTTP/1.1 client against a scripted server on loopback: each answer form it
reads, keep-alive and the server closing idle connections, and answers cut short or malformed
(errors, never wrong bytes)."""

from __future__ import annotations

import socket
import threading

import pytest

from cachefs.objects.http1 import HTTP1Pool, ProtocolError

CUT = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"  # an answer that starts so is cut short


class Scripted:
    """Answers each request on a connection with the next of `answers` (bytes, or None to close
    the connection without answering); records the requests."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while self.answers:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                answer = self.answer(head)
                if answer is None:
                    return
                conn.sendall(answer)
                if answer.startswith(CUT):
                    return

    def answer(self, head: bytes) -> bytes | None:
        return self.answers.pop(0)

    def pool(self) -> HTTP1Pool:
        return HTTP1Pool("http", "127.0.0.1", self.port, f"127.0.0.1:{self.port}", read_timeout=2)

    def close(self) -> None:
        self.sock.close()


class ByPath(Scripted):
    """Answers a request with the next answer scripted for its path (bytes, None to close the
    connection unanswered); serves until closed."""

    def __init__(self, answers: dict[str, list[bytes | None]]) -> None:
        self.by_path = {k: list(v) for k, v in answers.items()}
        super().__init__([b"serving"])

    def answer(self, head: bytes) -> bytes | None:
        return self.by_path[head.split(b" ")[1].decode()].pop(0)


@pytest.fixture
def server(request):
    made: list[Scripted] = []

    def make(answers):
        made.append(Scripted(answers))
        return made[-1]

    yield make
    for s in made:
        s.close()


def ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_answers_by_length_chunked_and_to_the_close_on_one_connection(server):
    big = bytes(range(256)) * 4000  # past the head buffer: read straight into the body
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
    s = server([ok(b"abc"), ok(big), chunked, b"HTTP/1.1 204 No Content\r\n\r\n",
                ok(b"<Error/>").replace(b"200 OK", b"404 Not Found"), b"HTTP/1.1 200 OK\r\n\r\nuntil close"])
    p = s.pool()
    r = p.request("GET", "/b/k", {"X-A": "1"})
    assert (r.status, r.data, r.headers["content-length"]) == (200, b"abc", "3")
    assert s.requests[0].startswith(b"GET /b/k HTTP/1.1\r\nHost: 127.0.0.1:") and b"X-A: 1\r\n" in s.requests[0]
    assert p.request("GET", "/b/big", {}).data == big
    assert p.request("GET", "/b/c", {}).data == b"hello world"
    assert p.request("DELETE", "/b/k", {}).status == 204
    r = p.request("PUT", "/b/k", {}, b"payload")
    assert r.status == 404 and r.data == b"<Error/>" and s.requests[-1].endswith(b"Content-Length: 7\r\n\r\npayload")
    assert p.request("GET", "/b/last", {}).data == b"until close"
    assert s.connections == 1  # one keep-alive connection until the server closed it


def test_connection_close_is_honoured_and_an_idle_close_retried_once(server):
    s = server([ok(b"1", "Connection: close"), ok(b"2"), None, ok(b"3")])
    p = s.pool()
    assert p.request("GET", "/a", {}).data == b"1"
    assert p.request("GET", "/b", {}).data == b"2"  # a new connection (the first was closed)
    assert p.request("GET", "/c", {}).data == b"3"  # closed unanswered while idle: sent again
    assert s.connections == 3 and [r.split(b" ")[1] for r in s.requests] == [b"/a", b"/b", b"/c", b"/c"]


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then closed
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
])
def test_answers_cut_short_or_malformed_are_errors(server, answer):
    s = server([answer])  # then closed
    with pytest.raises(ProtocolError):
        s.pool().request("GET", "/k", {})


def test_a_fresh_connection_closed_unanswered_is_an_error_not_a_retry(server):
    s = server([None, ok(b"never")])
    with pytest.raises(OSError):
        s.pool().request("GET", "/k", {})
    assert len(s.requests) == 1


def test_a_silent_server_times_out():
    mute = socket.socket()  # takes connections (the kernel's backlog) and never answers
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    try:
        p = HTTP1Pool("http", "127.0.0.1", mute.getsockname()[1], "h", read_timeout=0.3)
        with pytest.raises(TimeoutError):
            p.request("GET", "/k", {})
    finally:
        mute.close()


def test_request_many_answers_each_in_its_place_width_at_a_time():
    paths = [f"/k{i}" for i in range(7)]
    s = ByPath({p: [ok(p.encode() * 1000)] for p in paths[:5]}
               | {"/k5": [ok(b"<Error/>").replace(b"200 OK", b"404 Not Found")], "/k6": [ok(b"")]})
    try:
        p = s.pool()
        got = p.request_many("GET", [(path, {"X-N": path}) for path in paths], width=3)
        assert [r.data for r in got[:5]] == [path.encode() * 1000 for path in paths[:5]]
        assert (got[5].status, got[5].data, got[6].status, got[6].data) == (404, b"<Error/>", 200, b"")
        assert sorted(r.split(b" ")[1] for r in s.requests) == sorted(path.encode() for path in paths)
        assert all(b"X-N: /k" in r for r in s.requests)
        assert s.connections == 3  # width connections, each kept for the next request
        s.by_path["/k0"].append(ok(b"again"))
        assert p.request("GET", "/k0", {}).data == b"again"  # and given back to the pool
        assert s.connections == 3
    finally:
        s.close()


def test_request_many_sends_once_more_what_an_idle_closed_connection_did_not_answer():
    s = ByPath({"/a": [ok(b"1")], "/b": [None, ok(b"2")], "/c": [ok(b"3")]})
    try:
        p = s.pool()
        assert p.request("GET", "/a", {}).data == b"1"  # the connection is idle in the pool now
        got = p.request_many("GET", [("/b", {}), ("/c", {})], width=1)
        assert [r.data for r in got] == [b"2", b"3"]
        assert [r.split(b" ")[1] for r in s.requests] == [b"/a", b"/b", b"/b", b"/c"]
    finally:
        s.close()


def test_request_many_puts_failures_in_place_and_sends_a_fresh_connection_s_request_once():
    s = ByPath({"/ok": [ok(b"fine")], "/gone": [None, ok(b"never")],
                "/cut": [CUT + b"short"]})
    try:
        got = s.pool().request_many("GET", [("/gone", {}), ("/ok", {}), ("/cut", {})], width=3)
        assert isinstance(got[0], OSError) and isinstance(got[2], ProtocolError) and got[1].data == b"fine"
        assert sorted(r.split(b" ")[1] for r in s.requests) == [b"/cut", b"/gone", b"/ok"]
    finally:
        s.close()


def test_request_many_against_a_silent_server_times_out_every_request():
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    try:
        p = HTTP1Pool("http", "127.0.0.1", mute.getsockname()[1], "h", read_timeout=0.3)
        got = p.request_many("GET", [(f"/k{i}", {}) for i in range(4)], width=2)
        assert all(isinstance(r, TimeoutError) for r in got)
    finally:
        mute.close()
