"""The cachefs:// fsspec protocol: the entry point, the file-system calls, pandas/pyarrow and
torch.distributed.checkpoint's fsspec writer and reader on a cachefs:// URL."""

from __future__ import annotations

import warnings

import fsspec
import pytest

from cachefs.fsspec import CachefsFileSystem

pytestmark = pytest.mark.mount


@pytest.fixture
def fs(volumes):
    url = volumes.create("redis", "s3")
    fs = fsspec.filesystem("cachefs", meta_url=url, skip_instance_cache=True)
    try:
        yield fs
    finally:
        fs.client.close()
        # instances fsspec built itself (from URLs: pandas, the checkpoint writer) end with
        # the test, not at interpreter exit after their Redis is gone
        for other in list(CachefsFileSystem._cache.values()):
            other.client.close()
        CachefsFileSystem.clear_instance_cache()


def test_protocol_is_registered_through_the_entry_point():
    assert fsspec.get_filesystem_class("cachefs") is CachefsFileSystem


def test_file_system_calls(fs):
    url = fs.client.meta_url
    with fsspec.open("cachefs://data/a.bin", "wb", meta_url=url) as f:  # parents made, like s3
        f.write(b"0123456789" * 1000)
    assert fs.cat_file("/data/a.bin") == b"0123456789" * 1000
    assert fs.cat_file("cachefs://data/a.bin", 5, 15) == b"5678901234"
    assert fs.cat_file("cachefs:///data/a.bin", -4) == b"6789"
    fs.pipe_file("/data/b.txt", b"hello")
    with pytest.raises(FileExistsError):
        fs.pipe_file("/data/b.txt", b"again", mode="create")
    info = fs.info("/data/a.bin")
    assert info["type"] == "file" and info["size"] == 10_000 and info["name"] == "/data/a.bin"
    assert fs.info("/data")["type"] == "directory"
    listing = fs.ls("/data", detail=True)
    assert sorted((e["name"], e["size"]) for e in listing) == [("/data/a.bin", 10_000), ("/data/b.txt", 5)]
    assert sorted(fs.ls("/data", detail=False)) == ["/data/a.bin", "/data/b.txt"]
    assert fs.cat_ranges(["/data/a.bin", "/data/b.txt", "/data/a.bin"], [0, 1, 9990], [3, 3, 10_000]) == [
        b"012", b"el", b"0123456789"]
    bad = fs.cat_ranges(["/data/missing"], [0], [1])
    assert isinstance(bad[0], FileNotFoundError)
    # cp_file: a clone sharing the blocks (metadata only: no object written)
    objects = _object_count(fs)
    fs.cp_file("/data/a.bin", "/data/c.bin")
    assert fs.cat_file("/data/c.bin") == b"0123456789" * 1000
    assert _object_count(fs) == objects
    fs.mv("/data", "/moved")  # an atomic rename of the whole directory
    assert not fs.exists("/data") and sorted(fs.ls("/moved", detail=False)) == [
        "/moved/a.bin", "/moved/b.txt", "/moved/c.bin"]
    fs.makedirs("/x/y/z", exist_ok=True)
    fs.mkdir("/x/w")
    assert fs.isdir("/x/y/z") and fs.isdir("/x/w")
    fs.rm("/moved", recursive=True)
    fs.rm("/x", recursive=True)
    assert fs.ls("/", detail=False) == []
    with pytest.raises(FileNotFoundError):
        fs.info("/moved")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("/moved/a.bin")


def _object_count(fs) -> int:
    return sum(1 for _ in fs.client.volume.objects.list(""))


def test_pandas_csv_and_parquet_round_trip(fs):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    url = fs.client.meta_url
    df = pd.DataFrame({"id": range(10_000), "label": [f"class{i % 7}" for i in range(10_000)],
                       "score": [i / 3 for i in range(10_000)]})
    opts = {"meta_url": url}
    df.to_csv("cachefs://tables/t.csv", index=False, storage_options=opts)
    back = pd.read_csv("cachefs://tables/t.csv", storage_options=opts)
    pd.testing.assert_frame_equal(df, back)
    df.to_parquet("cachefs://tables/t.parquet", storage_options=opts)
    back = pd.read_parquet("cachefs://tables/t.parquet", storage_options=opts)
    pd.testing.assert_frame_equal(df, back)
    assert fs.info("/tables/t.parquet")["size"] > 0


def test_torch_distributed_checkpoint_fsspec_writer_and_reader(fs):
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    g = torch.Generator().manual_seed(3)
    sd = {f"w{i}": torch.randn(512, 1024, generator=g) for i in range(6)}  # 12 MiB
    sd["step"] = torch.tensor(1234)
    url = fs.client.meta_url
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": a single-process save is what we want
        dcp.save(sd, storage_writer=FsspecWriter("cachefs://ckpt/step1", meta_url=url))
        target = {k: torch.zeros_like(v) for k, v in sd.items()}
        dcp.load(target, storage_reader=FsspecReader("cachefs://ckpt/step1", meta_url=url))
    for k in sd:
        assert torch.equal(sd[k], target[k]), k
    assert "/ckpt/step1/.metadata" in fs.ls("/ckpt/step1", detail=False)
