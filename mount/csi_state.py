"""What the node driver has mounted, kept on disk so a restarted driver carries on.

One cachefs mount per volume per node (under the state directory), bind-mounted into each
pod's target path. Secrets are not stored: a volume mount that still runs needs none, and one
that has to be started again gets them from the publish request that needs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from cachefs.fileutil import write_atomic


@dataclass(frozen=True)
class Target:
    volume_id: str
    readonly: bool
    subdir: str
    options: str  # mount options as given (volume_context and capability flags)


def _digest(volume_id: str) -> str:
    """A volume id as a file name (ids are free text)."""
    return hashlib.sha256(volume_id.encode()).hexdigest()[:16]


class Busy(Exception):
    """Another operation on the same target is in progress."""


class State:
    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "volumes"), mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(root, "logs"), mode=0o700, exist_ok=True)
        self.path = os.path.join(root, "state.json")
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._volume_locks: dict[str, threading.Lock] = {}
        self.targets: dict[str, Target] = {}
        self.volumes: dict[str, str] = {}  # volume id -> mountpoint of its cachefs mount
        self.ports: dict[str, int] = {}  # volume id -> port of its mount's cache group service
        try:
            with open(self.path) as f:
                data = json.load(f)
            self.targets = {p: Target(**t) for p, t in data.get("targets", {}).items()}
            self.volumes = dict(data.get("volumes", {}))
            self.ports = {v: int(p) for v, p in data.get("ports", {}).items()}
        except FileNotFoundError:
            pass

    def save(self) -> None:
        with self._lock:
            data = {"targets": {p: asdict(t) for p, t in self.targets.items()}, "volumes": self.volumes,
                    "ports": self.ports}
        write_atomic(self.path, json.dumps(data, indent=1).encode(), fsync=True)

    def group_port(self, volume_id: str, base: int) -> int:
        """The port of the volume's cache group service on this node: the first from base on
        that no other volume's mount holds, kept across restarts of the driver."""
        with self._lock:
            if volume_id not in self.ports:
                used = set(self.ports.values())
                self.ports[volume_id] = next(p for p in range(base, base + 10_000) if p not in used)
            return self.ports[volume_id]

    def mountpoint(self, volume_id: str) -> str:
        return os.path.join(self.root, "volumes", _digest(volume_id))

    def log_file(self, volume_id: str) -> str:
        return os.path.join(self.root, "logs", _digest(volume_id) + ".log")

    def targets_of(self, volume_id: str) -> list[str]:
        with self._lock:
            return [p for p, t in self.targets.items() if t.volume_id == volume_id]

    @contextlib.contextmanager
    def target(self, path: str) -> Iterator[None]:
        """One operation at a time per target path: a second one gets Busy (CSI: ABORTED)."""
        with self._lock:
            if path in self._busy:
                raise Busy(path)
            self._busy.add(path)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(path)

    def volume_lock(self, volume_id: str) -> threading.Lock:
        """Serialises starting and stopping one volume's cachefs mount."""
        with self._lock:
            return self._volume_locks.setdefault(volume_id, threading.Lock())
