"""Progress of a copy: a live bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

MiB = 1 << 20


class Progress:
    def __init__(
        self, total: int, what: str, out: TextIO | None = None, *, every: float = 5.0
    ) -> None:
        self.total = max(total, 1)
        self.what = what
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.every = every
        self.started = time.monotonic()
        self._last_line = -every
        self.done = 0

    def _line(self, done: int) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        pct = 100 * done / self.total
        # Before 1% is done the rate is start-up noise (the first report came with a few
        # KiB after a few ms: "ETA 22268s"), and with nothing done there is no rate at all.
        known = 100 * done >= self.total and rate > 0
        eta = f"{(self.total - done) / rate:.0f}s" if known else "-"
        return (
            f"{self.what}: {pct:5.1f}% {done / MiB:.1f}/{self.total / MiB:.1f} MiB "
            f"{rate / MiB:.1f} MiB/s ETA {eta}"
        )

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic() - self.started
        if self.tty:
            width = 30
            filled = int(width * done / self.total)
            bar = "#" * filled + "." * (width - filled)
            self.out.write(f"\r[{bar}] {self._line(done)}\x1b[K")
            self.out.flush()
        elif now - self._last_line >= self.every:
            self._last_line = now
            self.out.write(self._line(done) + "\n")
            self.out.flush()

    def finish(self, ok: bool = True) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            self.out.write("\n")
        word = "done" if ok else "stopped"
        self.out.write(
            f"{self.what}: {word}, {self.done / MiB:.1f} MiB in {elapsed:.1f}s"
            f" ({self.done / MiB / max(elapsed, 1e-6):.1f} MiB/s)\n"
        )
        self.out.flush()
