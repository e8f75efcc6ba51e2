"""Sessions and what outlives an operation, shared by every engine: open-but-deleted inodes
kept for their handles, heartbeats and the cleanup of dead sessions, write-back's pending
slices, and the queues of background deletion (a part of BaseMeta)."""

from __future__ import annotations

import logging
import os
import time

from .records import Tx, deref, distinct, stored
from .types import PendingSlice, SessionInfo

log = logging.getLogger("cachefs.meta")


class Sessions:
    # ---- open files and sessions --------------------------------------------------------
    def close(self, ino: int) -> None:
        """The last handle of ino on this client closed: reclaim it if it lost all its names."""
        if ino not in self._sustaining:
            return  # only an inode this client kept alive can be waiting for this close
        self._sustaining.discard(ino)

        def fn(tx: Tx) -> None:
            attr = tx.get_attr(ino)
            if attr is None or attr.nlink > 0:
                return
            tx.del_sustained(self.sid, ino)
            self._delete_inode(tx, ino, attr)

        self._txn(fn)

    def keeps_alive(self, ino: int) -> bool:
        """Whether this client keeps the (unlinked) inode alive for its open handles."""
        return ino in self._sustaining

    def new_session(self, info: dict) -> int:
        self.sid = self._incr("nextSession", 1)
        info = dict(info, pid=os.getpid(), started=time.time())
        self._session_put(self.sid, self.now(), info)
        self._session_info = info
        return self.sid

    def update_session_info(self, **info: object) -> None:
        """Change what this session publishes (written at its next heartbeat)."""
        self._session_info.update(info)

    def heartbeat(self) -> None:
        """Tell the other clients this session is alive. A session that finds itself gone (taken
        for dead while this process was stopped or cut off) registers again, with the inodes
        its open handles keep alive."""
        if not self.sid:
            return
        if not self._session_put(self.sid, self.now(), self._session_info):
            self.release_ranges()
            return
        self._ranges_lost()
        log.error("session %d had been cleaned up by another client (this process was silent for "
                  "longer than the session timeout): registered it again", self.sid)
        kept = [ino for ino in list(self._sustaining) if self._keep_sustained(ino)]
        if len(kept) < len(self._sustaining):
            log.error("%d open but deleted file(s) of this session were reclaimed meanwhile; their "
                      "open handles read ENOENT", len(self._sustaining) - len(kept))

    def _keep_sustained(self, ino: int) -> bool:
        """Record again that this session keeps the unlinked inode alive (False: it is gone)."""

        def fn(tx: Tx) -> bool:
            if tx.get_attr(ino) is None:
                return False
            tx.add_sustained(self.sid, ino)
            return True

        return self._txn(fn)

    def sessions(self) -> list[SessionInfo]:
        return self._session_list()

    def clean_session(self, sid: int) -> int:
        """Release what a dead (or closing) session held; returns files reclaimed."""
        reclaimed = 0
        for ino in self._sustained(sid):

            def fn(tx: Tx, ino: int = ino) -> bool:
                attr = tx.get_attr(ino)
                tx.del_sustained(sid, ino)
                if attr is None or attr.nlink > 0:
                    return False
                self._delete_inode(tx, ino, attr)
                return True

            reclaimed += bool(self._txn(fn))
        for start, _end in self._range_list(sid):  # the caller removed their uncommitted objects
            self._range_drop(sid, start)
        self._session_del(sid)
        return reclaimed

    def clean_stale_sessions(self, timeout: float) -> list[int]:
        """Sessions that stopped heartbeating for `timeout` seconds, by the engine's clock, are
        cleaned by any client; not by one that itself could not reach the engine within the
        last `timeout` seconds (the others' heartbeats could not reach it either)."""
        cleaned = []
        for sid in self.stale_sessions(timeout):
            if not self.retry.settled(timeout):  # an outage since the listing
                break
            self.clean_session(sid)
            cleaned.append(sid)
        return cleaned

    def stale_sessions(self, timeout: float) -> list[int]:
        """Other sessions silent for `timeout` seconds by the engine's clock (none while this
        client has not been connected that long since an outage)."""
        if not self.retry.settled(timeout):
            return []
        sessions = self._session_list()
        cutoff = self.now() - timeout
        if not self.retry.settled(timeout):  # the listing itself waited out an outage
            return []
        return [s.sid for s in sessions if s.sid != self.sid and s.heartbeat < cutoff]

    def close_session(self) -> None:
        if self.sid:
            self.clean_session(self.sid)
            self.sid = 0

    # ---- write-back: slices committed before their blocks were uploaded -----------------------
    def pending_slices(self) -> list[PendingSlice]:
        """Every slice of the volume whose upload has not been confirmed, by any session
        (a dead session's stay listed until its node re-uploads them, or fsck reports them)."""
        return self._pending_list()

    def pending_done(self, ids: list[int]) -> None:
        """The blocks of these slices are all in the object store."""
        if ids:
            self._pending_done(ids)

    # ---- background deletion -------------------------------------------------------------
    def deleted_files(self, limit: int = 100) -> list[tuple[int, int]]:
        """(inode, length) of deleted files whose slices are still to be moved to the trash."""
        return self._delfiles(limit)

    def delete_file_data(self, ino: int, length: int) -> None:
        """Move every slice of a deleted file to the trash, chunk by chunk (only the chunks
        that hold data: a sparse file of any length costs what its data costs)."""
        for indx in self.chunk_indexes(ino):

            def fn(tx: Tx, indx: int = indx) -> None:
                slices = tx.get_slices(ino, indx)
                if slices:
                    tx.set_slices(ino, indx, [])
                    tx.add_usage(-stored(slices), 0)
                    deref(tx, distinct(slices))

            self._txn(fn)
        self._delfile_done(ino, length)

    def trash_batch(self, limit: int = 1000, min_age: float = 0.0) -> list[tuple[int, int]]:
        """(slice id, size) of slices nobody references, queued at least min_age seconds ago:
        their objects are to be deleted."""
        return self._trash(limit, time.time() - min_age)

    def trash_done(self, slices: list[tuple[int, int]]) -> None:
        self._trash_done(slices)


