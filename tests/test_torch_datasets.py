"""cachefs.torch: map and iterable datasets over a prefix with DataLoader workers (forked and
spawned), sharding, and the save/load checkpoint helpers."""

from __future__ import annotations

import hashlib
import os

import pytest

from cachefs import Client

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from cachefs.torch import IterableDataset, MapDataset, load, save  # noqa: E402

pytestmark = pytest.mark.mount


def _as_list(batch: list) -> list:
    return batch


def _digest(item) -> tuple[str, str]:
    return item.key, hashlib.sha256(item.read()).hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A volume with 60 files of ~110 KB under /train (and one file beside the prefix)."""
    from .conftest import run_cli
    from .servers import RedisServer, S3Server

    redis, s3 = RedisServer(), S3Server()
    try:
        url = redis.url()
        run_cli("format", url, "ds", "--storage", "s3", "--bucket", s3.bucket_url("dataset"))
        expected = {}
        with Client(url) as c:
            c.makedirs("/train/sub")
            for i in range(60):
                data = os.urandom(110_000 + i)
                path = f"/train/{'sub/' if i % 5 == 0 else ''}img{i:03d}.jpg"
                c.write_bytes(path, data)
                expected[path] = hashlib.sha256(data).hexdigest()
            c.write_bytes("/other.txt", b"not in the prefix")
        yield url, expected
    finally:
        from cachefs import client as client_module

        for c in list(client_module._CLIENTS):  # a failed test's clients end before their Redis
            c.close()
        redis.stop()
        s3.stop()


def test_map_dataset_with_forked_workers_reads_every_item_once(dataset):
    url, expected = dataset
    ds = MapDataset.from_prefix("cachefs://train/", meta_url=url, transform=_digest)
    assert len(ds) == len(expected)
    assert ds[3] == (ds.paths[3], expected[ds.paths[3]])
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, collate_fn=_as_list)
    got = [item for batch in loader for item in batch]
    assert sorted(got) == sorted(expected.items())
    ds.client.close()


def test_iterable_dataset_shards_across_workers_and_ranks(dataset, monkeypatch):
    url, expected = dataset
    ds = IterableDataset.from_prefix("cachefs://train/img0", meta_url=url, transform=_digest)
    assert ds.paths == sorted(k for k in expected if k.startswith("/train/img0"))  # a path prefix
    ds.client.close()
    ds = IterableDataset.from_prefix("cachefs://train", meta_url=url, transform=_digest)
    got = [tuple(x) for x in DataLoader(ds, batch_size=None, num_workers=3)]
    assert sorted(got) == sorted(expected.items())  # each item exactly once across the workers
    # two distributed ranks: disjoint halves that together are everything
    halves = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        halves.append({k for k, _ in ds})
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(expected)
    ds.client.close()


def test_spawned_workers_get_the_dataset_pickled(dataset):
    url, expected = dataset
    ds = MapDataset.from_prefix("cachefs://train/sub", meta_url=url, transform=_digest)
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn", collate_fn=_as_list)
    got = [item for batch in loader for item in batch]
    assert sorted(got) == sorted((k, v) for k, v in expected.items() if k.startswith("/train/sub/"))
    ds.client.close()


def test_save_and_load_a_checkpoint(dataset, tmp_path):
    url, _ = dataset
    g = torch.Generator().manual_seed(7)
    sd = {"w": torch.randn(256, 1024, generator=g), "step": 99}
    save(sd, "cachefs://ckpt/model.pt", meta_url=url)
    back = load("cachefs://ckpt/model.pt", meta_url=url, weights_only=True)
    assert torch.equal(back["w"], sd["w"]) and back["step"] == 99
    # through a write-back client: returns once staged, flush() waits for the upload
    with Client(url, writeback=True, cache_dir=str(tmp_path / "wb"), cache_size=1 << 30) as c:
        save(sd, "/ckpt/wb.pt", client=c)
        assert c.flush(30) == []
    back = load("/ckpt/wb.pt", meta_url=url, weights_only=True)
    assert torch.equal(back["w"], sd["w"])
    with pytest.raises(FileNotFoundError):
        load("cachefs://ckpt/missing.pt", meta_url=url)
