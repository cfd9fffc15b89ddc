"""The admin endpoint: a unix socket in the state directory, mode 0600, for ``targetctl``.

Protocol: one JSON object per line each way. A request is
``{"id": 1, "method": "status", "params": {}}``; the answer carries the same ``id`` and
either ``"result"`` or ``"error": {"code": ..., "message": ...}``. A connection may send
several requests; answers come in order.

Long work reports progress: a request with ``"progress": true`` to a method registered
with ``progress=True`` gets, before its answer, lines ``{"id": 1, "progress": {"done": N,
"total": M}}`` (bytes; at most a few a second). Without the flag the method is served as
any other, so older clients see one line per request as before.

Subsystems add methods with one call, ``admin.register("pair.split", handler)``: the
handler takes the params dict and returns something JSON can encode (or an awaitable of
it); raising :class:`AdminError` answers with that error. A unix socket is never
reachable from the network, and file mode 0600 limits it to the daemon's user.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from targetd.logs import fields

log = logging.getLogger("targetd.admin")

SOCKET_NAME = "admin.sock"
MAX_REQUEST = 1 << 20
Handler = Callable[..., Any | Awaitable[Any]]
# done, total: callable from any thread (long work runs off the event loop).
Report = Callable[[int, int], None]
Fallback = Callable[[str, dict[str, Any], Report | None], Awaitable[Any]]
PROGRESS_EVERY = 0.25  # seconds between two progress lines of one request


def _no_report(done: int, total: int) -> None:
    pass


class AdminError(Exception):
    """A request that cannot be served; ``code`` is a short machine-readable word."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


class Admin:
    """The method table and the socket that serves it."""

    def __init__(self) -> None:
        self._methods: dict[str, Handler] = {}
        self._reporting: set[str] = set()  # methods that take (params, report)
        self._server: asyncio.base_events.Server | None = None
        self.path: Path | None = None
        # Methods not registered here go to this one, if set: a portal hands them to the
        # worker process that serves the target they name (targetd.workers). Its third
        # argument is the request's progress report, or None if it asked for none.
        self.fallback: Fallback | None = None
        self.register("methods", lambda params: sorted(self._methods))

    def register(self, method: str, handler: Handler, *, progress: bool = False) -> None:
        """``progress``: the handler takes ``(params, report)`` and calls ``report(done,
        total)`` as its work goes on (from any thread)."""
        if method in self._methods:
            raise ValueError(f"admin method {method!r} is already registered")
        self._methods[method] = handler
        if progress:
            self._reporting.add(method)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, report: Report = _no_report
    ) -> Any:
        handler = self._methods.get(method)
        if handler is None and self.fallback is not None:
            asked = None if report is _no_report else report
            return await self.fallback(method, params or {}, asked)
        if handler is None:
            raise AdminError(f"no such method {method!r}", "unknown_method")
        if method in self._reporting:
            result = handler(params or {}, report)
        else:
            result = handler(params or {})
        if inspect.isawaitable(result):
            result = await result
        return result

    async def answer(
        self, line: bytes, progress: Callable[[Any, int, int], None] | None = None
    ) -> dict[str, Any]:
        """The response object for one request line; ``progress(id, done, total)`` is
        given the method's reports when the request asks for them."""
        try:
            request = json.loads(line)
        except ValueError as err:
            return {"id": None, "error": {"code": "bad_request", "message": f"not JSON: {err}"}}
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return {"id": None, "error": {"code": "bad_request", "message": "need a method"}}
        rid = request.get("id")
        params = request.get("params") or {}
        if not isinstance(params, dict):
            return {"id": rid, "error": {"code": "bad_request", "message": "params: an object"}}
        report: Report = _no_report
        if progress is not None and request.get("progress") is True:
            report = _throttled(lambda done, total: progress(rid, done, total))
        try:
            return {"id": rid, "result": await self.call(request["method"], params, report)}
        except AdminError as err:
            return {"id": rid, "error": {"code": err.code, "message": str(err)}}
        except Exception as err:
            log.exception("admin method failed", extra=fields(method=request["method"]))
            return {"id": rid, "error": {"code": "internal", "message": repr(err)}}

    # -- the socket ------------------------------------------------------------------------
    async def start(self, path: Path) -> None:
        path = Path(path)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(f"{path} exists and is not a socket")
            path.unlink()  # left by a daemon that was killed
        # The umask makes the socket 0600 from the moment it exists: no window for others.
        old = os.umask(0o177)
        try:
            with _bindable(path) as where:
                self._server = await asyncio.start_unix_server(
                    self._client, path=where, limit=MAX_REQUEST
                )
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.path = path

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def send(rid: Any, done: int, total: int) -> None:  # any thread
            line = json.dumps({"id": rid, "progress": {"done": done, "total": total}})
            data = line.encode() + b"\n"
            if threading.get_ident() == loop_thread:  # written before the answer, in order
                _write_open(writer, data)
            else:  # queued before the worker's result, so before the answer too
                loop.call_soon_threadsafe(_write_open, writer, data)

        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                response = await self.answer(line, send)
                writer.write(json.dumps(response, default=str).encode() + b"\n")
                await writer.drain()
        except (ValueError, ConnectionError) as err:  # oversized line, client gone
            log.info("admin client dropped", extra=fields(reason=str(err)))
        finally:
            writer.close()


def _write_open(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)  # a few short lines: the answer's drain() flushes them


def _throttled(report: Report) -> Report:
    """``report`` at most every PROGRESS_EVERY seconds, and always at the end (done ==
    total), so a copy of many small objects does not flood the socket."""
    lock = threading.Lock()
    last = [float("-inf")]

    def throttled(done: int, total: int) -> None:
        now = time.monotonic()
        with lock:
            if done < total and now - last[0] < PROGRESS_EVERY:
                return
            last[0] = now
        report(done, total)

    return throttled


@contextmanager
def _bindable(path: Path) -> Iterator[str]:
    """``path`` as a unix socket address. sun_path holds 107 bytes; a longer path (a deep
    state directory) is reached through an open descriptor of its directory instead."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def request(
    path: Path,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    timeout: float = 30.0,
    progress: Report | None = None,
) -> Any:
    """Client side (blocking): send one request to the daemon at ``path``, return the result.
    ``progress(done, total)`` asks for the method's progress lines and is given each one
    (``timeout`` then bounds the wait for the next line, not for the whole work).

    Raises :class:`AdminError` with the daemon's error, or OSError when nobody listens.
    """
    ask: dict[str, Any] = {"id": 1, "method": method, "params": params or {}}
    if progress is not None:
        ask["progress"] = True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        with _bindable(Path(path)) as where:
            sock.connect(where)
        sock.sendall(json.dumps(ask).encode() + b"\n")
        with sock.makefile("rb") as stream:
            while True:
                line = stream.readline(MAX_REQUEST * 64)
                if not line:
                    raise AdminError(
                        "the daemon closed the connection without answering", "no_answer"
                    )
                response = json.loads(line)
                if "progress" not in response:
                    break
                if progress is not None:
                    progress(int(response["progress"]["done"]), int(response["progress"]["total"]))
    if "error" in response:
        error = response["error"]
        raise AdminError(error.get("message", "failed"), error.get("code", "failed"))
    return response.get("result")
