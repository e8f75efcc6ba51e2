"""PyTorch checkpoints on a write-back mount: torch.save and torch.distributed.checkpoint, read
back here, from a second mount after `cachefs flush`, and after a SIGKILL and a remount."""

from __future__ import annotations

import os
import warnings

import pytest

from .conftest import kill, pending_of, run_cli, s3_volume

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

pytestmark = pytest.mark.mount
FAST = ("--attr-cache", "0.2", "--entry-cache", "0.2", "--dir-entry-cache", "0.2")


def state_dict(seed: int) -> dict:
    """About 256 MiB: 16 float32 tensors of 16 MiB, plus small ones and an integer step."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"layers.{i}.weight": torch.randn(1024, 4096, generator=g) for i in range(16)}
    sd["layers.0.bias"] = torch.randn(4096, generator=g)
    sd["embed.index"] = torch.arange(1000, dtype=torch.int64)
    return sd


def assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def dcp_save(sd: dict, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": a single-process save is what we want
        dcp.save(sd, storage_writer=dcp.FileSystemWriter(path))


def dcp_load(template: dict, path: str) -> dict:
    target = {k: torch.zeros_like(v) for k, v in template.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(target, storage_reader=dcp.FileSystemReader(path))
    return target


@pytest.fixture(scope="module")
def sd():
    return state_dict(1)


def test_torch_save_and_dcp_on_writeback_then_second_mount(volumes, mounts, sd):
    url = volumes.create("sqlite", "file")
    a = mounts.mount(url, "--writeback", *FAST)
    torch.save(sd, os.path.join(a, "model.pt"))
    assert_equal(sd, torch.load(os.path.join(a, "model.pt")))
    dcp_save(sd, os.path.join(a, "dcp"))
    names = sorted(os.listdir(os.path.join(a, "dcp")))
    assert ".metadata" in names and not any(n.endswith(".tmp") for n in names)
    assert run_cli("flush", a).returncode == 0
    assert pending_of(url) == 0
    b = mounts.mount(url, *FAST)
    assert_equal(sd, torch.load(os.path.join(b, "model.pt")))
    assert_equal(sd, dcp_load(sd, os.path.join(b, "dcp")))


def test_checkpoint_survives_sigkill_and_remount(volumes, mounts, own_s3, tmp_path, sd):
    url = s3_volume(volumes, own_s3)
    cache = str(tmp_path / "cache-a")
    a = mounts.mount(url, "--writeback", "--cache-dir", cache, *FAST)
    own_s3.pause()  # nothing can be uploaded: after the kill, staging holds the only copy
    try:
        torch.save(sd, os.path.join(a, "model.pt"))
        dcp_save(sd, os.path.join(a, "dcp"))
        kill(mounts, a)
    finally:
        own_s3.resume()
    assert pending_of(url) > 256 << 20
    a = mounts.mount(url, "--writeback", "--cache-dir", cache, *FAST)
    assert pending_of(url) == 0
    assert_equal(sd, torch.load(os.path.join(a, "model.pt")))
    b = mounts.mount(url, *FAST)
    assert_equal(sd, torch.load(os.path.join(b, "model.pt")))
    assert_equal(sd, dcp_load(sd, os.path.join(b, "dcp")))
