"""The side-by-side benchmark runs from a checkout (tiny sizes; JuiceFS left to the full run)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.mount
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_smoke():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "compare.py"), "--size", "16",
                          "--small-files", "30", "--runtime", "1", "--targets", "local,memfs,cachefs",
                          "--no-results"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    table = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| job | unit | local dir | Python FUSE ceiling | cachefs |")
    rows = {line.split("|")[1].strip(): line for line in table[1:]}
    for job in ("seq write", "seq read cold", "seq read warm", "rand read 4k warm", "small create", "stat"):
        cells = [c.strip() for c in rows[job].split("|")[3:6]]
        assert all(c != "-" and float(c) > 0 for c in cells), rows[job]
    assert "failed" not in res.stdout
