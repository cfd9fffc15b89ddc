"""Driving faultfs from tests: mount it as a daemon's state directory, cut the power, inject
faults, unmount. See faultfs.py for what it models."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FAULTFS = Path(__file__).resolve().parent / "faultfs.py"
MOUNT_TIMEOUT = 15.0


class FaultFS:
    """A mounted faultfs: ``mountpoint`` is where the daemon keeps its state, ``disk`` the
    medium under it (what survives a cut)."""

    def __init__(self, root: Path) -> None:
        self.disk = root / "disk"
        self.mountpoint = root / "state"
        self.control = root / "faultfs.sock"
        self.log = root / "faultfs.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> FaultFS:
        self.disk.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(FAULTFS), str(self.disk), str(self.mountpoint),
                 str(self.control)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not (os.path.ismount(self.mountpoint) and self.control.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                pytest.fail(f"faultfs did not mount:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        return self

    def command(self, **request: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.control))
            s.sendall(json.dumps(request).encode() + b"\n")
            answer = json.loads(s.makefile("rb").readline())
        assert answer.get("ok"), answer
        return answer

    def cut(self, *, tear_seed: int | None = None) -> dict[str, Any]:
        """The power fails: unsynced data is lost (or, with ``tear_seed``, torn)."""
        if tear_seed is None:
            return self.command(cmd="cut")
        return self.command(cmd="tear", seed=tear_seed)

    def fault(self, op: str, path: str, start: int, end: int, err: str = "EIO") -> None:
        self.command(cmd="fault", op=op, path=path, start=start, end=end, errno=err)

    def clear_faults(self) -> None:
        self.command(cmd="clear")

    def unmount(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError, AssertionError, json.JSONDecodeError):
                self.command(cmd="exit")
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[FaultFS]:
    fs = FaultFS(root).mount()
    try:
        yield fs
    finally:
        fs.unmount()
