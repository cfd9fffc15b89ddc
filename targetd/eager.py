"""Run a coroutine eagerly: to completion at once if it never has to wait.

Most SCSI commands finish without waiting (a read from the page cache, a small write),
and wrapping each in an asyncio Task would cost more than the command. ``start`` steps
the coroutine right away; only one that actually waits on a future becomes a Task,
resumed from where it stopped. (Python 3.12's eager task factory does the same; this
project supports 3.11.)
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class Done:
    """The result of a coroutine that finished during :func:`start`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def start(
    coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop | None = None
) -> Done | asyncio.Task[T]:
    """Step ``coro``; return its result wrapped in :class:`Done`, or the Task that
    carries on with it, on ``loop`` (default: the running one; passing it saves
    CPython 3.11's getpid() system call per lookup). Exceptions raised before the first
    wait propagate here."""
    try:
        pending = coro.send(None)
    except StopIteration as stop:
        return Done(stop.value)
    if loop is None:
        loop = asyncio.get_running_loop()
    return loop.create_task(_resume(coro, pending))


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], pending: Any) -> Generator[Any, Any, T]:
    """Hand ``pending`` (what ``coro`` waits on) to the Task, then relay as ``yield from``."""
    while True:
        try:
            value = yield pending
        except BaseException as exc:  # cancellation and errors go into the coroutine
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            pending = coro.send(value)
        except StopIteration as stop:
            return stop.value
