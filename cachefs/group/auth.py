"""Requests between the members of a cache group, signed with the group's secret.

A request carries the time, a nonce and an HMAC-SHA256 over the method, path, time and nonce;
the secret itself never travels. A member refuses a request that is unsigned, signed with
another secret, older (or newer) than WINDOW seconds, or whose nonce it has seen within the
window (a replay), and sends no block bytes with the refusal.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from typing import Any

WINDOW = 30.0  # seconds a signed request stays valid (clocks of the group agree to within this)
HEADER = "X-Cachefs-Auth"


def sign(secret: bytes, method: str, path: str, now: float | None = None, nonce: str | None = None) -> str:
    """The value of the auth header for one request."""
    ts = f"{time.time() if now is None else now:.3f}"
    nonce = nonce or os.urandom(12).hex()
    mac = hmac.new(secret, f"{method}\n{path}\n{ts}\n{nonce}".encode(), hashlib.sha256).hexdigest()
    return f"{ts}:{nonce}:{mac}"


def signed_request(http: Any, secret: bytes, address: str, method: str, path: str,
                   body: bytes | None = None) -> Any:
    """A request to a member's (or this node's keeper's) block service, signed; http is a
    urllib3 PoolManager, the answer read whole."""
    return http.request(method, f"http://{address}{path}", body=body, headers={HEADER: sign(secret, method, path)},
                        preload_content=True)


class Verifier:
    """Thread-safe: the nonces seen within the window."""

    def __init__(self, secret: bytes, window: float = WINDOW) -> None:
        self.secret = secret
        self.window = window
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def check(self, method: str, path: str, header: str | None) -> str:
        """'' when the request may be served, else why not (for the log)."""
        if not header:
            return "unsigned"
        try:
            ts, nonce, mac = header.split(":")
            when = float(ts)
        except ValueError:
            return "malformed signature"
        want = hmac.new(self.secret, f"{method}\n{path}\n{ts}\n{nonce}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, mac):
            return "bad signature"
        now = time.time()
        if abs(now - when) > self.window:
            return "expired"
        with self._lock:
            if nonce in self._seen:
                return "replayed"
            self._seen[nonce] = now + 2 * self.window  # a nonce is refused while its time is valid
            if now > self._next_prune:
                self._seen = {n: t for n, t in self._seen.items() if t > now}
                self._next_prune = now + self.window
        return ""
