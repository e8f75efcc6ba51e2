"""Reads of local files that the FUSE shell's event loop waits for without a thread: a small
io_uring (Linux 5.6+) driven through its system calls, its completions announced on an eventfd
the loop watches.

Why: a disk-cache read whose pages are not resident used to go to a worker thread, and with
several readers that hop cost more than the read (the trio thread and the worker hand the GIL
to each other at every system call either makes: ~9 context switches per hop). Submitted here,
the read costs one io_uring_enter, and the loop serves other requests until it is done.

Only the trio thread uses a ring. Buffers stay referenced until their completion arrives, even
when the waiting task is gone. Where io_uring is missing or refused (an old kernel, a seccomp
profile, kernel.io_uring_disabled), `Ring.open` answers None and reads take a thread as before.
x86-64 only: the ring's shared memory is written with plain stores, which that architecture
keeps in order.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import platform
import struct
from typing import Any

import outcome
import trio

log = logging.getLogger("cachefs.fuse")

_SETUP, _ENTER, _REGISTER = 425, 426, 427  # x86-64 system call numbers
_OFF_SQ_RING, _OFF_CQ_RING, _OFF_SQES = 0, 0x8000000, 0x10000000
_OP_READ = 22
_REGISTER_EVENTFD = 4
_PARAMS = struct.Struct("<7I3I8IQ8IQ")  # io_uring_params (120 bytes): 7 fields, resv, sq_off, cq_off
_SQE = struct.Struct("<BBHiQQIIQHHiQQ")  # io_uring_sqe: 64 bytes
_CQE = struct.Struct("<QiI")  # io_uring_cqe: 16 bytes
_U32 = struct.Struct("<I")

_libc: Any = None


def _syscall(*args: int | Any) -> int:
    res = _libc.syscall(*args)
    if res < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return res


def _no_abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED  # the kernel writes into the buffer whatever happens


class Ring:
    """One io_uring with `entries` submission slots; `read` is awaited in the trio thread."""

    def __init__(self, fd: int, params: tuple, entries: int) -> None:
        self.fd = fd
        self.entries = entries
        sq_entries, cq_entries = params[0], params[1]
        sq_off, cq_off = params[10:19], params[19:28]
        self._sq_head, self._sq_tail, self._sq_mask, _, _, _, self._sq_array = sq_off[:7]
        self._cq_head, self._cq_tail, self._cq_mask, _, _, self._cqes = cq_off[:6]
        self.sq = mmap.mmap(fd, self._sq_array + sq_entries * 4, offset=_OFF_SQ_RING)
        self.cq = mmap.mmap(fd, self._cqes + cq_entries * _CQE.size, offset=_OFF_CQ_RING)
        self.sqes = mmap.mmap(fd, sq_entries * _SQE.size, offset=_OFF_SQES)
        self.mask = _U32.unpack_from(self.sq, self._sq_mask)[0]
        self.cmask = _U32.unpack_from(self.cq, self._cq_mask)[0]
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        arg = ctypes.c_int(self.efd)
        _syscall(_REGISTER, fd, _REGISTER_EVENTFD, ctypes.byref(arg), 1)
        self._pending: dict[int, tuple[trio.lowlevel.Task | None, bytearray]] = {}  # tag -> waiter, buffer
        self._next = 1
        self.closed = False

    @classmethod
    def open(cls, entries: int = 128) -> Ring | None:
        """A ring, or None where io_uring cannot be used (then reads take a thread)."""
        global _libc
        if platform.machine() != "x86_64":
            return None
        try:
            if _libc is None:
                _libc = ctypes.CDLL(None, use_errno=True)
            params = ctypes.create_string_buffer(_PARAMS.size)
            fd = _syscall(_SETUP, entries, params)
        except (OSError, AttributeError) as e:
            log.info("io_uring unavailable (%s): disk-cache reads that miss the page cache take a thread", e)
            return None
        try:
            return cls(fd, _PARAMS.unpack(params.raw), entries)
        except (OSError, ValueError) as e:
            os.close(fd)
            log.info("io_uring unavailable (%s): disk-cache reads that miss the page cache take a thread", e)
            return None

    def inflight(self) -> int:
        """Reads submitted and not yet completed."""
        return len(self._pending)

    def busy(self) -> bool:
        """Every submission slot taken: the caller takes a thread instead."""
        return len(self._pending) >= self.entries

    async def read(self, fd: int, n: int, offset: int) -> bytearray:
        """n bytes of fd at offset (fewer at its end), or OSError."""
        if self.closed or self.busy():
            raise OSError(errno.EAGAIN, "io_uring busy")
        buf = bytearray(n)
        addr = ctypes.addressof((ctypes.c_char * n).from_buffer(buf)) if n else 0
        tag = self._next
        self._next += 1
        tail = _U32.unpack_from(self.sq, self._sq_tail)[0]
        slot = tail & self.mask
        _SQE.pack_into(self.sqes, slot * _SQE.size, _OP_READ, 0, 0, fd, offset, addr, n, 0, tag, 0, 0, 0, 0, 0)
        _U32.pack_into(self.sq, self._sq_array + slot * 4, slot)
        _U32.pack_into(self.sq, self._sq_tail, (tail + 1) & 0xFFFFFFFF)
        self._pending[tag] = (trio.lowlevel.current_task(), buf)
        waiting = (tail + 1 - _U32.unpack_from(self.sq, self._sq_head)[0]) & 0xFFFFFFFF
        try:
            _syscall(_ENTER, self.fd, waiting, 0, 0, None, 0)  # (with any an earlier enter left)
        except OSError:
            # the entry stays in the ring and a later enter submits it: its buffer stays
            # referenced until its completion arrives, with no one waiting for it
            self._pending[tag] = (None, buf)
            raise
        res = await trio.lowlevel.wait_task_rescheduled(_no_abort)
        if res < 0:
            raise OSError(-res, os.strerror(-res))
        del buf[res:]
        return buf

    async def reap(self) -> None:
        """Hand each completion to the task that waits for it; runs for the loop's lifetime."""
        while not self.closed:
            await trio.lowlevel.wait_readable(self.efd)
            try:
                os.eventfd_read(self.efd)
            except BlockingIOError:
                pass
            self._drain()

    def _drain(self) -> None:
        head = _U32.unpack_from(self.cq, self._cq_head)[0]
        tail = _U32.unpack_from(self.cq, self._cq_tail)[0]
        while head != tail:
            tag, res, _flags = _CQE.unpack_from(self.cq, self._cqes + (head & self.cmask) * _CQE.size)
            head = (head + 1) & 0xFFFFFFFF
            waiter = self._pending.pop(tag, None)
            if waiter is not None and waiter[0] is not None:
                trio.lowlevel.reschedule(waiter[0], outcome.Value(res))
        _U32.pack_into(self.cq, self._cq_head, head)

    def close(self) -> None:
        """After the loop ended (nothing waits any more)."""
        if self.closed:
            return
        self.closed = True
        for m in (self.sq, self.cq, self.sqes):
            try:
                m.close()
            except BufferError:
                pass
        os.close(self.efd)
        os.close(self.fd)
