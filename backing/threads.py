"""Waiting for blocking calls that run on threads, and a record's own writer thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("targetd.threads")


async def outlast(future: asyncio.Future[T]) -> T:
    """The result of a call running on a thread, waited for even if the waiter is cancelled.

    A thread cannot be stopped half way through a pwrite or an fdatasync. A cancelled
    caller (an aborted command, a dropped connection) must not be reported gone while its
    call can still land after a newer one, so cancellation waits for the call to end and
    only then propagates.
    """
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        # Its failure is nobody's now: logged here once, or asyncio would log it as
        # "Future exception was never retrieved" whenever the future is collected.
        if not future.cancelled() and (error := future.exception()) is not None:
            log.warning("call failed after its caller was cancelled: %s", error)
        raise asyncio.CancelledError
    return future.result()


class Lane:
    """One thread for a record's blocking calls (its writes and syncs, in the order
    asked), made on first use: never the event loop, never queued behind data I/O on the
    loop's shared executor. Pair files and group split records (backing/pairs), the kept
    copy results and the shared copy records (xcopy) each have their own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``call(*args)`` now (after every call queued before it); the future
        says when it has run."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        return asyncio.get_running_loop().run_in_executor(self._pool, call, *args)

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on the lane; cancelled, it still waits for the call to end."""
        return await outlast(self.submit(call, *args))

    def shutdown(self, *, wait: bool = False) -> None:
        """Stop the thread (``wait``: once every queued call has run)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait)
            self._pool = None
