"""Riding through an outage of the metadata engine.

A Redis restart, a Sentinel failover or a Cluster resharding makes the engine unreachable (or
answer LOADING / READONLY / TRYAGAIN) for seconds. A training job must not fail for that: an
operation that meets such an answer waits and tries again, with capped exponential backoff and
jitter, for up to `timeout` seconds from its first failure, and only then fails with EIO.

What the engine does to make a retry safe (a transaction that may have been applied before the
connection dropped must not be applied twice) is the engine's own business; this module only
decides when to try again and keeps count: retries, and the time the engine was away.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from cachefs.errors import MetaError
from cachefs.metrics import Metrics

T = TypeVar("T")
log = logging.getLogger("cachefs.meta")

FIRST_DELAY = 0.05
MAX_DELAY = 2.0


class Outage(Exception):
    """Raised by an engine's attempt for a failure worth retrying (it wraps the cause)."""


class Retry:
    """Thread-safe. `connected_since` is when the engine last came back after an outage
    (None when it has answered every request of this client): until it has answered for a
    session timeout, this client does not take other sessions for dead, since their heartbeats
    could not reach the engine either."""

    def __init__(self, where: str, timeout: float = 60.0, metrics: Metrics | None = None) -> None:
        self.where = where
        self.timeout = timeout
        self.metrics = metrics
        self.connected_since: float | None = None
        self._down_since: float | None = None
        self._lock = threading.Lock()

    def call(self, attempt: Callable[[], T]) -> T:
        """attempt() until it returns, or raises something other than Outage; MetaError once
        the engine has been away for `timeout` seconds of this call."""
        first = None
        delay = FIRST_DELAY
        while True:
            try:
                result = attempt()
            except Outage as e:
                now = time.monotonic()
                self._failed(now, e)
                if first is None:
                    first = now
                deadline = first + self.timeout  # read each time: capped() shortens calls under way
                if now >= deadline:
                    raise MetaError(f"{self.where}: unreachable for {self.timeout:g} s: {e.__cause__ or e}") from None
                if self.metrics is not None:
                    self.metrics.meta_retries.inc()
                time.sleep(min(deadline - now, random.uniform(delay / 2, delay)))
                delay = min(MAX_DELAY, delay * 2)
                continue
            if self._down_since is not None:
                self._recovered()
            return result

    @contextmanager
    def capped(self, seconds: float) -> Iterator[None]:
        """Within the block, every call of this engine (other threads' too, those riding an outage
        already included) waits out an outage for at most `seconds`. A closing client ends its
        session so: left behind, the session is cleaned up by the others like a dead one, and
        a training script whose engine went away exits in seconds, not a minute."""
        before = self.timeout
        self.timeout = min(before, seconds)
        try:
            yield
        finally:
            self.timeout = before

    def _failed(self, now: float, e: Exception) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = now
                log.warning("%s is not answering, retrying for up to %g s: %s", self.where, self.timeout,
                            e.__cause__ or e)

    def _recovered(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            now = time.monotonic()
            away = now - self._down_since
            self._down_since = None
            self.connected_since = now
        if self.metrics is not None:
            self.metrics.meta_outage_seconds.inc(away)
        log.warning("%s answers again after %.1f s", self.where, away)

    def settled(self, session_timeout: float) -> bool:
        """Whether the engine has answered this client for at least session_timeout since its
        last outage (other sessions had the time to heartbeat)."""
        since = self.connected_since
        return since is None or time.monotonic() - since >= session_timeout
