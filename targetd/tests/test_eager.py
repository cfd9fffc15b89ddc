"""eager.start: synchronous coroutines finish at once; waiting ones become Tasks."""

from __future__ import annotations

import asyncio

import pytest

from targetd import eager


async def no_wait() -> int:
    return 7


async def waits(fut: asyncio.Future[int], log: list[str]) -> int:
    log.append("before")
    try:
        value = await fut
    except asyncio.CancelledError:
        log.append("cancelled")
        raise
    log.append("after")
    return value + 1


def test_finishes_without_a_task() -> None:
    async def main() -> None:
        result = eager.start(no_wait())
        assert isinstance(result, eager.Done) and result.value == 7

    asyncio.run(main())


def test_waiting_coroutine_resumes_in_a_task() -> None:
    async def main() -> None:
        log: list[str] = []
        fut = asyncio.get_running_loop().create_future()
        task = eager.start(waits(fut, log))
        assert isinstance(task, asyncio.Task)
        assert log == ["before"]  # stepped eagerly up to the wait
        fut.set_result(41)
        assert await task == 42
        assert log == ["before", "after"]

    asyncio.run(main())


def test_cancellation_reaches_the_coroutine() -> None:
    async def main() -> None:
        log: list[str] = []
        fut = asyncio.get_running_loop().create_future()
        task = eager.start(waits(fut, log))
        assert isinstance(task, asyncio.Task)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == ["before", "cancelled"]

    asyncio.run(main())


def test_errors_before_first_wait_propagate() -> None:
    async def boom() -> None:
        raise ValueError("x")

    with pytest.raises(ValueError):
        eager.start(boom())


def test_the_task_runs_on_the_loop_it_is_given() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[str] = []
        fut = loop.create_future()
        task = eager.start(waits(fut, log), loop)
        assert isinstance(task, asyncio.Task) and task.get_loop() is loop
        fut.set_result(1)
        assert await task == 2

    asyncio.run(main())
