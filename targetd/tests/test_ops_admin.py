"""The admin socket: one JSON object per line, registered methods, mode 0600."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from targetd.admin import Admin, AdminError, request


def test_protocol_over_the_socket(tmp_path: Path) -> None:
    async def main() -> None:
        admin = Admin()

        async def split(params: dict) -> dict:
            return {"split": params["pair"]}

        def refuse(params: dict) -> None:
            raise AdminError("pair 9 does not exist", "no_such_pair")

        admin.register("pair.split", split)
        admin.register("pair.delete", refuse)
        path = tmp_path / ("d" * 120) / "admin.sock"  # longer than sun_path allows
        path.parent.mkdir()
        await admin.start(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, request, path, "pair.split", {"pair": 1}) == {
            "split": 1
        }
        with pytest.raises(AdminError, match="does not exist") as err:
            await loop.run_in_executor(None, request, path, "pair.delete")
        assert err.value.code == "no_such_pair"
        with pytest.raises(AdminError) as err:
            await loop.run_in_executor(None, request, path, "nope")
        assert err.value.code == "unknown_method"
        methods = await loop.run_in_executor(None, request, path, "methods")
        assert methods == ["methods", "pair.delete", "pair.split"]
        reader, writer = await asyncio.open_unix_connection(
            f"/proc/self/fd/{_dirfd(path)}/admin.sock"
        )
        writer.write(b"not json\n")
        assert b'"bad_request"' in await reader.readline()
        writer.close()
        await admin.stop()
        assert not path.exists()

    asyncio.run(main())


def _dirfd(path: Path) -> int:
    import os

    return os.open(path.parent, os.O_PATH | os.O_DIRECTORY)


def test_register_twice_is_an_error() -> None:
    admin = Admin()
    admin.register("x", lambda p: 1)
    with pytest.raises(ValueError, match="already registered"):
        admin.register("x", lambda p: 2)


def test_progress_lines_come_before_the_answer_only_when_asked(tmp_path: Path) -> None:
    """A method registered with progress reports from a worker thread; a request that
    asks gets the reports (throttled, the last always) and then the answer on the same
    connection; a request that does not ask gets the answer line alone."""

    async def main() -> None:
        admin = Admin()

        async def move(params: dict, report) -> dict:  # type: ignore[no-untyped-def]
            def work() -> int:
                for done in range(0, 1001, 1):  # far more reports than lines sent
                    report(done, 1000)
                return 1000

            return {"moved": await asyncio.get_running_loop().run_in_executor(None, work)}

        admin.register("move", move, progress=True)
        path = tmp_path / "admin.sock"
        await admin.start(path)
        loop = asyncio.get_running_loop()
        seen: list[tuple[int, int]] = []

        def ask() -> object:
            return request(path, "move", progress=lambda d, t: seen.append((d, t)))

        assert await loop.run_in_executor(None, ask) == {"moved": 1000}
        assert seen[0] == (0, 1000) and seen[-1] == (1000, 1000)
        assert len(seen) < 20, seen  # throttled, not one line per report
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"id": 7, "method": "move"}\n{"id": 8, "method": "methods"}\n')
        assert await reader.readline() == b'{"id": 7, "result": {"moved": 1000}}\n'
        assert (await reader.readline()).startswith(b'{"id": 8, "result": ')
        writer.close()
        await admin.stop()

    asyncio.run(main())
