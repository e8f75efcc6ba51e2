"""A one-line progress bar on stderr for long commands (silent when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.time()
        self._last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.time()
        if self.tty and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            rate = self.done / max(now - self.start, 1e-6)
            self.stream.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} {human(self.done)}/{human(self.total)} "
                              f"{human(rate)}/s ")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
