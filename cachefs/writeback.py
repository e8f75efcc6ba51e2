"""Write-back: staged blocks uploaded in the background, and what each slice still waits for.

Crash states and their recovery:
- a *staged block* of a slice that was never committed (killed before close returned): no
  pending record names it, so `recover()` deletes it;
- a *pending slice* (committed with its blocks in staging): `recover()` uploads its staged
  blocks before the mount reports ready, then clears the record;
- uploaded but not yet confirmed (killed between the last PUT and clearing the record): the
  same path uploads it again, which is harmless since blocks are immutable.
A slice leaves staging only after its record is cleared, so a record always has its files
(unless the disk itself is lost: then readers get EIO after --pending-timeout and fsck names
the files).
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cachefs.meta.types import Attr

from .block import Buffer
from .durability import BlockKey, Commit, WriteThrough
from .errors import FSError, ObjectError, ObjectUnavailable
from .metrics import Metrics
from .objects import ObjectStore
from .staging import Staging

log = logging.getLogger("cachefs.writeback")

RETRY_MAX = 10.0  # seconds between attempts while the object store stays down
QUIET = 0.3  # a writer that staged nothing for this long has paused: uploads go ahead
PERMANENT_RETRY = 10.0  # a rejected upload is tried again this often (a fixed bucket resumes)


@dataclass
class _Slice:
    ino: int
    left: dict[int, int] = field(default_factory=dict)  # index -> length, staged and not uploaded
    staged: dict[int, int] = field(default_factory=dict)  # index -> length, every staged block
    recorded: bool = False  # named as pending in the commit: its record must be cleared
    committed: bool = False
    abandoned: bool = False
    error: Exception | None = None


class WriteBack:
    """The write-back protocol, stage -> sync -> commit with pending records -> upload ->
    confirm, in one place (the `durability.Durability` interface). Thread-safe.

    `confirm(ids)` clears the pending records of fully uploaded slices (the metadata engine's
    `pending_done`); it is retried until it succeeds. A block that finds no room in staging is
    written through (`through`)."""

    def __init__(self, objects: ObjectStore, staging: Staging, through: WriteThrough, key: BlockKey,
                 confirm: Callable[[list[int]], None], max_uploads: int, metrics: Metrics,
                 defer: float = 30.0, fsync_remote: bool = False) -> None:
        self.objects = objects
        self.staging = staging
        self.through = through
        self.key = key
        self.confirm = confirm
        self.metrics = metrics
        self.fsync_remote = fsync_remote  # fsync waits for the upload, not only for staging
        self._slices: dict[int, _Slice] = {}
        self._failing = 0  # slices in _slices whose last upload failed
        self._cond = threading.Condition()
        self._queue: queue.Queue[tuple[int, int, int, float] | None] = queue.Queue()
        self._unconfirmed: list[int] = []
        # Uploads give way to a writer that is staging blocks (a torch.save in progress): on a
        # small machine they compete for the same CPU (and the GIL) and would double the time the
        # writer is blocked. They wait at most `defer` seconds, not at all once staging is half
        # full, and not while someone waits for durability (flush, fsync with --fsync=remote).
        self.defer = defer
        self._last_stage = 0.0
        self._waiters = 0
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._work, name=f"wb-upload-{i}", daemon=True)
                         for i in range(max(1, max_uploads))]
        for t in self._workers:
            t.start()
        self._confirmer = threading.Thread(target=self._confirm_loop, name="wb-confirm", daemon=True)
        self._confirmer.start()

    # ---- the write path -------------------------------------------------------------------
    def store(self, slice_id: int, ino: int, index: int, length: int, encoded: tuple[Buffer, ...],
              plain: Sequence[Buffer]) -> None:
        """Stage a block durably and queue its upload; without room in staging, write it
        through (never fail a write that could succeed)."""
        if not self.stage(slice_id, ino, index, length, encoded):
            self.metrics.staging_fallbacks.inc()
            self.through.store(slice_id, ino, index, length, encoded, plain)

    def commit(self, ino: int, slice_ids: list[int], write: Commit) -> Attr:
        """The slices with staged blocks not yet uploaded are recorded as pending by the same
        transaction; their staged names are made durable first, so a crash after the commit
        always finds them."""
        staged = self.outstanding(slice_ids)
        if staged:
            self.staging.sync()
        attr = write(staged)
        self.committed(slice_ids)
        return attr

    def fsync(self, ino: int) -> None:
        if self.fsync_remote:
            self.wait(ino)

    def stage(self, slice_id: int, ino: int, index: int, length: int, encoded: tuple[Buffer, ...]) -> bool:
        """Stage one stored block (given as parts: header, payload) and queue its upload; False
        when staging has no room."""
        with self._cond:
            s = self._slices.setdefault(slice_id, _Slice(ino))
        if not self.staging.put(slice_id, index, length, encoded):
            return False
        with self._cond:
            s.left[index] = length
            s.staged[index] = length
            self._last_stage = time.monotonic()
        self._queue.put((slice_id, index, length, self._last_stage))
        return True

    def outstanding(self, ids: Iterable[int]) -> list[int]:
        """Those of ids with staged blocks not yet uploaded: the commit records them as pending."""
        with self._cond:
            out = [i for i in ids if (s := self._slices.get(i)) is not None and s.left]
            for i in out:
                self._slices[i].recorded = True
            return out

    def committed(self, ids: Iterable[int]) -> None:
        """The slices are in the metadata engine now (as pending when outstanding() said so)."""
        with self._cond:
            for i in ids:
                s = self._slices.get(i)
                if s is None:
                    continue
                s.committed = True
                if not s.left:  # uploaded already (maybe between outstanding() and the commit)
                    self._finish(i, s)

    def abandon(self, ids: Iterable[int]) -> None:
        """Slices that will never be committed: forget their staged blocks."""
        with self._cond:
            for i in ids:
                s = self._slices.pop(i, None)
                if s is not None:
                    self._set_error(s, None)
                    s.abandoned = True
                    for index, length in s.staged.items():
                        self.staging.remove(i, index, length)
            self._cond.notify_all()

    # ---- uploading ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            slice_id, index, length, queued = item
            if self.defer > 0:
                self._give_way(queued)
            self._upload(slice_id, index, length)

    def _give_way(self, queued: float) -> None:
        """Wait while a writer is busy staging (see __init__), at most until queued + defer."""
        with self._cond:
            while not self._stop.is_set() and not self._waiters:
                now = time.monotonic()
                if (now - self._last_stage >= QUIET or now - queued >= self.defer
                        or self.staging.used * 2 >= self.staging.limit):
                    return
                self._cond.wait(min(QUIET, max(0.01, QUIET - (now - self._last_stage))))

    def _upload(self, slice_id: int, index: int, length: int) -> None:
        delay = 0.5
        while not self._stop.is_set():
            with self._cond:
                s = self._slices.get(slice_id)
                if s is None or s.abandoned or index not in s.left:
                    return
            data = self.staging.get(slice_id, index, length)
            if data is None:
                log.error("staged block %d_%d_%d vanished before its upload", slice_id, index, length)
                err: Exception = ObjectError(f"staged block {slice_id}_{index}_{length} was lost")
                self._failed(s, err)
                return
            try:
                self.metrics.uploads_queued.inc()
                try:
                    self.objects.put(self.key(slice_id, index, length), data)
                finally:
                    self.metrics.uploads_queued.dec()
            except ObjectUnavailable as e:
                self.metrics.upload_failures.labels("transient").inc()
                log.warning("upload of %d_%d_%d failed, retrying: %s", slice_id, index, length, e)
                self._stop.wait(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            except Exception as e:  # rejected: report it on the file, keep the block, try later
                self.metrics.upload_failures.labels("permanent").inc()
                log.error("upload of %d_%d_%d rejected: %s", slice_id, index, length, e)
                self._failed(s, e)
                self._stop.wait(PERMANENT_RETRY)
                continue
            with self._cond:
                self._set_error(s, None)
                s.left.pop(index, None)
                if not s.left and s.committed and not s.abandoned:
                    self._finish(slice_id, s)
                self._cond.notify_all()
            return

    def _failed(self, s: _Slice, e: Exception) -> None:
        with self._cond:
            self._set_error(s, e)
            self._cond.notify_all()

    def _set_error(self, s: _Slice, e: Exception | None) -> None:
        """(caller holds the lock) counted, so that error_of, asked at every flush and close,
        looks through the pending slices only when one of them has failed."""
        if not s.abandoned:  # (an upload that was running when its slice was abandoned)
            self._failing += (e is not None) - (s.error is not None)
        s.error = e

    def _finish(self, slice_id: int, s: _Slice) -> None:
        """All blocks of a committed slice are uploaded (caller holds the lock): its pending
        record, if the commit wrote one, is cleared before its staged files go."""
        if s.recorded:
            self._unconfirmed.append(slice_id)
        else:
            self._drop(slice_id, s)
        self._cond.notify_all()

    def _drop(self, slice_id: int, s: _Slice) -> None:
        if self._slices.pop(slice_id, None) is not None:
            self._set_error(s, None)
        for index, length in s.staged.items():
            self.staging.remove(slice_id, index, length)

    def _confirm_loop(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            with self._cond:
                while not self._unconfirmed and not self._stop.is_set():
                    self._cond.wait(1.0)
                ids = list(self._unconfirmed)
            if not ids:
                continue
            try:
                self.confirm(ids)
            except Exception as e:  # the metadata engine is away: the records stay, try again
                log.warning("could not clear %d pending records: %s", len(ids), e)
                self._stop.wait(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            delay = 0.2
            with self._cond:
                for i in ids:
                    self._unconfirmed.remove(i)
                    s = self._slices.get(i)
                    if s is not None:
                        self._drop(i, s)
                self._cond.notify_all()

    # ---- waiting -----------------------------------------------------------------------------
    def _busy(self, ids: set[int] | None, ino: int | None) -> list[int]:
        return [i for i, s in self._slices.items()
                if s.committed and (ids is None or i in ids) and (ino is None or s.ino == ino)]

    def wait(self, ino: int | None = None, timeout: float | None = None) -> list[tuple[int, int]]:
        """Wait until the committed slices known now (of ino, or all) are uploaded and confirmed;
        returns what is still pending at the deadline as (inode, bytes) pairs."""
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        with self._cond:
            ids = set(self._busy(None, ino))
            self._waiters += 1
            self._cond.notify_all()
            try:
                return self._wait(ids, ino, start, deadline)
            finally:
                self._waiters -= 1

    def _wait(self, ids: set[int], ino: int | None, start: float, deadline: float | None) -> list[tuple[int, int]]:
        """The loop of wait() (caller holds the lock)."""
        while True:
            left = self._busy(ids, ino)
            if not left:
                return []
            errors = [self._slices[i].error for i in left if self._slices[i].error]
            if ino is not None and errors:
                raise FSError(errno.EIO, f"upload failed: {errors[0]}")
            if len(errors) == len(left) and time.monotonic() - start > 1.5 * PERMANENT_RETRY:
                return self._describe(left)  # still rejected after a retry: waiting will not help
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return self._describe(left)
            self._cond.wait(0.5 if remaining is None else min(0.5, remaining))

    def _describe(self, ids: list[int]) -> list[tuple[int, int]]:
        by_ino: dict[int, int] = {}
        for i in ids:
            s = self._slices[i]
            by_ino[s.ino] = by_ino.get(s.ino, 0) + sum(s.left.values())
        return sorted(by_ino.items())

    def error_of(self, ino: int) -> Exception | None:
        """The upload error of one of ino's slices, if any: it makes fsync/flush/close fail."""
        with self._cond:
            if not self._failing:
                return None
            for s in self._slices.values():
                if s.ino == ino and s.error is not None:
                    return s.error
        return None

    # ---- recovery ------------------------------------------------------------------------------
    def recover(self, pending: dict[int, int], timeout: float | None = None) -> tuple[int, int]:
        """Upload what a previous run left in staging for the pending slices {id: ino}, and
        delete staged blocks no record names. Returns (slices, blocks) uploaded; raises
        ObjectError when they cannot all be uploaded within timeout."""
        blocks = self.staging.blocks()
        slices: set[int] = set()
        n_blocks = 0
        with self._cond:
            for slice_id, index, length in blocks:
                if slice_id not in pending:
                    self.staging.remove(slice_id, index, length)
                    continue
                s = self._slices.setdefault(slice_id, _Slice(pending[slice_id], recorded=True, committed=True))
                s.left[index] = length
                s.staged[index] = length
                slices.add(slice_id)
                n_blocks += 1
                self._queue.put((slice_id, index, length, time.monotonic()))
        if not slices:
            return 0, 0
        left = self.wait(None, timeout)
        if left:
            with self._cond:
                err = next((s.error for s in self._slices.values() if s.error), None)
            raise ObjectError(f"could not upload {len(left)} staged file(s) left by the last run"
                              + (f": {err}" if err else " in time"))
        return len(slices), n_blocks

    def close(self) -> None:
        """Stop uploading; what is left stays in staging for the next run."""
        self._stop.set()
        for _ in self._workers:
            self._queue.put(None)
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + 5  # an upload in flight is abandoned: its block stays staged
        for t in [*self._workers, self._confirmer]:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self.staging.close()


__all__ = ["WriteBack"]
