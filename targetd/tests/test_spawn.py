"""Child processes started off the event loop (targetd/spawn.py), under uvloop as the daemon
runs: the loop keeps turning while a child is being started, the child's output, exit
status and signals reach the caller, and its stdin stays open while the parent holds it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import uvloop

from targetd import spawn as spawn_module
from targetd.spawn import spawn

T = TypeVar("T")
WITHIN = 30.0  # seconds: far more than starting a Python child takes on a loaded machine


def under_uvloop(main: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_loop_turns_while_a_child_is_being_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """The start (fork and exec) is made to last until the loop has run a callback: were it
    made on the loop's thread, that callback could not run and the start would time out."""
    turned = threading.Event()
    real = spawn_module._popen

    def slow_start(*args: Any) -> subprocess.Popen[bytes]:
        assert turned.wait(WITHIN), "the event loop stood still while the child started"
        return real(*args)

    monkeypatch.setattr(spawn_module, "_popen", slow_start)

    async def main() -> int:
        asyncio.get_running_loop().call_later(0.05, turned.set)
        child = await spawn(python("pass"), env=os.environ)
        return await asyncio.wait_for(child.wait(), WITHIN)

    assert under_uvloop(main) == 0


def test_output_exit_status_and_the_held_stdin() -> None:
    """The child reads its stdin to EOF: it ends only if the pipe closed, which it must not
    while the parent holds the Child; it prints a line first and exits with status 3."""
    code = "import sys; print('ready', flush=True); sys.stdin.read(); sys.exit(3)"

    async def main() -> tuple[bytes, int | None, bool, int]:
        child = await spawn(python(code), env=os.environ)
        line = await asyncio.wait_for(child.stdout.readline(), WITHIN)
        running = child.returncode
        try:
            await asyncio.wait_for(child.wait(), 0.5)
            ended_early = True
        except TimeoutError:
            ended_early = False
        child._popen.stdin.close()  # type: ignore[union-attr]  # what the parent's exit does
        return line, running, ended_early, await asyncio.wait_for(child.wait(), WITHIN)

    line, running, ended_early, status = under_uvloop(main)
    assert line == b"ready\n"
    assert running is None
    assert not ended_early, "the child saw its stdin close while the parent held it"
    assert status == 3


def test_signals_and_kill_give_the_negated_signal_number() -> None:
    code = "import sys, time; print('up', flush=True); time.sleep(600)"

    async def main() -> tuple[int, int, int | None]:
        termed = await spawn(python(code), env=os.environ)
        killed = await spawn(python(code), env=os.environ)
        for child in (termed, killed):
            assert await asyncio.wait_for(child.stdout.readline(), WITHIN) == b"up\n"
        termed.send_signal(signal.SIGTERM)
        killed.kill()
        term_status = await asyncio.wait_for(termed.wait(), WITHIN)
        kill_status = await asyncio.wait_for(killed.wait(), WITHIN)
        killed.kill()  # after its end: nothing is signalled (its pid may be another's)
        return term_status, kill_status, killed.returncode

    assert under_uvloop(main) == (-signal.SIGTERM, -signal.SIGKILL, -signal.SIGKILL)


def test_a_child_is_started_in_a_session_of_its_own() -> None:
    """start_new_session: a terminal's Ctrl-C (its foreground process group) misses it."""
    code = "import os; print(os.getsid(0), flush=True)"

    async def main() -> bool:
        child = await spawn(python(code), env=os.environ, start_new_session=True)
        sid = int(await asyncio.wait_for(child.stdout.readline(), WITHIN))
        assert await asyncio.wait_for(child.wait(), WITHIN) == 0
        return sid == child.pid

    assert under_uvloop(main)
