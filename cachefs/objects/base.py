"""The object store interface and the retry policy every backend shares."""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import NamedTuple, TypeVar

from cachefs.errors import ObjectError, ObjectNotFound, ObjectUnavailable
from cachefs.metrics import Metrics

T = TypeVar("T")


class ObjectInfo(NamedTuple):
    key: str
    size: int
    mtime: float  # seconds since the epoch


class Transient(Exception):
    """Raised by a backend for failures worth retrying (5xx, throttling, timeouts, resets)."""


RETRY_TIMEOUT = 300.0  # seconds a request rides through an outage (--io-retry-timeout)


class ObjectStore(ABC):
    """Whole-object put/get/delete: blocks are immutable, so nothing else is needed.

    A transient failure (5xx, throttling, a reset, a stall caught by the per-request timeout)
    is tried again with capped exponential backoff and jitter for up to `retry_timeout`
    seconds from the request's first failure (`max_attempts`, when set, bounds the tries too),
    so an outage shorter than that costs its length, not the operation."""

    kind = "base"
    batched_gets = False  # get_many overlaps its requests from one thread (else: one by one)
    max_attempts: int | None = None
    base_delay = 0.1
    max_delay = 5.0

    def __init__(self, metrics: Metrics, retry_timeout: float = RETRY_TIMEOUT) -> None:
        self.metrics = metrics
        self.retry_timeout = retry_timeout

    def __str__(self) -> str:
        return self.kind

    def _retry(self, op: str, fn: Callable[[], T], nbytes: int = 0, timeout: float | None = None) -> T:
        """fn() through transient failures: for retry_timeout seconds from its first failure, or
        for `timeout` seconds from now (a check that must answer within seconds)."""
        m = self.metrics
        delay = self.base_delay
        first_failure = None if timeout is None else time.monotonic()
        timeout = self.retry_timeout if timeout is None else timeout
        attempt = 0
        while True:
            attempt += 1
            start = time.perf_counter()
            try:
                result = fn()
                m.object_requests.labels(op).inc()
                m.object_latency.labels(op).observe(time.perf_counter() - start)
                m.object_bytes.labels(op).inc(len(result) if isinstance(result, bytes) else nbytes)
                return result
            except Transient as e:
                m.object_requests.labels(op).inc()
                m.object_errors.labels(op).inc()
                now = time.monotonic()
                if first_failure is None:
                    first_failure = now
                left = timeout - (now - first_failure)
                if left <= 0 or (self.max_attempts is not None and attempt >= self.max_attempts):
                    raise ObjectUnavailable(f"{self} {op} failed after {attempt} attempts in "
                                            f"{now - first_failure:.0f} s: {e}") from None
                m.object_retries.labels(op).inc()
                time.sleep(min(left, random.uniform(delay / 2, delay)))
                delay = min(self.max_delay, delay * 2)
            except ObjectNotFound:
                m.object_requests.labels(op).inc()
                raise
            except ObjectError:
                m.object_requests.labels(op).inc()
                m.object_errors.labels(op).inc()
                raise

    def put(self, key: str, data: bytes) -> None:
        self._retry("put", lambda: self._put(key, data), len(data))

    def get(self, key: str) -> bytes:
        return self._retry("get", lambda: self._get(key))

    def get_many(self, keys: list[str], width: int) -> list[bytes | None]:
        """Whole objects fetched together by the calling thread, `width` in flight where the
        backend can (batched_gets; a batch of small files): each one's bytes, or None where that
        one failed (the caller asks again through get, which retries). Their latency is not
        observed: the requests overlap."""
        got = self._get_many(keys, width)
        m, out = self.metrics, []
        for r in got:
            m.object_requests.labels("get").inc()
            if isinstance(r, BaseException):
                if not isinstance(r, ObjectNotFound):
                    m.object_errors.labels("get").inc()
                out.append(None)
            else:
                m.object_bytes.labels("get").inc(len(r))
                out.append(r)
        return out

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object (fewer when it is shorter)."""
        return self._retry("get_range", lambda: self._get_range(key, start, end))

    def delete(self, key: str) -> None:
        self._retry("delete", lambda: self._delete(key))

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under prefix."""
        return ((e.key, e.size) for e in self._entries(prefix))

    def entries(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under prefix, with its size and when it was written."""
        return self._entries(prefix)

    @abstractmethod
    def _put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFound when it does not exist."""

    def _get_many(self, keys: list[str], width: int) -> list[bytes | BaseException]:
        """The objects' bytes or each one's failure (here: one after another)."""
        out: list[bytes | BaseException] = []
        for key in keys:
            try:
                out.append(self._get(key))
            except Exception as e:
                out.append(e)
        return out

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object; backends that can ask for a range do."""
        return self._get(key)[start:end]

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abstractmethod
    def _entries(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def check(self) -> None:
        """Fail fast with a clear error when the store is unusable (missing bucket, bad keys)."""

    def create(self) -> None:
        """Make the store exist (the bucket or directory) when formatting a volume."""
