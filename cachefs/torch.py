"""PyTorch datasets and checkpoint helpers over cachefs.Client (torch is imported here only;
install it with the `torch` extra).

    ds = MapDataset.from_prefix("cachefs://imagenet/train/", meta_url=..., transform=decode)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=8, shuffle=True)

Like s3torchconnector's datasets, `transform` receives a readable file object (`.key` is its
path in the volume, `.read()` its bytes) and returns the item. An IterableDataset shards its
items across DataLoader workers and distributed ranks; both datasets fetch the next items'
blocks in the background while the current one is transformed. Each worker process gets its
own client (pickled, or rebuilt after fork).
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
import torch.utils.data

from .client import Client

PREFETCH = 8  # items whose bytes are fetched ahead of the one being transformed


class Item(io.BytesIO):
    """One item's bytes as a readable file object, with its path as .key (and .path)."""

    def __init__(self, key: str, data: bytes) -> None:
        super().__init__(data)
        self.key = self.path = key


def _split(url: str) -> str:
    return "/" + url.removeprefix("cachefs://").strip("/")


def _identity(item: Item) -> Item:
    return item


def list_prefix(client: Client, prefix: str) -> list[str]:
    """Every file under prefix (a directory, or a path prefix within one), sorted."""
    path = _split(prefix)
    if client.isdir(path):
        base, start = path, ""
    else:
        base, _, start = path.rpartition("/")
        base = base or "/"
    out = []
    for d, _dirs, files in client.walk(base):
        for f in files:
            full = f"{d.rstrip('/')}/{f}"
            if full.startswith(f"{base.rstrip('/')}/{start}"):
                out.append(full)
    return sorted(out)


class _Fetcher:
    """Reads items' bytes in a background pool, ahead of use and in parallel (per process: the
    pool is made at first use, so a pickled or forked dataset makes its own)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: OrderedDict[str, Future] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = 0

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():
            self._pool, self._pid = ThreadPoolExecutor(PREFETCH, thread_name_prefix="prefetch"), os.getpid()
            self._ahead.clear()
        return self._pool

    def _submit(self, path: str) -> Future:
        return self._executor().submit(self.client.read_bytes, path)

    def get(self, path: str, then: list[str]) -> bytes:
        """path's bytes, and the fetch of `then` (the items expected next) started."""
        with self._lock:
            fut = self._ahead.pop(path, None)
            for p in then:
                if p not in self._ahead:
                    self._ahead[p] = self._submit(p)
            while len(self._ahead) > 4 * PREFETCH:  # guesses that were not used
                self._ahead.popitem(last=False)[1].cancel()
        return fut.result() if fut is not None else self.client.read_bytes(path)

    def get_many(self, paths: list[str]) -> list[bytes]:
        """A batch's items: opened in one metadata round trip, read in parallel."""
        with self._lock:
            ahead = {p: self._ahead.pop(p) for p in paths if p in self._ahead}
            pool = self._executor()
        rest = list(dict.fromkeys(p for p in paths if p not in ahead))
        got = dict(zip(rest, self.client.read_many(rest, pool), strict=True)) if rest else {}
        return [got[p] if p in got else ahead[p].result() for p in paths]

    def __getstate__(self) -> dict:
        return {"client": self.client}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["client"])


class MapDataset(torch.utils.data.Dataset):
    """Items by index; a DataLoader's batches (`__getitems__`) are fetched in parallel, and a
    sequential reader's next items ahead of use."""

    def __init__(self, client: Client, paths: list[str], transform: Callable[[Item], Any] = _identity) -> None:
        self.client, self.paths, self.transform = client, paths, transform
        self._fetcher = _Fetcher(client)
        self._last = -2

    @classmethod
    def from_prefix(cls, prefix: str, meta_url: str | None = None, transform: Callable[[Item], Any] = _identity,
                    client: Client | None = None, **options: Any) -> MapDataset:
        client = client or Client(meta_url, **options)
        return cls(client, list_prefix(client, prefix), transform)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        path = self.paths[i]
        sequential, self._last = i == self._last + 1, i
        data = self._fetcher.get(path, self.paths[i + 1 : i + 1 + PREFETCH] if sequential else [])
        return self.transform(Item(path, data))

    def __getitems__(self, indices: list[int]) -> list[Any]:
        paths = [self.paths[i] for i in indices]
        return [self.transform(Item(p, d)) for p, d in zip(paths, self._fetcher.get_many(paths), strict=True)]


class IterableDataset(torch.utils.data.IterableDataset):
    """Items in order, each DataLoader worker and distributed rank taking every n-th; the next
    items are fetched while the current one is transformed."""

    def __init__(self, client: Client, paths: list[str], transform: Callable[[Item], Any] = _identity) -> None:
        self.client, self.paths, self.transform = client, paths, transform
        self._fetcher = _Fetcher(client)

    @classmethod
    def from_prefix(cls, prefix: str, meta_url: str | None = None, transform: Callable[[Item], Any] = _identity,
                    client: Client | None = None, **options: Any) -> IterableDataset:
        client = client or Client(meta_url, **options)
        return cls(client, list_prefix(client, prefix), transform)

    def _shard(self) -> list[str]:
        """This worker's and this rank's items: every n-th."""
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.paths[rank * workers + worker :: world * workers]

    def __iter__(self) -> Iterator[Any]:
        mine = self._shard()
        for i, path in enumerate(mine):
            data = self._fetcher.get(path, mine[i + 1 : i + 1 + PREFETCH])
            yield self.transform(Item(path, data))


@contextmanager
def _client(client: Client | None, meta_url: str | None, options: dict) -> Iterator[Client]:
    """The caller's client, or one for this call only (closed after it)."""
    if client is not None:
        yield client
        return
    own = Client(meta_url, **options)
    try:
        yield own
    finally:
        own.close()


def save(obj: Any, url: str, client: Client | None = None, meta_url: str | None = None, **options: Any) -> None:
    """torch.save into the volume (write-back when the client is: returns once the checkpoint is
    durable on this node, uploads continue behind; client.flush() waits for them). Missing
    parent directories are created, as checkpoint writers for object stores let callers expect."""
    path = _split(url)
    with _client(client, meta_url, options) as c:
        parent = os.path.dirname(path)
        if parent not in ("", "/"):
            c.makedirs(parent, exist_ok=True)
        with c.open(path, "wb") as f:
            torch.save(obj, f)


def load(url: str, client: Client | None = None, meta_url: str | None = None, **kwargs: Any) -> Any:
    """torch.load from the volume (kwargs go to torch.load, e.g. map_location, weights_only)."""
    with _client(client, meta_url, {}) as c, c.open(_split(url), "rb") as f:
        return torch.load(f, **kwargs)


__all__ = ["MapDataset", "IterableDataset", "Item", "save", "load", "list_prefix"]
