"""An in-memory object store, for tests only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from cachefs.errors import ObjectNotFound
from cachefs.metrics import Metrics

from .base import RETRY_TIMEOUT, ObjectInfo, ObjectStore

# the buckets of this process: clients that open the same bucket share its objects (a test's
# writer and reader), each counting its own requests
_BUCKETS: dict[str, tuple[dict[str, bytes], dict[str, float], threading.Lock]] = {}
_BUCKETS_LOCK = threading.Lock()


class MemStore(ObjectStore):
    kind = "mem"

    def __init__(self, metrics: Metrics, name: str = "", retry_timeout: float = RETRY_TIMEOUT) -> None:
        super().__init__(metrics, retry_timeout)
        if name:
            with _BUCKETS_LOCK:
                self.objects, self.written, self._lock = _BUCKETS.setdefault(name, ({}, {}, threading.Lock()))
        else:
            self.objects, self.written, self._lock = {}, {}, threading.Lock()

    def _put(self, key: str, data: bytes) -> None:
        with self._lock:
            self.objects[key] = bytes(data)
            self.written[key] = time.time()

    def _get(self, key: str) -> bytes:
        with self._lock:
            try:
                return self.objects[key]
            except KeyError:
                raise ObjectNotFound(f"mem: no object {key}") from None

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        return self._get(key)[start:end]

    def _delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(key, None)

    def _entries(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            items = [ObjectInfo(k, len(v), self.written.get(k, 0.0)) for k, v in self.objects.items()
                     if k.startswith(prefix)]
        yield from sorted(items)
