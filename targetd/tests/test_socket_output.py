"""SocketOutput under uvloop on a real socket pair with small buffers: file ranges and bytes
arrive in order however the socket takes them (partial sendfile, EAGAIN, bytes buffered in
the transport before a range), and a range whose file was closed aborts the connection."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
import uvloop

from scsi.command import FileRange
from targetd.socket_output import SocketOutput


class OpenFile:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()
        self.output: SocketOutput | None = None

    def resume_writing(self) -> None:  # as the daemon's shell: a range may go now
        if self.output is not None:
            self.output.drive()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def run(coro_fn):  # type: ignore[no-untyped-def]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())


async def slow_reader(sock: socket.socket, want: int) -> bytes:
    """Reads ``want`` bytes in small pieces with pauses, so the sender's socket fills."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < want:
        await asyncio.sleep(0.001)
        chunk = await loop.sock_recv(sock, 16384)
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    content = os.urandom(3 << 20)
    path = tmp_path / "lun.img"
    path.write_bytes(content)
    return path, content


def test_ranges_and_bytes_arrive_in_order_through_a_full_socket(
    data_file: tuple[Path, bytes],
) -> None:
    path, content = data_file

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        b.setblocking(False)
        transport, sink = await loop.create_connection(Sink, sock=a)
        transport.set_write_buffer_limits(high=0, low=0)
        out = sink.output = SocketOutput()
        progressed: list[int] = []
        assert out.attach(transport, loop, lambda: progressed.append(out.queued))
        writable = out._writable
        woken: list[None] = []

        def count_wakeups() -> None:
            woken.append(None)
            writable()

        out._writable = count_wakeups  # type: ignore[method-assign]
        f = OpenFile(path)
        big = bytes(range(256)) * 1024  # bytes the transport must buffer before a range
        first: list = [b"H1", big, FileRange(f, 0, 2 << 20), b"T1", FileRange(f, 5, 100_001)]
        out.write(first)
        assert out.queued > 0  # the socket could not take it all at once
        out.write([b"T2", FileRange(f, 7, 3), b"T3"])
        expected = (
            b"H1" + big + content[: 2 << 20] + b"T1" + content[5:100_006] + b"T2"
            + content[7:10] + b"T3"
        )  # fmt: skip
        got = await asyncio.wait_for(slow_reader(b, len(expected)), 20)
        assert got == expected
        assert out.queued == 0
        assert len(woken) > 10  # sendfile met a full socket, and went on when it drained
        assert progressed in ([], [0])  # told only once all had gone (or resume_writing saw it)
        out.close()
        transport.close()
        b.close()
        os.close(f.fd)

    run(main)


def test_a_range_of_a_closed_file_aborts_the_connection(data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        transport, sink = await loop.create_connection(Sink, sock=a)
        out = SocketOutput()
        out.attach(transport, loop, lambda: None)
        f = OpenFile(path)
        os.close(f.fd)
        f.fd = -1  # as SparseFile.close leaves it
        out.write([b"HDR", FileRange(f, 0, 4096), b"STATUS"])
        await asyncio.wait_for(sink.lost, 5)
        assert out.queued == 0
        b.settimeout(5)
        assert b.recv(65536) == b"HDR"
        assert b.recv(65536) == b""  # never the status after the missing bytes
        b.close()

    run(main)


def test_without_a_socket_no_ranges_are_asked_for() -> None:
    class NoSocket(asyncio.Transport):
        def get_extra_info(self, name: str, default: object = None) -> object:
            return None

    async def main() -> None:
        out = SocketOutput()
        assert not out.attach(NoSocket(), asyncio.get_running_loop(), lambda: None)

    run(main)
