"""The object store interface and the retry policy every backend shares."""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TypeVar

from cachefs.errors import ObjectError, ObjectNotFound, ObjectUnavailable
from cachefs.metrics import Metrics

T = TypeVar("T")


class Transient(Exception):
    """Raised by a backend for failures worth retrying (5xx, throttling, timeouts, resets)."""


class ObjectStore(ABC):
    """Whole-object put/get/delete: blocks are immutable, so nothing else is needed."""

    kind = "base"
    max_attempts = 6
    base_delay = 0.1
    max_delay = 5.0

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def __str__(self) -> str:
        return self.kind

    def _retry(self, op: str, fn: Callable[[], T], nbytes: int = 0) -> T:
        m = self.metrics
        delay = self.base_delay
        for attempt in range(1, self.max_attempts + 1):
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
                if attempt == self.max_attempts:
                    raise ObjectUnavailable(f"{self} {op} failed after {attempt} attempts: {e}") from None
                time.sleep(random.uniform(0, delay))
                delay = min(self.max_delay, delay * 2)
            except ObjectNotFound:
                m.object_requests.labels(op).inc()
                raise
            except ObjectError:
                m.object_requests.labels(op).inc()
                m.object_errors.labels(op).inc()
                raise
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes) -> None:
        self._retry("put", lambda: self._put(key, data), len(data))

    def get(self, key: str) -> bytes:
        return self._retry("get", lambda: self._get(key))

    def delete(self, key: str) -> None:
        self._retry("delete", lambda: self._delete(key))

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self._list(prefix)

    @abstractmethod
    def _put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFound when it does not exist."""

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[tuple[str, int]]: ...

    def check(self) -> None:
        """Fail fast with a clear error when the store is unusable (missing bucket, bad keys)."""

    def create(self) -> None:
        """Make the store exist (the bucket or directory) when formatting a volume."""
