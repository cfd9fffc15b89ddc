"""A noisy neighbour: one process spinning on one CPU core for a bounded time.

A storage target always shares its host. ``Neighbour`` starts a CPU hog pinned to one core
(``os.sched_setaffinity``) for as long as both targets are measured, and stops it by PID. The
hog also stops itself after ``limit`` seconds, so a killed benchmark cannot leave it behind for
long.

    python3 bench/noise.py --core 0 --seconds 60   # the hog alone
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

DEFAULT_LIMIT = 3 * 3600.0


def spin(core: int, seconds: float) -> None:
    """Busy-loop on ``core`` until ``seconds`` have passed (checking the clock rarely)."""
    os.sched_setaffinity(0, {core})
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(100_000):
            pass


class Neighbour:
    """A context manager running the hog on ``core`` while the block runs."""

    def __init__(self, core: int = 0, limit: float = DEFAULT_LIMIT) -> None:
        if core not in os.sched_getaffinity(0):
            raise ValueError(f"core {core} is not one this process may run on")
        self.core = core
        self.limit = limit
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def __enter__(self) -> Neighbour:
        argv = [sys.executable, str(Path(__file__).resolve())]
        argv += ["--core", str(self.core), "--seconds", str(self.limit)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    spin(args.core, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
