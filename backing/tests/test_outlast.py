"""``outlast`` (backing/threads.py): a call on a thread whose waiter was cancelled and which
then failed has its failure logged once, by outlast, never left to asyncio's "Future
exception was never retrieved" (seen in a gateway stop with the Ceph cluster gone: the
watch renewal's "creating the gateway object: Connection timed out")."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest

from backing.threads import outlast


def test_a_failure_after_the_waiter_was_cancelled_is_logged_once_not_left_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unhandled: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
        go = threading.Event()

        def call() -> None:
            go.wait(5)
            raise OSError(110, "creating the gateway object: Connection timed out")

        waiter = asyncio.ensure_future(outlast(loop.run_in_executor(None, call)))
        await asyncio.sleep(0.01)
        waiter.cancel()
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        del waiter
        gc.collect()  # the unretrieved future would report itself when collected
        await asyncio.sleep(0)

    with caplog.at_level("WARNING", logger="targetd.threads"):
        asyncio.run(main())
    assert unhandled == []
    assert [r.getMessage() for r in caplog.records] == [
        "call failed after its caller was cancelled: "
        "[Errno 110] creating the gateway object: Connection timed out"
    ]


def test_a_failure_seen_by_its_waiter_is_not_logged_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def call() -> None:
            raise OSError(110, "timed out")

        with pytest.raises(OSError):
            await outlast(loop.run_in_executor(None, call))

    with caplog.at_level("WARNING", logger="targetd.threads"):
        asyncio.run(main())
    assert caplog.records == []
