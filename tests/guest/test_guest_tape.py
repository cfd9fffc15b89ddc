"""Linux's st driver and mt-st against targetd's tape LUN, in a QEMU guest."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import DaemonFactory, free_port
from guest_vm import GUEST_DIR, HOST_FROM_GUEST, run_guest, start_for_guest

TAPE_TARGETS = """\
[[target]]
name = "iqn.2026-11.org.targetd:default"
[[target.lun]]
lun = 0
size = "64MiB"
[[target.lun]]
lun = 2
kind = "tape"
capacity = "256MiB"
"""


def test_guest_tape_with_st(targetd_factory: DaemonFactory) -> None:
    daemon = start_for_guest(targetd_factory, TAPE_TARGETS)
    out = run_guest(GUEST_DIR / "tape.sh", daemon, env={"TAPE_LUN": "2"}, timeout=150)
    assert "tape: all steps passed" in out


TGT_IQN = "iqn.2026-11.org.targetd.anchor:tgt-tape"


class TgtTape:
    """tgtd (``-f``, by PID) serving one tape LUN (``--bstype ssc``) on loopback; it has what
    ``run_guest`` uses of a Daemon: port, iqn, stderr, restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.iqn = TGT_IQN
        # tgtd's management socket is /var/run/tgtd/socket.N: an N no other tgtd uses.
        self.control = next(
            n
            for n in range(2000 + self.port % 5000, 10000)
            if not Path(f"/var/run/tgtd/socket.{n}").exists()
        )
        self.log = workdir / "tgtd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def adm(self, *args: str) -> None:
        subprocess.run(
            ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self) -> TgtTape:
        image = self.workdir / "tgt-tape.img"
        subprocess.run(
            ["tgtimg", "--op", "new", "--device-type", "tape", "--barcode", "TGT001",
             "--size", "64", "--type", "data", f"--file={image}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.start_daemon()
        self.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", self.iqn)
        self.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                 "--device-type", "tape", "--bstype", "ssc", "-b", str(image))  # fmt: skip
        self.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        return self

    def start_daemon(self) -> None:
        """tgtd, listening, with no target yet."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal=127.0.0.1:{self.port}"],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail(f"tgtd did not listen:\n{self.stderr}")
                time.sleep(0.1)

    def restart(self) -> None:
        raise RuntimeError("the tgt anchor does not restart")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # tgtd ignores SIGTERM and refuses to exit while it has targets.
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.adm("--op", "delete", "--mode", "target", "--tid", "1", "--force")
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                ["tgtadm", "-C", str(self.control), "--op", "delete", "--mode", "system"],
                capture_output=True,
                timeout=30,
            )
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


TgtTapeT = TypeVar("TgtTapeT", bound=TgtTape)


@contextlib.contextmanager
def running(tgt: TgtTapeT) -> Iterator[TgtTapeT]:
    """A tgt anchor started for a test and stopped after it, even when it failed to start
    whole (a test fails where tgt is not installed)."""
    if shutil.which("tgtd") is None or shutil.which("tgtimg") is None:
        pytest.fail("tgt is missing: run scripts/install-test-deps.sh")
    try:
        tgt.start()
        yield tgt
    finally:
        tgt.stop()


def test_guest_tape_tgt_anchor(tmp_path: Path) -> None:
    """The anchor: tgt's tape back end passes the same basic round trip in the same guest."""
    with running(TgtTape(tmp_path)) as tgt:
        out = run_guest(
            GUEST_DIR / "tape.sh",
            tgt,  # type: ignore[arg-type]
            env={
                "TAPE_LUN": "1",
                "TAPE_PRODUCT": "VIRTUAL-TAPE",
                "TAPE_SCOPE": "basic",
                "TAPE_LOGIN": "direct",
                "TARGET_PORTAL": f"{HOST_FROM_GUEST}:{tgt.port}",
            },
            timeout=150,
        )
    assert "tape: all steps passed" in out
