"""``kill -USR1`` / ``-USR2`` of a daemon (targetd/stack_dump.py): the threads' stacks and
the asyncio tasks grouped by where they wait, what a hung daemon's log must show."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import time
from pathlib import Path

import pytest

from targetd import logs, stack_dump


async def waits_for_a_lock_forever(lock: asyncio.Event) -> None:
    await lock.wait()


def test_tasks_are_logged_grouped_by_where_they_wait(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        lock = asyncio.Event()
        waiting = [asyncio.create_task(waits_for_a_lock_forever(lock)) for _ in range(5)]
        await asyncio.sleep(0)
        stack_dump.log_tasks()
        lock.set()
        await asyncio.gather(*waiting)

    with caplog.at_level("WARNING", logger="targetd.stacks"):
        asyncio.run(run())
    groups = [r.__dict__[logs.FIELDS] for r in caplog.records if r.getMessage() == "tasks"]
    waiters = [g for g in groups if "waits_for_a_lock_forever" in g["stack"]]
    assert len(waiters) == 1
    assert waiters[0]["count"] == 5
    assert "test_stack_dump.py" in waiters[0]["stack"]
    summary = [r for r in caplog.records if r.getMessage() == "asyncio tasks"]
    assert summary[0].__dict__[logs.FIELDS]["count"] == 6  # and run() itself


def test_signals_dump_threads_and_tasks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "stacks.txt"

    async def run() -> None:
        with out.open("w") as stream:
            stack_dump.install(stream, asyncio.get_running_loop())
            try:
                os.kill(os.getpid(), stack_dump.THREADS)
                os.kill(os.getpid(), stack_dump.TASKS)
                deadline = time.monotonic() + 5
                while "asyncio tasks" not in caplog.text and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            finally:
                faulthandler.unregister(stack_dump.THREADS)
                asyncio.get_running_loop().remove_signal_handler(stack_dump.TASKS)

    with caplog.at_level("WARNING", logger="targetd.stacks"):
        asyncio.run(run())
    assert "test_signals_dump_threads_and_tasks" in out.read_text()  # this thread's stack
    assert "asyncio tasks" in caplog.text
