"""What a hung daemon is doing, on request: ``kill -USR1 <pid>`` writes every thread's stack
to the log stream (faulthandler: works even while the event loop is blocked, and shows a
worker thread stuck in librbd or librados); ``kill -USR2 <pid>`` logs every asyncio task
with where it waits (a command waiting for a lock, a future librbd never completed).

A failure seen once under load is diagnosed from these, or not at all: the Ceph tier
sends both to a daemon a test found hung before it stops it (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
from pathlib import Path
from typing import Any, TextIO

from targetd import logs

log = logging.getLogger("targetd.stacks")

THREADS = signal.SIGUSR1
TASKS = signal.SIGUSR2
ROOT = f"{Path(__file__).resolve().parents[1]}/"
# A task's stack is its chain of awaiting coroutines: a few frames, not the full depth.
FRAMES = 24


def install(stream: TextIO, loop: asyncio.AbstractEventLoop) -> None:
    """Thread stacks to ``stream`` on SIGUSR1, the loop's tasks logged on SIGUSR2."""
    faulthandler.register(THREADS, file=stream, all_threads=True)
    loop.add_signal_handler(TASKS, log_tasks)


def dump(stream: TextIO) -> None:
    """Both, now: what a daemon that finds itself stalled writes (targetd/gateway.py)."""
    stream.flush()
    faulthandler.dump_traceback(file=stream, all_threads=True)
    log_tasks()


def log_tasks() -> None:
    """One line per distinct stack, with how many tasks wait there (a thousand commands
    queued behind one lock are one line) and the name of one of them."""
    tasks = asyncio.all_tasks()
    stacks: dict[str, list[str]] = {}
    for task in tasks:
        stacks.setdefault(task_stack(task), []).append(task.get_name())
    log.warning("asyncio tasks", extra=logs.fields(count=len(tasks), stacks=len(stacks)))
    for stack, names in sorted(stacks.items(), key=lambda item: -len(item[1])):
        log.warning("tasks", extra=logs.fields(count=len(names), one=names[0], stack=stack))


def task_stack(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits, outermost first, one ``file:line function`` per coroutine of
    its await chain (asyncio's own ``get_stack`` gives only the outermost), then what the
    innermost awaits: another task, by name, or a future's type."""
    parts: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(parts) < FRAMES:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        parts.append(f"{_short(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    waiter = getattr(task, "_fut_waiter", None)
    if isinstance(waiter, asyncio.Task):
        parts.append(f"waiting for task {waiter.get_name()}")
    elif waiter is not None:
        parts.append(f"waiting for a {type(waiter).__name__}")
    return "; ".join(parts)


def _short(filename: str) -> str:
    """A file of the project relative to its root; another as it is."""
    return filename.removeprefix(ROOT)
