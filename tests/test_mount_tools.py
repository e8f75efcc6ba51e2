"""Commands that work on a mounted volume: info, clone; and deletion reaching the object store."""

from __future__ import annotations

import os
import time

import pytest

from .conftest import run_cli, wait_for

pytestmark = pytest.mark.mount


def objects(root: str) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def test_info_clone_and_background_deletion(volumes, mounts, tmp_path):
    url = volumes.create("sqlite", "file", name="vi")
    store = str(tmp_path / "objects-vi")
    mp = mounts.mount(url)
    data = os.urandom(9 << 20)
    with open(os.path.join(mp, "f"), "wb") as f:
        f.write(data)
    info = run_cli("info", os.path.join(mp, "f")).stdout
    assert f"size: {len(data)}" in info and "vi/chunks/" in info
    keys = [line.strip() for line in info.splitlines() if "/chunks/" in line]
    assert len(keys) == 3 and all(os.path.exists(os.path.join(store, k)) for k in keys)

    run_cli("clone", os.path.join(mp, "f"), os.path.join(mp, "g"))
    assert open(os.path.join(mp, "g"), "rb").read() == data
    assert objects(store) == {os.path.join(store, k) for k in keys}  # no data copied
    res = run_cli("clone", os.path.join(mp, "f"), os.path.join(mp, "g"), check=False)
    assert res.returncode == 1 and "File exists" in res.stderr

    os.unlink(os.path.join(mp, "f"))
    time.sleep(2)  # the mount's background jobs run with --trash-delay 0
    assert open(os.path.join(mp, "g"), "rb").read() == data
    os.unlink(os.path.join(mp, "g"))
    wait_for(lambda: not objects(store), timeout=15)
