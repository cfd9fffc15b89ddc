"""The blocking librbd calls running on worker threads against one image handle.

A call on a worker thread cannot be stopped, and one that ran on after its handle was
closed would hand librbd freed memory (a crash of the whole daemon). :class:`ThreadCalls`
counts the calls as they run, on their own threads, so a close, from any thread, can wait
for them, and refuses every call that starts once the handle it was bound to has been
retired (closed, or replaced by a reopen).
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
A = TypeVar("A")


class ThreadCalls:
    """Calls bound to one handle at a time (``handle``: which one, counted from 0)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.handle = 0
        self._idle = threading.Condition()
        self._running: Counter[str] = Counter()
        # The close to run once the last call ends (a close that stopped waiting for them).
        self._then: Callable[[], None] | None = None

    def bind(self, fn: Callable[[], T], what: str) -> Callable[[], T]:
        """``fn`` (a librbd call named ``what``) bound to the current handle: run on a
        worker thread, it is counted while it runs, and raises ESHUTDOWN without running
        if the handle was retired before it started."""
        handle = self.handle

        def run() -> T:
            self._enter(handle, what)
            try:
                return fn()
            finally:
                self._leave(what)

        return run

    def bind_undo(self, fn: Callable[[A], object], what: str) -> Callable[[A], object]:
        """:meth:`bind` for a call that takes the result of an earlier one."""
        handle = self.handle

        def run(arg: A) -> object:
            self._enter(handle, what)
            try:
                return fn(arg)
            finally:
                self._leave(what)

        return run

    @contextlib.contextmanager
    def counting(self, handle: int, what: str) -> Iterator[None]:
        """Count the call ``what``, made on this thread, while it runs: ESHUTDOWN without
        running if ``handle`` is retired already."""
        self._enter(handle, what)
        try:
            yield
        finally:
            self._leave(what)

    def _enter(self, handle: int, what: str) -> None:
        with self._idle:
            if handle != self.handle:
                raise OSError(errno.ESHUTDOWN, f"{self.path}: closed before {what} ran")
            self._running[what] += 1

    def _leave(self, what: str) -> None:
        then = None
        with self._idle:
            self._running[what] -= 1
            if not self._running[what]:
                del self._running[what]
            if not self._running and self._then is not None:
                then, self._then = self._then, None
                self.handle += 1
            self._idle.notify_all()
        if then is not None:
            then()

    @property
    def running(self) -> int:
        return self._running.total()

    def describe(self) -> str:
        """The calls running, by name: ``"rbd_snap_remove, 2 lock_owners"``."""
        with self._idle:
            items = sorted(self._running.items())
        return ", ".join(name if n == 1 else f"{n} {name}" for name, n in items)

    def retire(self, wait: float) -> bool:
        """Wait up to ``wait`` seconds for every call to end; then retire the handle (a
        call bound to it that has not started yet never will) and return True. False:
        calls still run, and the handle stays as it was."""
        deadline = time.monotonic() + wait
        with self._idle:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            self.handle += 1
            return True

    def retire_when_idle(self, wait: float, then: Callable[[], None]) -> bool:
        """Wait up to ``wait`` seconds for every call to end, then retire the handle and
        run ``then`` (the close) on this thread (True). Calls still running then (False):
        ``then`` runs on the thread of the last one, as it ends."""
        if self.retire(wait):
            then()
            return True
        with self._idle:
            if self._running:
                self._then = then
                return False
            self.handle += 1  # the last one ended just now
        then()
        return True
