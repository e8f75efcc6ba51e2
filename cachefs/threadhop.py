"""How the FUSE shell's trio tasks get blocking work done: a fixed pool of threads, which is
also the bound on how many requests run at once.

trio.to_thread.run_sync costs ~75 us per call on the machines we measured (a fresh context, its
thread cache, an OS thread rename per job); a FUSE request whose real work is a 60 us Redis
round trip paid more for the hop than for the work. This pool hands a call to an idle thread
through one queue and wakes the task with one run_sync_soon: ~54 us for a lone caller, ~24 us per
call under concurrency (75 and 55 with to_thread).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio


def _no_abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
    # the call runs to its end (like to_thread's default): a FUSE reply is never abandoned halfway
    return trio.lowlevel.Abort.FAILED


class ThreadHop:
    def __init__(self, threads: int, name: str = "fuse") -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.size = threads
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.running = 0  # calls made and not yet answered (the event loop's own count)

    def start(self) -> None:
        """Start the threads (else the first call does): a process that forks (--background)
        must not carry them across the fork, so the mount starts them once it is ready."""
        self._start()

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for i in range(self.size):
                t = threading.Thread(target=self._work, name=f"{self.name}_{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, token, task = job
            result = outcome.capture(fn)  # a value or the exception, raised again in the task
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                pass  # the loop is gone (unmounted): nobody waits for the answer

    async def run(self, fn: Callable[[], Any]) -> Any:
        """fn() on a pool thread; its result or its exception, in the calling task."""
        if not self._threads:
            self._start()
        self._jobs.put((fn, trio.lowlevel.current_trio_token(), trio.lowlevel.current_task()))
        self.running += 1
        try:
            return await trio.lowlevel.wait_task_rescheduled(_no_abort)
        finally:
            self.running -= 1

    def close(self) -> None:
        with self._lock:
            for _ in self._threads:
                self._jobs.put(None)
            self._threads = []

