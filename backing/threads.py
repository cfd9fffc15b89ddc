"""Waiting for blocking calls that run on threads."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


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
        raise asyncio.CancelledError
    return future.result()
