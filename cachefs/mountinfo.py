"""What is mounted where, read from /proc/self/mountinfo: the CLI, the mount process and the CSI
driver ask it without importing the FUSE shell, and without touching a mountpoint (which may
be a dead mount, or our own)."""

from __future__ import annotations

import os


def mount_device(path: str) -> str | None:
    """The "major:minor" of the mount at path (already resolved), from mountinfo; None when
    nothing is mounted there."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                mp = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
                if mp == path:
                    return fields[2]
    except OSError:
        pass
    return None


def is_mounted(path: str) -> bool:
    return mount_device(os.path.realpath(path)) is not None
