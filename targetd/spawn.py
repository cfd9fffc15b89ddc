"""Starting a child process without stalling the event loop.

uvloop's ``create_subprocess_exec`` forks on the loop's thread and waits there until the
child has exec'd: the fork copies the parent's page tables (a portal holding 500 MiB
stalled its loop 40-100 ms a spawn, logins and SendTargets included), and on a loaded
machine the child may wait a long time to be scheduled before it execs. Here
``subprocess.Popen`` (vfork and exec) runs on a worker thread, and the loop learns of the
child's exit from a pidfd (Linux 5.3): the loop is never blocked by a spawn.

:class:`Child` offers the part of :class:`asyncio.subprocess.Process` the worker
supervisor uses: ``pid``, ``returncode``, ``stdout`` (a :class:`asyncio.StreamReader`),
``wait``, ``send_signal`` and ``kill``. The child's stdin is a pipe the parent holds open
for as long as it lives: the child sees EOF when its parent is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from functools import partial


class Child:
    """A started child process, watched by the running loop (see :func:`spawn`)."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout: asyncio.StreamReader) -> None:
        self._popen = popen
        self.stdout = stdout
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        loop.add_reader(self._pidfd, self._reap)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs (or before the loop has seen it end); the exit status, or the
        negated signal number that killed it."""
        return self._exited.result() if self._exited.done() else None

    def _reap(self) -> None:
        code = self._popen.poll()  # readable pidfd: it has exited, so no wait here
        if code is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, signum: int) -> None:
        """Signal it unless the loop has seen it end (its pid may be another's by then)."""
        if not self._exited.done():
            self._popen.send_signal(signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    pass_fds: Sequence[int] = (),
    start_new_session: bool = True,
) -> Child:
    """Start ``argv`` with a stdin pipe (held open) and a stdout pipe, from a worker thread.

    A caller cancelled while the thread starts the child does not leave it running: it is
    killed once started (and reaped by :mod:`subprocess`'s own clean-up)."""
    loop = asyncio.get_running_loop()
    starting = loop.run_in_executor(
        None, partial(_popen, list(argv), dict(env), tuple(pass_fds), start_new_session)
    )
    try:
        popen = await asyncio.shield(starting)
    except asyncio.CancelledError:
        starting.add_done_callback(_kill_orphan)
        raise
    assert popen.stdout is not None
    try:
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), popen.stdout)
        return Child(popen, reader)
    except BaseException:
        popen.kill()
        raise


def _popen(
    argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...], start_new_session: bool
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        pass_fds=pass_fds,
        start_new_session=start_new_session,
    )


def _kill_orphan(started: asyncio.Future[subprocess.Popen[bytes]]) -> None:
    if started.cancelled() or started.exception() is not None:
        return
    popen = started.result()
    with contextlib.suppress(ProcessLookupError):
        popen.kill()
